"""Judge predictions made elsewhere: a reference-format prediction file becomes a run in the store
(``eval/import-<hash>/``), so ``eval judge`` and ``eval report`` treat it like one of ours."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..storage.base import Store
from .layout import predictions_key, run_key
from .predictions import predictions_text, read_reference_predictions

QUESTION_FIELDS = {"qa": "question", "generic": "Q", "temporal": "Q", "consistency": "Q1"}


def import_predictions(
    store: Store, path: Path, subset: str = "qa", benchmark: str | None = None
) -> str:
    """Validate ``path`` as the reference judge reads it and store it as a run; its run id."""
    text = path.read_text(encoding="utf-8")
    records = read_reference_predictions(text, subset)
    if not records:
        raise ValueError(f"{path}: no predictions")
    digest = hashlib.sha256(f"{subset}|{benchmark}|{text}".encode()).hexdigest()
    run_id = f"import-{digest[:12]}"
    items = [_item(record, subset) for record in records]
    _put_lines(store, run_key(run_id, "items.jsonl"), items)
    store.put(predictions_key(run_id, subset), predictions_text(records).encode("utf-8"))
    store.put(run_key(run_id, "missing.json"), b"[]")
    run = {
        "benchmark": benchmark or "imported",
        "run_id": run_id,
        "job_id": None,
        "data_root": None,
        "source": str(path),
        "model": None,
        "generation": None,
        "counts": {"items": len(items), "answered": len(items), "missing": 0, "failed": 0},
        "subsets": [subset],
    }
    store.put(run_key(run_id, "run.json"), json.dumps(run, indent=2).encode("utf-8"))
    return run_id


def _item(record: dict[str, str], subset: str) -> dict:
    """An items.jsonl record; without a video name (QA files have none) each item is its own
    bootstrap cluster."""
    video = record.get("video_name", record["id"])
    return {
        "id": record["id"],
        "subset": subset,
        "video_name": video,
        "video_id": video,
        "uri": None,
        "question": record[QUESTION_FIELDS[subset]],
        "question2": record.get("Q2"),
        "answer": record.get("answer", record.get("A")),
        "question_type": None,
        "status": "ok",
        "error": None,
        "message": None,
        "sampled_indices": None,
    }


def _put_lines(store: Store, key: str, values: list[dict]) -> None:
    store.put(key, "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in values).encode())
