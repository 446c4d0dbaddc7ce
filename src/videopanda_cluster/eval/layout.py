"""Where an evaluation run keeps its files, and what each file holds (the contract between
``eval run``, ``eval judge`` and ``eval report``).

Everything lives in a :class:`~videopanda_cluster.storage.base.Store` (local directory or Azure
Blob) under ``eval/<run_id>/``:

``run.json``
    {"benchmark", "run_id", "job_id", "data_root", "model": {...}, "generation": {...},
    "counts": {"items", "answered", "missing", "failed"}, "subsets": [...]}
``items.jsonl``
    One line per benchmark item (answered, failed or missing): {"id", "subset", "video_name",
    "video_id", "uri" (None if missing), "question", "question2" (consistency only, else None),
    "answer", "question_type" (None if the benchmark has none), "status" ("ok" | "error" |
    "missing"), "error" (reason code or None), "message", "sampled_indices" (list or None)}.
``predictions/<subset>.jsonl``
    The reference prediction format, one line per *answered* item, ordered as the benchmark file:
    QA subsets: {"id", "question", "answer", "pred"}; Video-ChatGPT generic/temporal:
    {"id", "video_name", "Q", "A", "pred"}; consistency: {"id", "video_name", "Q1", "Q2", "A",
    "pred1", "pred2"}. Ids are strings.
``missing.json``
    [{"id", "subset", "video_name", "tried": [paths]}] for items whose video was not found.
``verdicts.jsonl``
    One line per (item, dimension) judged: {"id", "subset", "dimension", "status" ("ok" |
    "failed"), "pred" ("yes" | "no" | None), "score" (int 0-5 or None), "raw" (last reply text),
    "error" (None or why it failed), "attempts", "cached" (bool), "judge_model" (as asked),
    "served_model" (the completion's ``model``, None if failed), "temperature", "top_p",
    "max_tokens", "prompt_version", "prompt_hash"}.
``judge.json``
    Aggregates per dimension: {"dimensions": {dim: {"judged", "failed", "yes", "no",
    "accuracy" (None for score-only dimensions), "mean_score"}}, "judge_model",
    "prompt_hashes": {dim: hash}, "temperature", "top_p", "max_tokens", "served_models",
    "http_calls"}.
``report.json`` / ``report.md`` / ``report.png`` / ``report.html``
    The report (``eval report``).

The judge's verdict cache is shared by all runs of a store: ``judge-cache/<sha256>.json``.
"""

from __future__ import annotations

import json
from typing import Any

QA_BENCHMARKS = ("msvd-qa", "msrvtt-qa", "tgif-qa", "activitynet-qa")
BENCHMARKS = (*QA_BENCHMARKS, "vcgbench")

# subset name -> judge dimensions scored on it
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "qa": ("qa",),  # yes/no + score 0-5
    "generic": ("correctness", "detail", "context"),  # score only
    "temporal": ("temporal",),
    "consistency": ("consistency",),
}
SUBSETS: dict[str, tuple[str, ...]] = {
    **{b: ("qa",) for b in QA_BENCHMARKS},
    "vcgbench": ("generic", "temporal", "consistency"),
}


def run_prefix(run_id: str) -> str:
    return f"eval/{run_id}"


def run_key(run_id: str, name: str) -> str:
    """``eval/<run_id>/<name>``; ``name`` e.g. ``items.jsonl`` or ``predictions/qa.jsonl``."""
    return f"{run_prefix(run_id)}/{name}"


def predictions_key(run_id: str, subset: str) -> str:
    return run_key(run_id, f"predictions/{subset}.jsonl")


def comparison_key(name: str, file: str) -> str:
    """``eval-compare/<name>/<file>``: a side-by-side report of several runs (``compare.py``)."""
    return f"eval-compare/{name}/{file}"


JUDGE_CACHE_PREFIX = "judge-cache"


def json_lines(data: bytes, name: str = "JSONL") -> list[dict[str, Any]]:
    """The records of a JSONL object, split at "\\n" only (answers may hold U+2028 and the like,
    which ``str.splitlines`` would cut at); a bad line raises ValueError naming it."""
    rows = []
    for number, line in enumerate(data.decode("utf-8").split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name} line {number}: not JSON ({exc.msg})") from None
    return rows
