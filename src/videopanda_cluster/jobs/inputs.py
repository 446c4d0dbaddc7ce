"""Job inputs: a video directory, a glob, a manifest (.jsonl/.csv/.parquet) or an ``az://`` prefix,
streamed into an :class:`~videopanda_cluster.jobs.spool.InputSpool` of validated videos (no
per-video state in memory, no row limit but the disk's).

Ids come from untrusted input. They are validated (non-empty, at most 1024 characters, no NUL,
control characters or unpaired surrogates) and never used as paths: :func:`item_key` encodes one
into a single safe store key component. Manifest uris are the user's own files, so absolute paths
and ``..`` are allowed there.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..storage.base import Store, safe_key_component
from .spool import InputSpool, Question, VideoItem

__all__ = ["InputError", "Question", "VideoItem", "read_inputs", "spool_inputs"]

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".flv", ".wmv",
     ".3gp", ".ts"}
)  # fmt: skip
MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
MAX_ID_CHARS = 1024
KEPT_SCHEMES = ("az", "file")  # uris with these schemes are kept as they are

_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # Unicode Cc, plus surrogates
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_MAGIC = re.compile(r"[*?[]")

StoreFactory = Callable[[str], Store]


class InputError(ValueError):
    """Unusable job input; the message names the file, the line or row, and the field."""


def item_key(video_id: str) -> str:
    """The one store key component for ``video_id`` (encoded: no ``/``, never ``.`` or ``..``)."""
    return safe_key_component(video_id)


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a video or question id, or None if it can."""
    if not value:
        return "is empty"
    if len(value) > MAX_ID_CHARS:
        return f"is {len(value)} characters long (at most {MAX_ID_CHARS})"
    bad = _BAD_CHAR.search(value)
    if bad is None:
        return None
    char = ord(bad.group())
    if char == 0:
        return "contains a NUL byte"
    if 0xD800 <= char <= 0xDFFF:
        return "contains an unpaired surrogate (not valid Unicode)"
    return f"contains the control character U+{char:04X}"


def question_problem(text: Any) -> str | None:
    """Why ``text`` cannot be a question (or caption prompt), or None if it can. Any other text
    is allowed: the model reads it as plain text, markers such as ``<image>`` included."""
    if not isinstance(text, str):
        return f"must be a non-empty string, got {type(text).__name__}"
    if not text.strip():
        return f"must be a non-empty string, got {_show(text)} (empty or only whitespace)"
    if "\0" in text:
        return "contains a NUL byte"
    return None


def is_video_name(name: str) -> bool:
    """Whether a file name has one of :data:`VIDEO_EXTENSIONS` (any case)."""
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def read_inputs(
    source: str,
    *,
    default_questions: list[str] | None = None,
    max_rows: int | None = None,
    store_factory: StoreFactory | None = None,
) -> list[VideoItem]:
    """:func:`spool_inputs` read into a list (for small inputs: a job plans from the spool)."""
    with spool_inputs(
        source, default_questions=default_questions, max_rows=max_rows, store_factory=store_factory
    ) as spool:
        return list(spool.items())


def spool_inputs(
    source: str,
    *,
    default_questions: list[str] | None = None,
    max_rows: int | None = None,
    store_factory: StoreFactory | None = None,
) -> InputSpool:
    """Stream a job's videos from ``source`` into a spool, in a stable order (the caller closes it).

    ``source`` is a directory (video files, recursive), a glob, a video file, a manifest
    (``.jsonl``, ``.csv``, ``.parquet``) or ``az://container/prefix``. Videos without questions
    get ``default_questions`` (ids ``f"{video_id}#{i}"``). More than ``max_rows`` manifest rows
    (or listed videos), when given, is an error, as is finding no video at all.
    ``store_factory`` opens an ``az://container`` store (default:
    :func:`videopanda_cluster.storage.open.open_store`).
    """
    defaults = _check_default_questions(default_questions or [])
    if "\0" in source:
        raise InputError(f"{source!r}: the input source contains a NUL byte")
    spool = InputSpool()
    try:
        _fill(spool, source, store_factory, max_rows)
        if not len(spool):
            raise InputError(f"{source}: no videos found")
        spool.finish(defaults)
    except BaseException:
        spool.close()
        raise
    return spool


def _fill(
    spool: InputSpool, source: str, store_factory: StoreFactory | None, max_rows: int | None
) -> None:
    if source.startswith("az://"):
        return _read_az(spool, source, store_factory, max_rows)
    path = Path(source.removeprefix("file://"))
    suffix = path.suffix.lower()
    if path.is_dir():
        _read_directory(spool, path, max_rows)
    elif path.is_file() and suffix in MANIFEST_SUFFIXES:
        _read_manifest(spool, path, max_rows)
    elif path.is_file() and is_video_name(path.name):
        _add_files(spool, [(path.name, os.path.abspath(path))], source, None)
    elif _GLOB_MAGIC.search(source):
        _read_glob(spool, source, max_rows)
    elif suffix in MANIFEST_SUFFIXES or not path.exists():
        raise InputError(f"{source}: no such file or directory")
    else:
        raise InputError(
            f"{source}: not a directory, glob, video file, manifest "
            f"({', '.join(MANIFEST_SUFFIXES)}) or az:// prefix"
        )


def _check_default_questions(questions: list[str]) -> list[str]:
    for i, text in enumerate(questions):
        problem = question_problem(text)
        if problem:
            raise InputError(f"default question {i}: {problem}")
    return questions


def _show(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _check_id(value: Any, where: str, name: str) -> str:
    if value is None or value == "":
        raise InputError(f"{where}: field `{name}` is missing or empty")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f"{where}: field `{name}` must be a string, got {type(value).__name__}")
    problem = id_problem(value)
    if problem:
        raise InputError(f"{where}: field `{name}` {problem}")
    return value


def _resolve_uri(value: Any, base: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: field `uri` is missing or not a non-empty string")
    if "\0" in value:
        raise InputError(f"{where}: field `uri` contains a NUL byte")
    scheme = _SCHEME.match(value)
    if scheme is None:
        return os.path.join(base, value)  # absolute paths stay absolute
    if scheme.group(1).lower() not in KEPT_SCHEMES:
        raise InputError(
            f"{where}: field `uri` has unsupported scheme {scheme.group(1)!r} "
            "(use a path, file:// or az://)"
        )
    return value


def _too_many(where: str, max_rows: int, what: str = "rows") -> InputError:
    return InputError(f"{where}: more than {max_rows} {what} (the max_rows limit)")


# --- files: directory, glob, az:// ---------------------------------------------------------------


def _add_files(
    spool: InputSpool, files: Iterable[tuple[str, str]], where: str, max_rows: int | None
) -> None:
    """Add videos from (relative name, uri) pairs, sorted by name; id = name without extension."""
    for count, (name, uri) in enumerate(files, 1):
        if max_rows is not None and count > max_rows:
            raise _too_many(where, max_rows, "videos")
        spool.add_file(name, uri)
    for name, uri in spool.files():
        video_id = os.path.splitext(name)[0]
        problem = id_problem(video_id)
        if problem:
            raise InputError(f"{where}: file {_show(name)}: video_id {problem}")
        if spool.add_video(video_id, uri, name) is None:
            first = spool.video(video_id)[2]
            raise InputError(
                f"{where}: {_show(first)} and {_show(name)} both give video_id "
                f"{_show(video_id)}; rename one or use a manifest"
            )


def _read_directory(spool: InputSpool, root: Path, max_rows: int | None) -> None:
    base = os.path.abspath(root)

    def found() -> Iterator[tuple[str, str]]:
        for dirpath, _dirnames, filenames in os.walk(base):  # symlinked folders are not followed
            for name in filenames:
                if is_video_name(name):
                    path = os.path.join(dirpath, name)
                    yield Path(os.path.relpath(path, base)).as_posix(), path

    _add_files(spool, found(), str(root), max_rows)


def _read_glob(spool: InputSpool, pattern: str, max_rows: int | None) -> None:
    parts = Path(pattern).parts
    fixed = next((i for i, p in enumerate(parts) if _GLOB_MAGIC.search(p)), len(parts))
    base = os.path.abspath(Path(*parts[:fixed])) if fixed else os.path.abspath(".")

    def found() -> Iterator[tuple[str, str]]:
        for match in glob.iglob(pattern, recursive=True):
            if is_video_name(match) and not os.path.isdir(match):
                path = os.path.abspath(match)
                yield Path(os.path.relpath(path, base)).as_posix(), path

    _add_files(spool, found(), pattern, max_rows)


def _read_az(
    spool: InputSpool, source: str, store_factory: StoreFactory | None, max_rows: int | None
) -> None:
    # Split by hand: blob names may contain '?' and '#', which urlparse would cut off.
    container, _, prefix = source.removeprefix("az://").partition("/")
    if not container:
        raise InputError(f"{source}: no container (use az://container/prefix)")
    if store_factory is None:
        from ..storage.open import open_store

        store_factory = open_store
    store = store_factory(f"az://{container}")
    prefix = prefix.strip("/")
    folder = f"{prefix}/" if prefix else ""
    try:
        keys = (k for k in store.iter_list(folder) if k.startswith(folder) and is_video_name(k))
        _add_files(spool, ((k[len(folder) :], f"az://{container}/{k}") for k in keys), source,
                   max_rows)  # fmt: skip
        if not len(spool) and prefix and is_video_name(prefix) and store.exists(prefix):
            folder = prefix[: prefix.rfind("/") + 1]  # one blob
            _add_files(spool, [(prefix[len(folder) :], f"az://{container}/{prefix}")], source, None)
    except ValueError as exc:  # a prefix the store refuses (e.g. '..' components)
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{source}: {exc}") from None


# --- manifests -----------------------------------------------------------------------------------


def _read_manifest(spool: InputSpool, path: Path, max_rows: int | None) -> None:
    base = os.path.dirname(os.path.abspath(path))
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(spool, path, base, max_rows)
    rows = _csv_rows(path, max_rows) if suffix == ".csv" else _parquet_rows(path, max_rows)
    _group_rows(spool, rows, base)


def _read_jsonl(spool: InputSpool, path: Path, base: str, max_rows: int | None) -> None:
    batch: list[tuple[str, str, str, list[Question]]] = []

    def flush() -> None:
        repeated = spool.add_videos(batch)
        batch.clear()
        if repeated is not None:
            video_id, line, first = repeated
            raise InputError(
                f"{path}, line {line}: duplicate video_id {_show(video_id)} (first on line {first})"
            )

    count = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                record = _jsonl_record(raw, number, f"{path}, line {number}", base)
            except InputError:
                flush()  # an earlier line's error is the one to report
                raise
            if record is None:
                continue
            count += 1
            if max_rows is not None and count > max_rows:
                flush()
                raise _too_many(str(path), max_rows)
            batch.append(record)
            if len(batch) >= 4096:
                flush()
    flush()


def _jsonl_record(
    raw: bytes, number: int, where: str, base: str
) -> tuple[str, str, str, list[Question]] | None:
    """``(video_id, uri, line number, questions)`` of one manifest line, None for a blank one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not valid UTF-8 ({exc.reason})") from None
    if number == 1:
        line = line.removeprefix("\ufeff")
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    video_id = _check_id(record.get("video_id"), where, "video_id")
    uri = _resolve_uri(record.get("uri"), base, where)
    questions = _jsonl_questions(record.get("questions"), video_id, where)
    return video_id, uri, str(number), questions


def _jsonl_questions(value: Any, video_id: str, where: str) -> list[Question]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"{where}: field `questions` must be a list")
    questions: list[Question] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        name = f"questions[{i}]"
        if isinstance(entry, str):
            question = _question(entry, None, f"{video_id}#{i}", where, name, name)
        elif isinstance(entry, dict):
            text, qid = entry.get("question"), entry.get("question_id")
            names = (f"{name}.question", f"{name}.question_id")
            question = _question(text, qid, f"{video_id}#{i}", where, *names)
        else:
            raise InputError(f"{where}: field `{name}` must be a string or an object")
        if question.question_id in seen:
            raise InputError(f"{where}: duplicate question_id {_show(question.question_id)}")
        seen.add(question.question_id)
        questions.append(question)
    return questions


def _question(
    text: Any, qid: Any, default_id: str, where: str, text_field: str, id_field: str
) -> Question:
    problem = question_problem(text)
    if problem:
        raise InputError(f"{where}: field `{text_field}` {problem}")
    question_id = default_id if qid is None or qid == "" else _check_id(qid, where, id_field)
    return Question(question_id, text)


Row = tuple[str, dict[str, Any]]  # (where, {column: value})


def _missing_columns(path: Path, columns: Iterable[str]) -> None:
    missing = [c for c in ("video_id", "uri") if c not in columns]
    if missing:
        names = ", ".join(f"`{c}`" for c in missing)
        header = ", ".join(columns) or "nothing"
        raise InputError(f"{path}: missing column(s) {names} (found: {header})")


def _csv_rows(path: Path, max_rows: int | None) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}: empty file (no header row)")
            header = [name.strip() for name in header]
            _missing_columns(path, header)
            count = 0
            while True:
                start = reader.line_num + 1  # a quoted field may span lines: name the first
                values = next(reader, None)
                if values is None:
                    return
                if not values:
                    continue  # blank line
                count += 1
                if max_rows is not None and count > max_rows:
                    raise _too_many(str(path), max_rows)
                row = {
                    name: values[i] if i < len(values) else None for i, name in enumerate(header)
                }
                yield f"{path}, line {start}", row
        except csv.Error as exc:
            raise InputError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not valid UTF-8 ({exc.reason})") from None


def _parquet_rows(path: Path, max_rows: int | None) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    _missing_columns(path, names)
    if max_rows is not None and parquet.metadata.num_rows > max_rows:
        raise _too_many(str(path), max_rows)
    columns = [c for c in ("video_id", "uri", "question", "question_id") if c in names]
    number = 0
    for batch in parquet.iter_batches(columns=columns, batch_size=65_536):
        data = batch.to_pydict()
        for i in range(batch.num_rows):
            number += 1
            yield f"{path}, row {number}", {c: data[c][i] for c in columns}


def _group_rows(spool: InputSpool, rows: Iterable[Row], base: str) -> None:
    """One video per video_id; each row with a ``question`` adds one question to its video.

    Without a ``question`` column a repeated video_id is an error; with one, rows of a video may
    be anywhere in the file but must agree on its uri. An empty (or null) ``question`` cell lists
    the video without adding a question; a cell of only whitespace is an error.
    """
    last: tuple[str, int, str, str] | None = None  # (video_id, seq, uri, first where)
    asked = 0  # questions of the last video
    for where, row in rows:
        video_id = _check_id(row.get("video_id"), where, "video_id")
        uri = _resolve_uri(row.get("uri"), base, where)
        grouped = "question" in row
        repeated = last is not None and last[0] == video_id
        if not repeated:
            seq = spool.add_video(video_id, uri, where)
            if seq is None:  # listed earlier, not just before
                seq, first_uri, first = spool.video(video_id)
                last, asked, repeated = (
                    (video_id, seq, first_uri, first),
                    spool.question_count(seq),
                    True,
                )
            else:
                last, asked = (video_id, seq, uri, where), 0
        assert last is not None
        if repeated:
            if not grouped:
                raise InputError(
                    f"{where}: duplicate video_id {_show(video_id)} (first at {last[3]})"
                )
            if last[2] != uri:
                raise InputError(
                    f"{where}: video_id {_show(video_id)} has uri {_show(uri)} here but "
                    f"{_show(last[2])} at {last[3]}"
                )
        text = row.get("question")
        if not grouped or text is None or text == "":
            continue
        question = _question(
            text, row.get("question_id"), f"{video_id}#{asked}", where, "question", "question_id"
        )
        if not spool.add_question(last[1], asked, question):
            raise InputError(
                f"{where}: duplicate question_id {_show(question.question_id)} "
                f"for video_id {_show(video_id)}"
            )
        asked += 1
