"""The job ledger: which shards a job has and which are committed, kept in a Store.

Layout under ``jobs/<job_id>/``:

- ``ledger.json``: the config hash, the identity of the inputs the plan was made from, shard and
  video counts and where the plan is; created once (put_if_absent), replaced only by an inputs
  update (compare-and-swap, under the job's lease). Small whatever the corpus size;
- ``plan/<plan_id>/<piece>.parquet``: the shard plan in pieces (:mod:`.plan`): every video's id,
  uri, questions and content digest, by shard;
- ``shards/<shard_id>.done``: the commit marker of a shard, with its stats (put_if_absent, so a
  retried or concurrent commit of the same shard is a no-op);
- ``progress/<generation>/<stats name>`` and ``progress.json``: each commit's stats in the
  name of an empty object, folded by the driver into a checkpoint (:mod:`.progress`), so
  ``status`` costs O(1) requests whatever the job's size;
- ``attempts/<shard_id>/<n>``: one object per processing attempt of a shard.

Shard ids are ``f"{index:06d}"``. An update appends shards for new videos, drops removed videos
from pending shards and never changes a committed shard. Comparing the inputs with the plan is
one hash when nothing changed, else a join of the two in the inputs' SQLite spool, so the driver's
memory does not grow with the corpus. Ledgers of format 1 (no digests) and 2 (every video in
ledger.json) are read too; the first run that opens one rewrites it in format 3 (format 1 inputs
are compared by video id only).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..storage.base import Store, StoreUnavailable
from . import layout
from .failures import UsageError
from .layout import check_job_id, ledger_key
from .plan import PlanReader, PlanWriter, piece_shards_for
from .progress import FOLD_EVERY, Checkpoint, Totals
from .spool import InputSpool, PlannedVideo, Question, video_digest

__all__ = ["InputsChanged", "Ledger", "LedgerConflict", "PlanUpdate", "video_digest"]

LEDGER_FORMAT = 3
EXAMPLES = 3  # ids shown per kind of change in a message
SUMMARY_EXAMPLES = 100  # ids listed per kind of change in a summary
_SHARD_ID = re.compile(r"[0-9]{6,}")
LISTING_BLOCK = 1_000  # shard ids per concurrent listing (a power of 10)
LISTING_THREADS = 8


class LedgerConflict(UsageError):
    """The job exists with another configuration."""


class InputsChanged(LedgerConflict):
    """The job exists with other inputs (and no ``--update``, or one that cannot apply)."""


_CODE = re.compile(r"[a-z0-9_]{1,40}")
MAX_STATS_NAME = 200


def stats_name(shard_id: str, videos: int, rows: int, failed: int, counters: dict[str, int]) -> str:
    """The listing-only stats record of a committed shard. Counters that cannot be spelled in a
    short key are replaced by ``~m``: progress then reads them from the marker."""
    parts = [shard_id, f"v{videos}", f"r{rows}", f"f{failed}"]
    for code, count in sorted(counters.items()):
        if not _CODE.fullmatch(str(code)) or not isinstance(count, int) or count < 0:
            return "~".join([*parts[:4], "m"])
        parts.append(f"{code}.{count}")
    name = "~".join(parts)
    return name if len(name) <= MAX_STATS_NAME else "~".join([*parts[:4], "m"])


def parse_stats_name(name: str) -> dict[str, Any] | None:
    """The stats a :func:`stats_name` holds (``shard_id``, ``videos``, ``rows``, ``failed``,
    ``counters``, and ``in_marker`` when the counters are only in the marker), or None for a name
    that is not one."""
    shard_id, *fields = name.split("~")
    if len(fields) < 3 or [f[:1] for f in fields[:3]] != ["v", "r", "f"]:
        return None
    try:
        videos, rows, failed = (int(f[1:]) for f in fields[:3])
        counters = {}
        in_marker = fields[3:] == ["m"]
        for field in [] if in_marker else fields[3:]:
            code, _, count = field.rpartition(".")
            if not _CODE.fullmatch(code):
                return None
            counters[code] = int(count)
    except ValueError:
        return None
    parsed = {"shard_id": shard_id, "videos": videos, "rows": rows, "failed": failed,
              "counters": counters}  # fmt: skip
    if in_marker:
        parsed["in_marker"] = True
    return parsed


def shard_id_for(index: int) -> str:
    """The id of the shard at ``index`` of the plan."""
    return f"{index:06d}"


@dataclass(frozen=True)
class Ids:
    """How many videos of one kind, and the first :data:`SUMMARY_EXAMPLES` of their ids."""

    count: int = 0
    examples: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.count > 0

    def shown(self, limit: int = EXAMPLES) -> str:
        """E.g. ``'a', 'b', ...``."""
        text = ", ".join(repr(v) for v in self.examples[:limit])
        return text + (", ..." if self.count > limit else "")


class _Collect:
    """Builds an :class:`Ids` from ids seen one at a time."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, video_id: str) -> None:
        self.count += 1
        if len(self.examples) < SUMMARY_EXAMPLES:
            self.examples.append(video_id)

    def ids(self) -> Ids:
        return Ids(self.count, tuple(self.examples))


@dataclass(frozen=True)
class InputsDiff:
    """How a job's inputs differ from those of its plan (ids in input / plan order)."""

    added: Ids = Ids()
    removed: Ids = Ids()
    changed: Ids = Ids()  # same id, other uri or questions

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        """E.g. ``2 added ('v7', 'v8'), 1 removed ('v3')``."""
        parts = [
            f"{ids.count} {name} ({ids.shown()})"
            for name, ids in (("added", self.added), ("removed", self.removed),
                              ("changed", self.changed))
            if ids
        ]  # fmt: skip
        return ", ".join(parts) or "no change"


@dataclass(frozen=True)
class PlanUpdate:
    """What an inputs update did to a job's plan."""

    added: Ids  # videos planned in new shards
    new_shards: Ids
    removed: Ids  # videos no longer in the inputs (rows already committed stay)
    dropped: Ids  # the removed videos that were still pending: never processed
    changed: Ids  # pending videos now processed with their new uri or questions

    def summary(self) -> dict[str, Any]:
        """Counts and up to :data:`SUMMARY_EXAMPLES` ids of each kind, for the job summary."""
        out: dict[str, Any] = {
            "new_shards": list(self.new_shards.examples),
            "new_shards_count": self.new_shards.count,
        }
        for name in ("added", "removed", "dropped", "changed"):
            ids: Ids = getattr(self, name)
            out[f"{name}_videos"] = ids.count
            out[f"{name}_examples"] = list(ids.examples)
        return out


_PREV = """
CREATE TEMP TABLE prev (video_id TEXT PRIMARY KEY, shard INTEGER NOT NULL, pos INTEGER NOT NULL,
                        digest TEXT NOT NULL, removed INTEGER NOT NULL, uri TEXT, questions TEXT);
CREATE INDEX temp.prev_order ON prev (shard, pos);
CREATE TEMP TABLE done (shard INTEGER PRIMARY KEY);
"""
# the inputs' videos (v, with digest) against the plan's live videos (p)
_ADDED = """SELECT v.video_id FROM video v WHERE NOT EXISTS
            (SELECT 1 FROM prev p WHERE p.video_id = v.video_id AND p.removed = 0) ORDER BY v.seq"""
_REMOVED = """SELECT p.video_id FROM prev p WHERE p.removed = 0 AND NOT EXISTS
              (SELECT 1 FROM video v WHERE v.video_id = p.video_id) ORDER BY p.shard, p.pos"""
_CHANGED = """SELECT v.video_id FROM video v JOIN prev p ON p.video_id = v.video_id
              WHERE p.removed = 0 AND p.digest != '' AND p.digest != v.digest {extra}
              ORDER BY v.seq"""
_STALE = """SELECT v.video_id FROM video v JOIN prev p ON p.video_id = v.video_id
            JOIN done d ON d.shard = p.shard
            WHERE p.digest != '' AND p.digest != v.digest ORDER BY v.seq"""
_MERGE = """SELECT p.shard, p.video_id, p.digest, p.uri, p.questions, d.shard IS NOT NULL,
                   v.seq, v.uri, v.digest
            FROM prev p LEFT JOIN done d ON d.shard = p.shard
            LEFT JOIN video v ON v.video_id = p.video_id ORDER BY p.shard, p.pos"""
_FRESH = "NOT EXISTS (SELECT 1 FROM prev p WHERE p.video_id = v.video_id)"


class Ledger:
    """One job's shard plan and commit state; every method reads or writes the store."""

    def __init__(
        self, store: Store, job_id: str, record: dict[str, Any], version: str | None = None
    ) -> None:
        self.store = store
        self.job_id = check_job_id(job_id)
        self.plan_update: PlanUpdate | None = None  # set when opening updated the inputs
        self._set_record(record, version)
        # the progress generation this ledger writes stats records into, and its writers
        self._generation: int | None = None
        self._lock = threading.Condition()
        self._writing: Counter[int] = Counter()
        self._written = 0  # records in the current generation
        self._folding = False

    def _set_record(self, record: dict[str, Any], version: str | None) -> None:
        self.record = record
        self.version = version  # of ledger.json as read, for a compare-and-swap update
        self.format = int(record.get("format", 1))
        self.config_hash: str = record["config_hash"]
        self.legacy: list[list[str]] | None = None  # the shards of a format 1/2 ledger
        self.plan: PlanReader | None = None
        if self.format >= 3:
            plan = record["plan"]
            self.plan = PlanReader(
                self.store, plan["prefix"], int(plan["piece_shards"]), dict(plan["pieces"])
            )
            self.total_shards, self.total_videos = record["total_shards"], record["total_videos"]
        else:
            shards, digests = record["shards"], record.get("digests")
            if not all(isinstance(s, list) and all(isinstance(v, str) for v in s) for s in shards):
                raise TypeError("shards must be lists of video ids")
            if digests is not None and [len(d) for d in digests] != [len(s) for s in shards]:
                raise TypeError("digests must match the shards")
            self.legacy = shards
            self.total_shards, self.total_videos = len(shards), sum(len(s) for s in shards)

    @property
    def prefix(self) -> str:
        return layout.job_prefix(self.job_id)

    @property
    def key(self) -> str:
        return ledger_key(self.job_id)

    # --- planning ----------------------------------------------------------------------------

    @classmethod
    def open_or_create(
        cls,
        store: Store,
        job_id: str,
        config_hash: str,
        inputs: InputSpool,
        *,
        shard_size: int,
        update: bool = False,
    ) -> Ledger:
        """Create the job's ledger, planning ``inputs`` (a finished spool) in shards of
        ``shard_size`` in input order, or resume the existing one.

        Raises LedgerConflict if the job exists with another configuration hash, and
        InputsChanged if it exists with other inputs, unless ``update``: then new videos are
        planned in new shards and removed ones leave the pending shards (see :meth:`_update`).
        """
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        key = ledger_key(job_id)
        try:
            existing = cls.load(store, job_id)
        except KeyError:
            existing = None
        if existing is None:
            writer = cls._writer(store, job_id, shard_size)
            for i, video in enumerate(inputs.videos()):
                writer.add(i // shard_size, video)
            shards = -(-len(inputs) // shard_size)
            record = cls._new_record(job_id, config_hash, inputs, writer, shard_size, shards, 0)
            if store.put_if_absent(key, json.dumps(record).encode()):
                return cls(store, job_id, record)
            PlanReader(store, writer.prefix, writer.piece_shards, writer.pieces).delete()
            existing = cls.load(store, job_id)  # another driver planned it first
        if existing.config_hash != config_hash:
            raise LedgerConflict(
                f"job {job_id} was created with a different configuration "
                f"(hash {existing.config_hash[:12]}, now {config_hash[:12]}); "
                "use a new --job-id or the same settings"
            )
        if existing.format >= 3 and existing.record.get("inputs_hash") == inputs.inputs_hash:
            return existing  # the same inputs: nothing to compare
        existing._load_previous(inputs)
        diff = existing._diff(inputs)
        if diff and not update:
            raise InputsChanged(
                f"job {job_id} was planned from other inputs: {diff.describe()}; rerun with "
                "--update to plan the added videos in new shards (committed results stay, "
                "removed videos are reported and not processed), or use a new --job-id"
            )
        done = existing._update(inputs, shard_size, diff)  # also rewrites format 1/2 ledgers
        existing.plan_update = done if diff else None
        return existing

    @staticmethod
    def _writer(store: Store, job_id: str, shard_size: int) -> PlanWriter:
        prefix = layout.plan_prefix(job_id, uuid.uuid4().hex[:12])
        return PlanWriter(store, prefix, piece_shards_for(shard_size))

    @staticmethod
    def _new_record(
        job_id: str,
        config_hash: str,
        inputs: InputSpool,
        writer: PlanWriter,
        shard_size: int,
        shards: int,
        removed: int,
    ) -> dict[str, Any]:
        pieces = writer.close()
        return {
            "format": LEDGER_FORMAT,
            "job_id": job_id,
            "config_hash": config_hash,
            "inputs_hash": inputs.inputs_hash,
            "written_at": time.time(),
            "shard_size": shard_size,
            "total_shards": shards,
            "total_videos": sum(pieces.values()),
            "removed_videos": removed,
            "plan": {"prefix": writer.prefix, "piece_shards": writer.piece_shards,
                     "pieces": pieces},
        }  # fmt: skip

    @classmethod
    def load(cls, store: Store, job_id: str) -> Ledger:
        """The existing ledger of ``job_id``; KeyError if there is none."""
        key = ledger_key(job_id)
        stored = store.get_versioned(key)
        try:
            record = json.loads(stored.data)
            if not isinstance(record, dict):
                raise TypeError("not a JSON object")
            return cls(store, job_id, record, stored.version)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"ledger {key} in {store.url} is corrupt: {exc!r}") from None

    def rows(self) -> Iterator[tuple[int, PlannedVideo, bool]]:
        """Every ``(shard, video, removed)`` of the plan in order (reads the whole plan)."""
        if self.plan is not None:
            yield from self.plan.rows()
            return
        assert self.legacy is not None
        digests = self.record.get("digests") or [[""] * len(s) for s in self.legacy]
        removed = set(self.record.get("removed", []))
        for i, (shard, shard_digests) in enumerate(zip(self.legacy, digests, strict=True)):
            for video, digest in zip(shard, shard_digests, strict=True):
                yield i, PlannedVideo(video, "", (), digest), video in removed

    def videos(self) -> dict[str, str]:
        """``video_id -> digest`` of the planned videos still in the inputs, in plan order
        (reads the whole plan: for tests and small jobs)."""
        return {video.video_id: video.digest for _, video, gone in self.rows() if not gone}

    def _load_previous(self, inputs: InputSpool) -> None:
        """The plan (table ``prev``) and the committed shards (``done``) into the inputs' spool."""
        db = inputs.db
        db.executescript("DROP TABLE IF EXISTS temp.prev; DROP TABLE IF EXISTS temp.done;" + _PREV)
        batch: list[tuple[Any, ...]] = []
        position: tuple[int, int] = (-1, 0)
        legacy = self.plan is None
        for shard, video, removed in self.rows():
            position = (shard, position[1] + 1 if position[0] == shard else 0)
            questions = json.dumps([[q.question_id, q.text] for q in video.questions])
            kept = (None, None) if legacy else (video.uri, questions)
            batch.append((video.video_id, shard, position[1], video.digest, int(removed), *kept))
            if len(batch) >= 10_000:
                db.executemany("INSERT INTO prev VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
                batch.clear()
        db.executemany("INSERT INTO prev VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
        db.executemany("INSERT INTO done VALUES (?)", ((int(s),) for s in self.committed()))

    @staticmethod
    def _ids(inputs: InputSpool, sql: str) -> Ids:
        found = _Collect()
        for (video_id,) in inputs.db.execute(sql):
            found.add(video_id)
        return found.ids()

    def _diff(self, inputs: InputSpool) -> InputsDiff:
        """How the inputs differ from the plan loaded by :meth:`_load_previous`."""
        return InputsDiff(
            added=self._ids(inputs, _ADDED),
            removed=self._ids(inputs, _REMOVED),
            changed=self._ids(inputs, _CHANGED.format(extra="")),
        )

    def _update(self, inputs: InputSpool, shard_size: int, diff: InputsDiff) -> PlanUpdate:
        """Make the plan follow the inputs, replacing ledger.json (compare-and-swap).

        Committed shards never change: their removed videos are only recorded as removed, and a
        video changed after its shard was committed (or removed, then back with other content)
        is refused with InputsChanged. Pending shards lose their removed videos (one left empty
        is committed with no rows) and process changed ones with their new uri or questions. New
        videos are planned in new shards, numbered after the last one.
        """
        stale = self._ids(inputs, _STALE)
        if stale:
            raise InputsChanged(
                f"job {self.job_id}: {stale.count} videos changed after their shard was "
                f"committed ({stale.shown()}): their rows are of the old uri or questions; give "
                "them new video ids, or use a new --job-id"
            )
        changed = self._ids(
            inputs, _CHANGED.format(extra="AND p.shard NOT IN (SELECT shard FROM done)")
        )
        writer = self._writer(self.store, self.job_id, shard_size)
        dropped, emptied, removed = _Collect(), [], 0
        current, kept, pending = -1, 0, False  # the shard being copied
        for row in inputs.db.cursor().execute(_MERGE):
            shard, video_id, digest, uri, questions, committed, seq, new_uri, new_digest = row
            if shard != current:
                if pending and kept == 0:
                    emptied.append(current)
                current, kept, pending = shard, 0, not committed
            if committed:
                asked = (
                    tuple(Question(*q) for q in json.loads(questions))
                    if questions is not None
                    else (inputs.questions_of(seq) if seq is not None else ())
                )
                uri = uri if uri is not None else (new_uri or "")
                video = PlannedVideo(video_id, uri, asked, (new_digest if seq else "") or digest)
                writer.add(shard, video, removed=seq is None)
                removed += seq is None
                kept += 1
            elif seq is None:
                dropped.add(video_id)
            else:
                writer.add(
                    shard, PlannedVideo(video_id, new_uri, inputs.questions_of(seq), new_digest)
                )
                kept += 1
        if pending and kept == 0:
            emptied.append(current)
        first_new = self.total_shards
        added = _Collect()
        for i, video in enumerate(inputs.videos(_FRESH)):
            writer.add(first_new + i // shard_size, video)
            added.add(video.video_id)
        total = first_new + -(-added.count // shard_size)
        record = self._new_record(
            self.job_id, self.config_hash, inputs, writer, shard_size, total, removed
        )
        version = self.store.put_if_version(
            self.key, json.dumps(record).encode(), self.version or ""
        )
        if version is None:
            PlanReader(self.store, writer.prefix, writer.piece_shards, writer.pieces).delete()
            raise LedgerConflict(
                f"the ledger of job {self.job_id} changed while it was being updated; rerun"
            )
        old = self.plan
        self._set_record(record, version)
        if old is not None:
            old.delete()
        for shard in emptied:  # every video of it was removed
            self.commit(shard_id_for(shard), rows=0, failed=0, counters={})
        new_ids = [
            shard_id_for(i) for i in range(first_new, min(total, first_new + SUMMARY_EXAMPLES))
        ]
        return PlanUpdate(
            added=added.ids(),
            new_shards=Ids(total - first_new, tuple(new_ids)),
            removed=diff.removed,
            dropped=dropped.ids(),
            changed=changed,
        )

    # --- shards ------------------------------------------------------------------------------

    def shard_ids(self) -> list[str]:
        return [shard_id_for(i) for i in range(self.total_shards)]

    def shard_plan(self, shard_id: str) -> list[PlannedVideo]:
        """The videos of a shard, with what they are made from; ValueError for an unknown id."""
        index = self._shard_index(shard_id)
        if self.plan is None:
            raise ValueError(f"job {self.job_id}: a format {self.format} ledger has no shard plan")
        return [video for _, video, _ in self.plan.shard(index)]

    def shard_videos(self, shard_id: str) -> list[str]:
        """The video ids of a shard; ValueError for an id not in this ledger."""
        index = self._shard_index(shard_id)
        if self.legacy is not None:
            return list(self.legacy[index])
        return [video.video_id for video in self.shard_plan(shard_id)]

    def shard_lists(self) -> list[list[str]]:
        """Every shard's video ids (reads the whole plan: for tests and small jobs)."""
        shards: list[list[str]] = [[] for _ in range(self.total_shards)]
        for shard, video, _ in self.rows():
            shards[shard].append(video.video_id)
        return shards

    def _shard_index(self, shard_id: str) -> int:
        if isinstance(shard_id, str) and _SHARD_ID.fullmatch(shard_id):
            index = int(shard_id)
            if index < self.total_shards and shard_id == shard_id_for(index):
                return index
        raise ValueError(f"job {self.job_id} has no shard {shard_id!r}")

    def _is_shard(self, shard_id: str) -> bool:
        try:
            self._shard_index(shard_id)
        except ValueError:
            return False
        return True

    def _marker(self, shard_id: str) -> str:
        return layout.marker_key(self.job_id, shard_id)

    def _names(self, prefix: str) -> Iterator[str]:
        """The names under ``prefix`` (a folder whose names start with a shard id), listed by
        blocks of 1,000 shard ids at once where the store pages its listings."""
        if not self.store.concurrent_listing or self.total_shards <= LISTING_BLOCK:
            yield from self.store.iter_names(prefix)
            return
        cut = len(str(LISTING_BLOCK)) - 1  # a power of 10: ids of one block share all but `cut`
        heads = sorted(
            {shard_id_for(i)[:-cut] for i in range(0, self.total_shards, LISTING_BLOCK)}
            | {shard_id_for(self.total_shards - 1)[:-cut]}
        )  # every id starts with one of these (a longer id's head may also match shorter ids)
        with ThreadPoolExecutor(LISTING_THREADS) as pool:
            for names in pool.map(lambda h: list(self.store.iter_names(prefix + h)), heads):
                yield from names

    def committed(self) -> set[str]:
        """Ids of the committed shards (one listing)."""
        done = set()
        for key in self._names(layout.markers_prefix(self.job_id)):
            name = key.rpartition("/")[2]
            if name.endswith(".done") and self._is_shard(name[: -len(".done")]):
                done.add(name[: -len(".done")])
        return done

    def pending(self) -> list[str]:
        """Ids of the shards not committed yet, in order."""
        done = self.committed()
        return [s for s in map(shard_id_for, range(self.total_shards)) if s not in done]

    def commit(self, shard_id: str, rows: int, failed: int, counters: dict[str, int]) -> bool:
        """Mark ``shard_id`` done with its stats; False (and nothing changed) if it already was."""
        videos = len(self.shard_videos(shard_id))
        if rows < 0 or failed < 0 or failed > rows:
            raise ValueError(f"shard {shard_id}: need 0 <= failed <= rows, got {failed}, {rows}")
        marker = {
            "shard_id": shard_id,
            "videos": videos,
            "rows": rows,
            "failed": failed,
            "counters": dict(counters),
            "committed_at": time.time(),
        }
        if not self.store.put_if_absent(self._marker(shard_id), json.dumps(marker).encode()):
            return False
        # the marker is the commit; a stats record that could not be written is restored from
        # the marker by the next exact progress() (each run's start and end)
        with self._lock:
            generation = self._current_generation()
            self._writing[generation] += 1
        written = False
        try:
            with contextlib.suppress(StoreUnavailable, OSError):
                self._put_stats(generation, marker)
                written = True
        finally:
            with self._lock:
                self._writing[generation] -= 1
                self._written += written and generation == self._generation
                fold = self._written >= FOLD_EVERY and not self._folding
                self._lock.notify_all()
        if fold:
            with contextlib.suppress(StoreUnavailable, OSError):
                self.fold()
        return True

    def _current_generation(self) -> int:
        if self._generation is None:
            self._generation = Checkpoint.read(self.store, self._checkpoint_key).generation + 1
        return self._generation

    @property
    def _checkpoint_key(self) -> str:
        return layout.progress_key(self.job_id)

    def _put_stats(self, generation: int, marker: dict[str, Any]) -> None:
        name = stats_name(marker["shard_id"], marker["videos"], marker["rows"], marker["failed"],
                          marker["counters"])  # fmt: skip
        self.store.put(layout.stats_key(self.job_id, generation, name), b"")

    def commit_info(self, shard_id: str) -> dict[str, Any] | None:
        """The marker of a committed shard, None if it is pending."""
        self._shard_index(shard_id)
        try:
            return json.loads(self.store.get(self._marker(shard_id)))
        except KeyError:
            return None

    def _records(self, generation: int | None) -> dict[int, dict[str, Any]]:
        """The stats records of one generation (None: the flat ``stats/`` folder of earlier
        versions), by shard index."""
        names = (
            self._names(layout.legacy_stats_prefix(self.job_id))
            if generation is None
            else self.store.iter_names(layout.stats_prefix(self.job_id, generation))
        )  # a generation holds at most a few thousand: one listing
        found = {}
        for key in names:
            parsed = parse_stats_name(key.rpartition("/")[2])
            if parsed is not None and self._is_shard(parsed["shard_id"]):
                if parsed.get("in_marker"):
                    parsed = self.commit_info(parsed["shard_id"]) or parsed
                found[int(parsed["shard_id"])] = parsed
        return found

    def _open_records(self, after: int) -> dict[int, dict[str, Any]]:
        """The records of the generations after ``after``, up to the first empty one."""
        found: dict[int, dict[str, Any]] = {}
        generation = after + 1
        while records := self._records(generation):
            found.update(records)
            generation += 1
        return found

    def fold(self, exact: bool = False) -> tuple[Checkpoint, dict[int, dict[str, Any]]]:
        """Fold the closed stats generations into ``progress.json`` (the driver does, every
        :data:`FOLD_EVERY` commits and at a run's start and end); returns the checkpoint and the
        records of the generations still open. ``exact`` also lists the commit markers and folds
        in any shard committed without a stats record (its driver stopped between the two
        writes), read from its marker."""
        with self._lock:
            self._folding = True
            through = self._current_generation()
            if self._written:  # close it: new commits go to the next generation
                self._generation, self._written = through + 1, 0
            else:  # nothing of this ledger's in it: it stays open
                through -= 1
            while self._writing[through]:
                self._lock.wait()
        try:
            checkpoint = Checkpoint.read(self.store, self._checkpoint_key)
            before = checkpoint.generation
            sources = [self._records(g) for g in range(before + 1, through + 1)]
            if before < 0:
                sources.insert(0, self._records(None))
            for records in sources:
                for index, info in records.items():
                    checkpoint.add(index, info)
            opened = self._open_records(max(through, before)) if exact else {}
            if exact:
                for shard_id in sorted(self.committed()):
                    index = int(shard_id)
                    if not checkpoint.has(index) and index not in opened:
                        checkpoint.add(index, self.commit_info(shard_id) or {})
            checkpoint.generation = max(through, before)
            if exact or checkpoint.generation > before:
                checkpoint.write(self.store, self._checkpoint_key)
            return checkpoint, opened
        finally:
            self._folding = False

    def progress(self, exact: bool = True) -> dict[str, Any]:
        """Totals and committed counts of shards and videos, plus rows, failed rows and the
        summed counters of the committed shards.

        Read from ``progress.json`` and the few stats records written since (``exact=False``,
        as ``status`` does: one GET and a listing or two, whatever the job's size). ``exact``
        also folds the records and checks the commit markers (see :meth:`fold`): a run's start
        and end do, so a shard whose driver stopped between its marker and its stats record is
        counted from then on.
        """
        if exact:
            checkpoint, opened = self.fold(exact=True)
        else:
            checkpoint = Checkpoint.read(self.store, self._checkpoint_key)
            opened = self._open_records(checkpoint.generation)
            if checkpoint.generation < 0:
                opened = {**self._records(None), **opened}
        totals = Totals(checkpoint.totals.videos, checkpoint.totals.rows,
                        checkpoint.totals.failed, dict(checkpoint.totals.counters))  # fmt: skip
        extra = {i: info for i, info in opened.items() if not checkpoint.has(i)}
        for info in extra.values():
            totals.add(info)
        return {
            "total_shards": self.total_shards,
            "total_videos": self.total_videos,
            "committed_shards": checkpoint.count() + len(extra),
            "committed_videos": totals.videos,
            "rows": totals.rows,
            "failed": totals.failed,
            "counters": dict(sorted(totals.counters.items())),
        }

    def _attempts_prefix(self, shard_id: str) -> str:
        self._shard_index(shard_id)
        return layout.attempts_prefix(self.job_id, shard_id)

    def record_attempt(self, shard_id: str) -> int:
        """Count one more processing attempt of ``shard_id``; returns its number (1, 2, ...)."""
        prefix = self._attempts_prefix(shard_id)
        n = len(self.store.list(prefix)) + 1
        body = json.dumps({"started_at": time.time()}).encode()
        while not self.store.put_if_absent(f"{prefix}{n}", body):  # a concurrent attempt won
            n += 1
        return n

    def attempts(self, shard_id: str) -> int:
        """How many attempts of ``shard_id`` were recorded."""
        return len(self.store.list(self._attempts_prefix(shard_id)))
