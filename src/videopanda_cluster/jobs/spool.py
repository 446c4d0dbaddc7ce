"""A job's inputs spooled to a temporary SQLite file, so planning holds no per-video state in
memory: readers stream manifests and listings into it (duplicates and grouping are checked by its
indexes), and the planner reads the videos back in input order with their content digests.

The file lives in ``$TMPDIR`` (about 200 bytes a video, plus the questions) and is deleted when
the spool is closed. SQLite keeps at most :data:`CACHE_KIB` of pages in memory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

CACHE_KIB = 16_384  # SQLite page cache of one spool
_MOD = 1 << 256

_SCHEMA = """
CREATE TABLE video (seq INTEGER PRIMARY KEY, video_id TEXT NOT NULL UNIQUE, uri TEXT NOT NULL,
                    loc TEXT NOT NULL, digest TEXT);
CREATE TABLE question (video_seq INTEGER NOT NULL, n INTEGER NOT NULL, question_id TEXT NOT NULL,
                       text TEXT NOT NULL, PRIMARY KEY (video_seq, n)) WITHOUT ROWID;
CREATE UNIQUE INDEX question_id ON question (video_seq, question_id);
CREATE TABLE file (name TEXT PRIMARY KEY, uri TEXT NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Question:
    question_id: str
    text: str


@dataclass
class VideoItem:
    video_id: str
    uri: str
    questions: list[Question] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedVideo:
    """One video of a job's plan: what its rows are made from, and the digest of that."""

    video_id: str
    uri: str
    questions: tuple[Question, ...] = ()
    digest: str = ""


def video_digest(uri: str, questions: Iterable[tuple[str, str]]) -> str:
    """16 hex digits identifying what a video's rows are made from: its uri and its questions
    (``(question_id, text)`` pairs)."""
    canonical = json.dumps([uri, [list(q) for q in questions]], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class InputsHash:
    """The identity of a set of ``(video_id, digest)`` pairs, independent of their order: the
    sum of their sha256 values mod 2**256 (streamed, constant memory)."""

    def __init__(self) -> None:
        self._sum = 0

    def add(self, video_id: str, digest: str) -> None:
        item = hashlib.sha256(f"{video_id}\0{digest}".encode("utf-8", "surrogatepass")).digest()
        self._sum = (self._sum + int.from_bytes(item, "big")) % _MOD

    def hexdigest(self) -> str:
        return f"{self._sum:064x}"


class InputSpool:
    """The videos of one job's inputs, in input order, in a temporary SQLite file."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        try:
            self.db.executescript(
                f"PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=FILE;"
                f"PRAGMA cache_size=-{CACHE_KIB}; BEGIN; {_SCHEMA}"
            )
        except sqlite3.Error as exc:
            raise _disk_error(exc) from None
        self._defaults: list[str] = []
        self.asked = 0  # videos with at least one question (after defaults)
        self.inputs_hash = ""
        self._count = 0

    @classmethod
    def of(cls, items: Iterable[VideoItem], default_questions: Iterable[str] = ()) -> InputSpool:
        """A finished spool of ``items`` (unique video ids), e.g. to plan from Python."""
        spool = cls()
        for i, item in enumerate(items):
            seq = spool.add_video(item.video_id, item.uri, str(i))
            if seq is None:
                spool.close()
                raise ValueError(f"video ids must be unique: {item.video_id!r} is repeated")
            for n, question in enumerate(item.questions):
                spool.add_question(seq, n, question)
        spool.finish(list(default_questions))
        return spool

    def __enter__(self) -> InputSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def __len__(self) -> int:
        return self._count

    # --- filling -----------------------------------------------------------------------------

    def add_video(self, video_id: str, uri: str, loc: str) -> int | None:
        """Append a video; its sequence number, or None if ``video_id`` is already in."""
        cursor = self._run(
            "INSERT OR IGNORE INTO video (video_id, uri, loc) VALUES (?, ?, ?)",
            (video_id, uri, loc),
        )
        if cursor.rowcount == 0:
            return None
        self._count += 1
        return int(cursor.lastrowid or 0)

    def add_videos(
        self, batch: list[tuple[str, str, str, list[Question]]]
    ) -> tuple[str, str, str] | None:
        """Append ``(video_id, uri, loc, questions)`` rows; the first repeated video id as
        ``(video_id, its loc here, loc of its first listing)``, None if there is none."""
        start = self._count + 1
        rows = [(start + i, vid, uri, loc) for i, (vid, uri, loc, _) in enumerate(batch)]
        try:
            added = self.db.executemany(
                "INSERT OR IGNORE INTO video (seq, video_id, uri, loc) VALUES (?, ?, ?, ?)", rows
            ).rowcount
            if added != len(rows):
                for seq, video_id, _uri, loc in rows:
                    first_seq, _, first_loc = self.video(video_id)
                    if first_seq != seq:
                        return video_id, loc, first_loc
            self.db.executemany(
                "INSERT INTO question VALUES (?, ?, ?, ?)",
                [(start + i, n, q.question_id, q.text)
                 for i, (*_, asked) in enumerate(batch) for n, q in enumerate(asked)],
            )  # fmt: skip
        except sqlite3.Error as exc:
            raise _disk_error(exc) from None
        self._count += len(rows)
        return None

    def video(self, video_id: str) -> tuple[int, str, str]:
        """``(seq, uri, loc)`` of a video already in."""
        row = self._run("SELECT seq, uri, loc FROM video WHERE video_id = ?", (video_id,))
        return row.fetchone()

    def add_question(self, seq: int, n: int, question: Question) -> bool:
        """Add the ``n``-th question of video ``seq``; False if its id is already taken."""
        cursor = self._run(
            "INSERT OR IGNORE INTO question VALUES (?, ?, ?, ?)",
            (seq, n, question.question_id, question.text),
        )
        return cursor.rowcount == 1

    def question_count(self, seq: int) -> int:
        return self._run("SELECT count(*) FROM question WHERE video_seq = ?", (seq,)).fetchone()[0]

    def add_file(self, name: str, uri: str) -> None:
        """A listed video file, to be added in name order by :meth:`files`."""
        self._run("INSERT OR IGNORE INTO file VALUES (?, ?)", (name, uri))

    def files(self) -> Iterator[tuple[str, str]]:
        """The listed ``(name, uri)`` pairs, sorted by name (code point order)."""
        yield from self.db.execute("SELECT name, uri FROM file ORDER BY name")

    def _run(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, args)
        except sqlite3.Error as exc:
            raise _disk_error(exc) from None

    # --- reading -----------------------------------------------------------------------------

    def finish(self, default_questions: list[str]) -> None:
        """Give videos without questions ``default_questions`` and store every digest; sets
        :attr:`asked` and :attr:`inputs_hash`."""
        self._defaults = list(default_questions)
        digests: list[tuple[str, int]] = []
        total = InputsHash()
        update = "UPDATE video SET digest = ? WHERE seq = ?"
        for seq, video in self._iter(with_digest=False):
            digest = video_digest(video.uri, [(q.question_id, q.text) for q in video.questions])
            total.add(video.video_id, digest)
            self.asked += bool(video.questions)
            digests.append((digest, seq))
            if len(digests) >= 10_000:
                self._update(update, digests)
        self._update(update, digests)
        self.inputs_hash = total.hexdigest()

    def _update(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        try:
            self.db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _disk_error(exc) from None
        rows.clear()

    def videos(self, where: str = "") -> Iterator[PlannedVideo]:
        """The videos in input order (``where``: an SQL condition on ``video v``)."""
        for _seq, video in self._iter(where=where):
            yield video

    def items(self) -> Iterator[VideoItem]:
        for video in self.videos():
            yield VideoItem(video.video_id, video.uri, list(video.questions))

    def _iter(
        self, where: str = "", with_digest: bool = True
    ) -> Iterator[tuple[int, PlannedVideo]]:
        condition = f"WHERE {where}" if where else ""
        videos = self.db.execute(
            f"SELECT v.seq, v.video_id, v.uri, v.digest FROM video v {condition} ORDER BY v.seq"
        )
        questions = self.db.cursor().execute(
            "SELECT video_seq, question_id, text FROM question ORDER BY video_seq, n"
        )
        pending = questions.fetchone()
        defaults = self._defaults
        for seq, video_id, uri, digest in videos:
            asked: list[Question] = []
            while pending is not None and pending[0] <= seq:
                if pending[0] == seq:
                    asked.append(Question(pending[1], pending[2]))
                pending = questions.fetchone()
            if not asked:
                asked = [Question(f"{video_id}#{i}", t) for i, t in enumerate(defaults)]
            yield seq, PlannedVideo(video_id, uri, tuple(asked), (with_digest and digest) or "")

    def questions_of(self, seq: int) -> tuple[Question, ...]:
        rows = self.db.execute(
            "SELECT question_id, text FROM question WHERE video_seq = ? ORDER BY n", (seq,)
        )
        asked = tuple(Question(qid, text) for qid, text in rows)
        if asked:
            return asked
        (video_id,) = self.db.execute("SELECT video_id FROM video WHERE seq = ?", (seq,)).fetchone()
        defaults = self._defaults
        return tuple(Question(f"{video_id}#{i}", t) for i, t in enumerate(defaults))


def _disk_error(exc: sqlite3.Error) -> Exception:
    """A full or unwritable temporary disk is a fault of the environment (an OSError)."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and any(
        s in text for s in ("disk is full", "unable to open", "disk I/O", "readonly")
    ):
        code = errno.ENOSPC if "full" in text else errno.EIO
        return OSError(code, f"input spool in $TMPDIR: {text}")
    return exc
