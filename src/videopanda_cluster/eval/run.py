"""``eval run``: answer a benchmark's questions with a QA job and write the run's files (layout.py).

Every video with a file becomes one manifest line holding all its questions (a consistency item
asks both paraphrases, two independent generations). The job id is a digest of the benchmark
files, the manifest and the result-affecting settings, so a rerun with the same arguments resumes
(or simply finds) the same job through its ledger and rewrites identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jobs.config import build_config, hashed_settings
from ..jobs.ledger import check_job_id
from ..storage.base import Store
from .benchmarks import Benchmark, BenchmarkError, EvalItem, load_benchmark
from .config import EvalConfig
from .layout import SUBSETS, json_lines, predictions_key, run_key
from .predictions import (
    generations,
    prediction_record,
    predictions_text,
    read_reference_predictions,
)

RESERVED_SETTINGS = frozenset({"kind", "inputs", "output", "job_id"})  # set by run_eval itself
NO_RESULT = "no_result"  # reason code of an item the job returned no row for


def question_ids(item: EvalItem) -> list[str]:
    """The manifest question ids of an item (unique per video across all subsets)."""
    base = f"{item.subset}/{item.id}"
    return [base] if generations(item) == 1 else [f"{base}#{n}" for n in (1, 2)]


def build_manifest(bench: Benchmark) -> str:
    """The job manifest (JSONL): one line per video with a file, its questions in file order."""
    videos: dict[str, dict[str, Any]] = {}
    for item in bench.items:
        if item.uri is None:
            continue
        line = videos.setdefault(
            item.video_name, {"video_id": item.video_name, "uri": item.uri, "questions": []}
        )
        texts = [item.question] if generations(item) == 1 else [item.question, item.question2]
        line["questions"] += [
            {"question_id": qid, "question": text}
            for qid, text in zip(question_ids(item), texts, strict=True)
        ]
    return "".join(
        json.dumps(v, ensure_ascii=False, sort_keys=True) + "\n" for v in videos.values()
    )


def run_eval(
    benchmark: str,
    data_root: str | Path,
    output: str,
    run_id: str | None = None,
    **job_settings: Any,
) -> dict[str, Any]:
    """Run (or resume) ``benchmark`` from ``data_root`` into the store ``output``; returns run.json.

    ``job_settings`` are JobConfig fields (checkpoint, max_new_tokens, workers, ...); those not
    given take :class:`EvalConfig`'s defaults, then JobConfig's.
    """
    from ..cluster.driver import run_job
    from ..storage.open import open_store

    reserved = sorted(RESERVED_SETTINGS & set(job_settings))
    if reserved:
        raise ValueError(f"run_eval sets {', '.join(reserved)} itself; do not pass them")
    bench = load_benchmark(benchmark, data_root)
    manifest = build_manifest(bench)
    if not manifest:
        raise BenchmarkError(_nothing_found(bench))
    settings = {**EvalConfig().job_settings(job_settings), "kind": "qa", "output": output}
    digest = _digest(bench, manifest, settings)
    run_id = _check_run_id(run_id or f"{benchmark}-{digest[:12]}")
    job_id = f"eval-{benchmark}-{digest[:16]}"
    inputs = _write_manifest(job_id, manifest)
    summary = run_job(build_config({}, {**settings, "inputs": str(inputs), "job_id": job_id}))
    store = open_store(output)
    rows = read_result_rows(store, job_id)
    # the rows' model has the backend's fingerprint even when this call ran no shard
    model = next((r["model"] for r in rows if r.get("model")), summary["model"])
    return write_run(store, bench, run_id, job_id, model, rows)


def _nothing_found(bench: Benchmark) -> str:
    tried = bench.missing[0]["tried"] if bench.missing else []
    return (
        f"{bench.name}: no video found under {bench.data_root} for any of its "
        f"{len(bench.items)} questions (first lookup tried: {', '.join(tried)})"
    )


def _check_run_id(run_id: str) -> str:
    try:
        return check_job_id(run_id)
    except ValueError:
        raise ValueError(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        ) from None


def _digest(bench: Benchmark, manifest: str, settings: dict[str, Any]) -> str:
    """sha256 of the benchmark files, the manifest and the result-affecting settings."""
    cfg = build_config({}, {**settings, "inputs": "manifest.jsonl"})  # validates the settings
    hashed = hashed_settings(cfg, exclude=frozenset({"inputs"}))
    digest = hashlib.sha256(bench.name.encode())
    for path in bench.files:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(hashlib.sha256(manifest.encode()).digest())
    digest.update(json.dumps(hashed, sort_keys=True).encode())
    return digest.hexdigest()


def _write_manifest(job_id: str, manifest: str) -> Path:
    """Write the manifest at a path fixed by the job id (the path is part of the job's config
    hash, so a rerun must find the same one); atomic, as concurrent reruns may race."""
    folder = Path(tempfile.gettempdir()) / "videopanda-eval" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.jsonl"
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".partial")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(manifest)
    os.replace(tmp, path)
    return path


def read_result_rows(store: Store, job_id: str) -> list[dict[str, Any]]:
    """Every result row of a job (:func:`~..cluster.results.read_results`), in shard order."""
    from ..cluster.results import read_results

    return read_results(store, job_id).to_pylist()


# --- the run's files -----------------------------------------------------------------------------


def item_record(item: EvalItem, rows: list[dict | None]) -> tuple[dict[str, Any], list[str]]:
    """The items.jsonl line of ``item`` given its result rows (None: no row), and its answers
    (empty unless the status is "ok": a failed decode is never a prediction). ``backend`` and
    ``fingerprint`` are those of the backend that answered (or failed) it."""
    record = {
        "id": item.id,
        "subset": item.subset,
        "video_name": item.video_name,
        "video_id": item.video_name if item.uri else None,
        "uri": item.uri,
        "question": item.question,
        "question2": item.question2,
        "answer": item.answer,
        "question_type": item.question_type,
        "status": "ok",
        "error": None,
        "message": None,
        "sampled_indices": None,
        "flipped": None,
        "backend": None,
        "fingerprint": None,
    }
    model = next((r["model"] for r in rows if r is not None and r.get("model")), None) or {}
    record.update(backend=model.get("backend"), fingerprint=model.get("fingerprint"))
    if item.uri is None:
        record.update(status="missing", message="no video file found for this item")
        return record, []
    returned = [r for r in rows if r is not None]
    if len(returned) < len(rows):
        record.update(status="error", error=NO_RESULT, message="the job returned no result row")
        return record, []
    failed = [r for r in returned if r["status"] != "ok"]
    if failed:
        record.update(status="error", error=failed[0]["error"], message=failed[0]["message"])
        return record, []
    provenance = returned[0].get("provenance") or {}
    record.update(
        sampled_indices=provenance.get("sampled_indices"), flipped=provenance.get("flipped")
    )
    return record, [r["answer"] for r in returned]


def write_run(
    store: Store,
    bench: Benchmark,
    run_id: str,
    job_id: str,
    model: dict[str, Any],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write items.jsonl, predictions/<subset>.jsonl, missing.json and, last, run.json."""
    by_question = {(r["video_id"], r["question_id"]): r for r in rows}
    records: list[dict[str, Any]] = []
    predictions: dict[str, list[dict[str, str]]] = {s: [] for s in SUBSETS[bench.name]}
    for item in bench.items:
        item_rows = [by_question.get((item.video_name, q)) for q in question_ids(item)]
        record, answers = item_record(item, item_rows)
        records.append(record)
        if answers:
            predictions[item.subset].append(prediction_record(item, answers))
    _put_json_lines(store, run_key(run_id, "items.jsonl"), records)
    for subset, preds in predictions.items():
        store.put(predictions_key(run_id, subset), predictions_text(preds).encode("utf-8"))
    _put_json(store, run_key(run_id, "missing.json"), bench.missing)
    run = {
        "benchmark": bench.name,
        "run_id": run_id,
        "job_id": job_id,
        "data_root": str(bench.data_root),
        "model": model,
        "generation": next((r["generation"] for r in rows if r.get("generation")), None),
        "counts": {
            "items": len(records),
            "answered": sum(r["status"] == "ok" for r in records),
            "missing": sum(r["status"] == "missing" for r in records),
            "failed": sum(r["status"] == "error" for r in records),
        },
        "subsets": list(SUBSETS[bench.name]),
    }
    _put_json(store, run_key(run_id, "run.json"), run)
    return run


def _put_json(store: Store, key: str, value: Any) -> None:
    store.put(key, json.dumps(value, ensure_ascii=False, indent=2).encode("utf-8"))


def _put_json_lines(store: Store, key: str, values: list[dict[str, Any]]) -> None:
    # ASCII only: no raw U+2028 or U+0085, which readers splitting with str.splitlines cut at
    text = "".join(json.dumps(v) + "\n" for v in values)
    store.put(key, text.encode("utf-8"))


# --- reading a run back --------------------------------------------------------------------------


@dataclass
class EvalRun:
    run: dict[str, Any]
    items: list[dict[str, Any]]
    predictions: dict[str, list[dict]]  # subset -> reference records, in file order
    missing: list[dict[str, Any]]


def load_run(store: Store, run_id: str) -> EvalRun:
    """Read the files ``run_eval`` wrote for ``run_id`` (KeyError if the run is incomplete)."""
    run = json.loads(store.get(run_key(run_id, "run.json")))
    predictions = {
        subset: read_reference_predictions(
            store.get(predictions_key(run_id, subset)).decode("utf-8"), subset
        )
        for subset in run["subsets"]
    }
    return EvalRun(
        run=run,
        items=json_lines(store.get(run_key(run_id, "items.jsonl"))),
        predictions=predictions,
        missing=json.loads(store.get(run_key(run_id, "missing.json"))),
    )
