"""Benchmark adapters: read the reference data layouts (spec §6) into :class:`EvalItem` records.

QA benchmarks (``<DS>_Zero_Shot_QA/``) pair ``test_q.json`` and ``test_a.json`` by index; the
Video-ChatGPT benchmark (``vcgbench``) has one JSON list per subset under ``Benchmarking_QA/``.
Videos are looked up as the reference does (``{video_dir}/{prefix}{video_name}{ext}``, extensions
in :data:`VIDEO_EXTENSIONS` order), but an item without a video is reported in
:attr:`Benchmark.missing` instead of being dropped silently.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jobs.inputs import id_problem
from .layout import BENCHMARKS, QA_BENCHMARKS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")  # the reference's lookup order


@dataclass(frozen=True)
class QALayout:
    folder: str  # under the data root
    video_dir: str  # under ``folder``
    prefix: str = ""  # file name prefix of the videos


QA_LAYOUTS: dict[str, QALayout] = {
    "msvd-qa": QALayout("MSVD_Zero_Shot_QA", "videos"),
    "msrvtt-qa": QALayout("MSRVTT_Zero_Shot_QA", "videos/all"),
    "tgif-qa": QALayout("TGIF_Zero_Shot_QA", "mp4"),
    "activitynet-qa": QALayout("Activitynet_Zero_Shot_QA", "all_test", "v_"),
}
VCG_VIDEO_DIR = "Test_Videos"
VCG_QA_DIR = "Benchmarking_QA"
VCG_FILES = {
    "generic": "generic_qa.json",
    "temporal": "temporal_qa.json",
    "consistency": "consistency_qa.json",
}


class BenchmarkError(ValueError):
    """Unusable benchmark data; the message names the file, the item index and the field."""


@dataclass
class EvalItem:
    """One benchmark question (a consistency item holds two paraphrases of it)."""

    id: str
    subset: str
    video_name: str
    uri: str | None  # absolute path of the video, None if no file was found
    question: str
    answer: str
    question2: str | None = None
    question_type: str | None = None


@dataclass
class Benchmark:
    name: str
    data_root: Path
    items: list[EvalItem]  # in benchmark-file order (vcgbench: generic, temporal, consistency)
    missing: list[dict]  # {"id", "subset", "video_name", "tried": [paths]} per item without video
    files: list[Path] = field(default_factory=list)  # the question/answer files read


def load_benchmark(name: str, data_root: str | Path) -> Benchmark:
    """Read benchmark ``name`` (one of :data:`~.layout.BENCHMARKS`) from its reference layout."""
    root = Path(os.path.abspath(data_root))
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r} (choose from {', '.join(BENCHMARKS)})")
    if not root.is_dir():
        raise BenchmarkError(f"{root}: the benchmark data root is not a directory")
    if name in QA_BENCHMARKS:
        items, files, video_dir, prefix = _qa_items(QA_LAYOUTS[name], root)
    else:
        items, files, video_dir, prefix = _vcg_items(root)
    missing = _locate_videos(items, video_dir, prefix)
    return Benchmark(name, root, items, missing, files)


def find_video(video_dir: Path, stem: str) -> tuple[Path | None, list[str]]:
    """The first ``{video_dir}/{stem}{ext}`` that is a file, and every path tried until then."""
    tried = []
    for ext in VIDEO_EXTENSIONS:
        path = video_dir / f"{stem}{ext}"
        tried.append(str(path))
        if path.is_file():
            return path, tried
    return None, tried


def _locate_videos(items: list[EvalItem], video_dir: Path, prefix: str) -> list[dict]:
    """Set each item's ``uri``; return the missing entries."""
    found: dict[str, tuple[Path | None, list[str]]] = {}
    missing = []
    for item in items:
        if item.video_name not in found:
            found[item.video_name] = find_video(video_dir, prefix + item.video_name)
        path, tried = found[item.video_name]
        if path is None:
            missing.append(
                {
                    "id": item.id,
                    "subset": item.subset,
                    "video_name": item.video_name,
                    "tried": tried,
                }
            )
        else:
            item.uri = str(path)
    return missing


# --- layouts -------------------------------------------------------------------------------------


def _qa_items(layout: QALayout, root: Path) -> tuple[list[EvalItem], list[Path], Path, str]:
    folder = root / layout.folder
    q_path, a_path = folder / "test_q.json", folder / "test_a.json"
    questions, answers = _read_list(q_path), _read_list(a_path)
    if len(questions) != len(answers):
        raise BenchmarkError(
            f"{q_path} has {len(questions)} questions but {a_path} has {len(answers)} answers "
            "(the two lists are aligned by index)"
        )
    items = []
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        q_where, a_where = f"{q_path}, item {i}", f"{a_path}, item {i}"
        items.append(
            EvalItem(
                id=_id(q, "question_id", q_where),
                subset="qa",
                video_name=_video_name(q, q_where),
                uri=None,
                question=_text(q, "question", q_where),
                answer=_answer(a, "answer", a_where),
                question_type=_question_type(q, a),
            )
        )
    _check_unique(items, q_path, "question_id")
    return items, [q_path, a_path], folder / layout.video_dir, layout.prefix


def _vcg_items(root: Path) -> tuple[list[EvalItem], list[Path], Path, str]:
    items: list[EvalItem] = []
    files = []
    for subset, name in VCG_FILES.items():
        path = root / VCG_QA_DIR / name
        records = _read_list(path)
        seen: Counter[str] = Counter()
        for i, record in enumerate(records):
            where = f"{path}, item {i}"
            video = _video_name(record, where)
            if subset == "consistency":
                question, question2 = _text(record, "Q1", where), _text(record, "Q2", where)
            else:
                question, question2 = _text(record, "Q", where), None
            # the reference judge renames items {video_name}_{k}, k = earlier items of that video
            # (unique: k has no "_", so the last "_" splits an id back into its name and k)
            item_id = f"{video}_{seen[video]}"
            seen[video] += 1
            answer = _answer(record, "A", where)
            items.append(EvalItem(item_id, subset, video, None, question, answer, question2))
        files.append(path)
    return items, files, root / VCG_VIDEO_DIR, ""


# --- reading and checking ------------------------------------------------------------------------


def _read_list(path: Path) -> list[dict[str, Any]]:
    """A JSON list of objects; BenchmarkError (naming the file and item) for anything else."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: file not found (see the reference layout)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"{path}: cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(
            f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, list):
        raise BenchmarkError(f"{path}: expected a JSON list, got {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise BenchmarkError(
                f"{path}, item {i}: expected a JSON object, got {type(record).__name__}"
            )
    return data


def _get(record: dict[str, Any], name: str, where: str) -> Any:
    if record.get(name) is None:
        raise BenchmarkError(f"{where}: field `{name}` is missing")
    return record[name]


def _scalar(value: Any, where: str, name: str) -> str:
    """A string, or an integer/float written as one (JSON ids and answers may be numbers)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BenchmarkError(
            f"{where}: field `{name}` must be a string, got {type(value).__name__}"
        )
    return value


def _id(record: dict[str, Any], name: str, where: str) -> str:
    value = _scalar(_get(record, name, where), where, name)
    problem = id_problem(value)
    if problem:
        raise BenchmarkError(f"{where}: field `{name}` {problem}")
    return value


def _video_name(record: dict[str, Any], where: str) -> str:
    name = _id(record, "video_name", where)
    if "/" in name or "\\" in name or name in (".", ".."):
        raise BenchmarkError(f"{where}: field `video_name` must be a file name, got {name!r}")
    return name


def _text(record: dict[str, Any], name: str, where: str) -> str:
    value = _scalar(_get(record, name, where), where, name)
    if not value.strip():
        raise BenchmarkError(f"{where}: field `{name}` is empty")
    return _valid_text(value, where, name)


def _answer(record: dict[str, Any], name: str, where: str) -> str:
    if name not in record:
        raise BenchmarkError(f"{where}: field `{name}` is missing")
    return _valid_text(_scalar(record[name], where, name), where, name)


def _valid_text(value: str, where: str, name: str) -> str:
    if "\0" in value:
        raise BenchmarkError(f"{where}: field `{name}` contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BenchmarkError(f"{where}: field `{name}` is not valid Unicode") from None
    return value


def _question_type(question: dict[str, Any], answer: dict[str, Any]) -> str | None:
    """test_a's ``type``, else test_q's ``question_type`` or ``type``; None if none is given."""
    for value in (answer.get("type"), question.get("question_type"), question.get("type")):
        if value is not None:
            return str(value)
    return None


def _check_unique(items: list[EvalItem], path: Path, name: str) -> None:
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in first:
            raise BenchmarkError(
                f"{path}, item {i}: duplicate {name} {item.id!r} (first at item {first[item.id]})"
            )
        first[item.id] = i
