"""Job inputs: a video directory, a glob, a manifest (.jsonl/.csv/.parquet) or an ``az://`` prefix,
read into validated :class:`VideoItem` records.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..storage.base import Store, safe_key_component

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".flv", ".wmv",
     ".3gp", ".ts"}
)  # fmt: skip
MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
MAX_ID_CHARS = 1024
DEFAULT_MAX_ROWS = 10_000_000
KEPT_SCHEMES = ("az", "file")  # uris with these schemes are kept as they are

_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # Unicode Cc, plus surrogates
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_MAGIC = re.compile(r"[*?[]")

StoreFactory = Callable[[str], Store]


class InputError(ValueError):
    """Unusable job input; the message names the file, the line or row, and the field."""


@dataclass(frozen=True)
class Question:
    question_id: str
    text: str


@dataclass
class VideoItem:
    video_id: str
    uri: str
    questions: list[Question] = field(default_factory=list)


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
    max_rows: int = DEFAULT_MAX_ROWS,
    store_factory: StoreFactory | None = None,
) -> list[VideoItem]:
    """Read a job's videos from ``source``, in a stable order.

    ``source`` is a directory (video files, recursive), a glob, a video file, a manifest
    (``.jsonl``, ``.csv``, ``.parquet``) or ``az://container/prefix``. Videos without questions
    get ``default_questions`` (ids ``f"{video_id}#{i}"``). More than ``max_rows`` manifest rows
    (or listed videos) is an error, as is finding no video at all. ``store_factory`` opens an
    ``az://container`` store (default: :func:`videopanda_cluster.storage.open.open_store`).
    """
    defaults = _check_default_questions(default_questions or [])
    if "\0" in source:
        raise InputError(f"{source!r}: the input source contains a NUL byte")
    if source.startswith("az://"):
        items = _read_az(source, store_factory, max_rows)
    else:
        path = Path(source.removeprefix("file://"))
        suffix = path.suffix.lower()
        if path.is_dir():
            items = _read_directory(path, max_rows)
        elif path.is_file() and suffix in MANIFEST_SUFFIXES:
            items = _read_manifest(path, max_rows)
        elif path.is_file() and is_video_name(path.name):
            items = _items_from_files([(path.name, os.path.abspath(path))], source)
        elif _GLOB_MAGIC.search(source):
            items = _read_glob(source, max_rows)
        elif suffix in MANIFEST_SUFFIXES or not path.exists():
            raise InputError(f"{source}: no such file or directory")
        else:
            raise InputError(
                f"{source}: not a directory, glob, video file, manifest "
                f"({', '.join(MANIFEST_SUFFIXES)}) or az:// prefix"
            )
    if not items:
        raise InputError(f"{source}: no videos found")
    for item in items:
        if not item.questions:
            item.questions = [Question(f"{item.video_id}#{i}", t) for i, t in enumerate(defaults)]
    return items


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


def _items_from_files(files: Iterable[tuple[str, str]], where: str) -> list[VideoItem]:
    """Items from (relative name, uri) pairs, sorted by name; id = name without extension."""
    items: dict[str, VideoItem] = {}
    names: dict[str, str] = {}
    for name, uri in sorted(files):
        video_id = os.path.splitext(name)[0]
        problem = id_problem(video_id)
        if problem:
            raise InputError(f"{where}: file {_show(name)}: video_id {problem}")
        if video_id in items:
            raise InputError(
                f"{where}: {_show(names[video_id])} and {_show(name)} both give video_id "
                f"{_show(video_id)}; rename one or use a manifest"
            )
        items[video_id] = VideoItem(video_id, uri)
        names[video_id] = name
    return list(items.values())


def _read_directory(root: Path, max_rows: int) -> list[VideoItem]:
    base = os.path.abspath(root)
    found: list[tuple[str, str]] = []
    for dirpath, _dirnames, filenames in os.walk(base):  # symlinked folders are not followed
        for name in filenames:
            if is_video_name(name):
                path = os.path.join(dirpath, name)
                found.append((Path(os.path.relpath(path, base)).as_posix(), path))
                if len(found) > max_rows:
                    raise _too_many(str(root), max_rows, "videos")
    return _items_from_files(found, str(root))


def _read_glob(pattern: str, max_rows: int) -> list[VideoItem]:
    parts = Path(pattern).parts
    fixed = next((i for i, p in enumerate(parts) if _GLOB_MAGIC.search(p)), len(parts))
    base = os.path.abspath(Path(*parts[:fixed])) if fixed else os.path.abspath(".")
    found: list[tuple[str, str]] = []
    for match in glob.iglob(pattern, recursive=True):
        if is_video_name(match) and not os.path.isdir(match):
            path = os.path.abspath(match)
            found.append((Path(os.path.relpath(path, base)).as_posix(), path))
            if len(found) > max_rows:
                raise _too_many(pattern, max_rows, "videos")
    return _items_from_files(found, pattern)


def _read_az(source: str, store_factory: StoreFactory | None, max_rows: int) -> list[VideoItem]:
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
        keys = [k for k in store.list(folder) if k.startswith(folder) and is_video_name(k)]
        if not keys and prefix and is_video_name(prefix) and store.exists(prefix):  # one blob
            keys, folder = [prefix], prefix[: prefix.rfind("/") + 1]
    except ValueError as exc:  # a prefix the store refuses (e.g. '..' components)
        raise InputError(f"{source}: {exc}") from None
    if len(keys) > max_rows:
        raise _too_many(source, max_rows, "videos")
    return _items_from_files(((k[len(folder) :], f"az://{container}/{k}") for k in keys), source)


# --- manifests -----------------------------------------------------------------------------------


def _read_manifest(path: Path, max_rows: int) -> list[VideoItem]:
    base = os.path.dirname(os.path.abspath(path))
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, base, max_rows)
    rows = _csv_rows(path, max_rows) if suffix == ".csv" else _parquet_rows(path, max_rows)
    return _group_rows(rows, base)


def _read_jsonl(path: Path, base: str, max_rows: int) -> list[VideoItem]:
    items: dict[str, VideoItem] = {}
    first_line: dict[str, int] = {}
    count = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{where}: not valid UTF-8 ({exc.reason})") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            count += 1
            if count > max_rows:
                raise _too_many(str(path), max_rows)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"{where}: malformed JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            video_id = _check_id(record.get("video_id"), where, "video_id")
            if video_id in items:
                raise InputError(
                    f"{where}: duplicate video_id {_show(video_id)} "
                    f"(first on line {first_line[video_id]})"
                )
            uri = _resolve_uri(record.get("uri"), base, where)
            questions = _jsonl_questions(record.get("questions"), video_id, where)
            items[video_id] = VideoItem(video_id, uri, questions)
            first_line[video_id] = number
    return list(items.values())


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


def _csv_rows(path: Path, max_rows: int) -> Iterator[Row]:
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
                if count > max_rows:
                    raise _too_many(str(path), max_rows)
                row = {
                    name: values[i] if i < len(values) else None for i, name in enumerate(header)
                }
                yield f"{path}, line {start}", row
        except csv.Error as exc:
            raise InputError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not valid UTF-8 ({exc.reason})") from None


def _parquet_rows(path: Path, max_rows: int) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    _missing_columns(path, names)
    if parquet.metadata.num_rows > max_rows:
        raise _too_many(str(path), max_rows)
    columns = [c for c in ("video_id", "uri", "question", "question_id") if c in names]
    number = 0
    for batch in parquet.iter_batches(columns=columns, batch_size=65_536):
        data = batch.to_pydict()
        for i in range(batch.num_rows):
            number += 1
            yield f"{path}, row {number}", {c: data[c][i] for c in columns}


def _group_rows(rows: Iterable[Row], base: str) -> list[VideoItem]:
    """One item per video_id; each row with a ``question`` adds one question to its video.

    Without a ``question`` column a repeated video_id is an error; with one, rows of a video may
    be anywhere in the file but must agree on its uri. An empty (or null) ``question`` cell lists
    the video without adding a question; a cell of only whitespace is an error.
    """
    items: dict[str, VideoItem] = {}
    first: dict[str, str] = {}
    question_ids: dict[str, set[str]] = {}
    for where, row in rows:
        video_id = _check_id(row.get("video_id"), where, "video_id")
        uri = _resolve_uri(row.get("uri"), base, where)
        grouped = "question" in row
        item = items.get(video_id)
        if item is None:
            item = items[video_id] = VideoItem(video_id, uri)
            first[video_id], question_ids[video_id] = where, set()
        elif not grouped:
            raise InputError(
                f"{where}: duplicate video_id {_show(video_id)} (first at {first[video_id]})"
            )
        elif item.uri != uri:
            raise InputError(
                f"{where}: video_id {_show(video_id)} has uri {_show(uri)} here but "
                f"{_show(item.uri)} at {first[video_id]}"
            )
        text = row.get("question")
        if not grouped or text is None or text == "":
            continue
        default_id = f"{video_id}#{len(item.questions)}"
        question = _question(
            text, row.get("question_id"), default_id, where, "question", "question_id"
        )
        if question.question_id in question_ids[video_id]:
            raise InputError(
                f"{where}: duplicate question_id {_show(question.question_id)} "
                f"for video_id {_show(video_id)}"
            )
        question_ids[video_id].add(question.question_id)
        item.questions.append(question)
    return list(items.values())
