"""Prediction files in the reference format (layout.py), written so the reference judge reads them.

The reference judge parses each line of a prediction file as a Python literal. A JSON line is one
only if it holds no ``true``/``false``/``null`` and its string escapes mean the same in Python,
so every line written here is checked by reading it back both ways.
"""

from __future__ import annotations

import ast
import io
import json
from collections.abc import Iterable, Sequence
from typing import cast

from .benchmarks import EvalItem

PREDICTION_FIELDS: dict[str, tuple[str, ...]] = {
    "qa": ("id", "question", "answer", "pred"),
    "generic": ("id", "video_name", "Q", "A", "pred"),
    "temporal": ("id", "video_name", "Q", "A", "pred"),
    "consistency": ("id", "video_name", "Q1", "Q2", "A", "pred1", "pred2"),
}


class PredictionFormatError(ValueError):
    """A prediction line the reference judge would not read as intended."""


def generations(item: EvalItem) -> int:
    """How many independent answers an item needs (2 for consistency: pred1 and pred2)."""
    return 2 if item.subset == "consistency" else 1


def prediction_record(item: EvalItem, preds: Sequence[str]) -> dict[str, str]:
    """The reference prediction record of ``item`` answered with ``preds`` (one per generation)."""
    if len(preds) != generations(item):
        raise ValueError(
            f"item {item.id!r} needs {generations(item)} predictions, got {len(preds)}"
        )
    if item.subset == "qa":
        return {"id": item.id, "question": item.question, "answer": item.answer, "pred": preds[0]}
    record = {"id": item.id, "video_name": item.video_name}
    if item.subset == "consistency":
        question2 = cast(str, item.question2)  # the loader sets it for every consistency item
        return {**record, "Q1": item.question, "Q2": question2, "A": item.answer,
                "pred1": preds[0], "pred2": preds[1]}  # fmt: skip
    return {**record, "Q": item.question, "A": item.answer, "pred": preds[0]}


def prediction_line(record: dict[str, str]) -> str:
    """One JSON line that ``ast.literal_eval`` reads back as exactly ``record`` (no newline)."""
    if not all(isinstance(v, str) for v in record.values()):
        raise PredictionFormatError(f"prediction {record.get('id')!r}: every value must be a str")
    line = json.dumps(record, ensure_ascii=False)
    try:
        same = ast.literal_eval(line) == record
    except (ValueError, SyntaxError) as exc:
        raise PredictionFormatError(f"prediction {record['id']!r}: {exc}") from None
    if not same:
        raise PredictionFormatError(
            f"prediction {record['id']!r}: reads back differently as a Python literal"
        )
    return line


def predictions_text(records: Iterable[dict[str, str]]) -> str:
    """A prediction file: one :func:`prediction_line` per record."""
    return "".join(prediction_line(r) + "\n" for r in records)


def read_reference_predictions(text: str, subset: str) -> list[dict]:
    """Read a prediction file as the reference judge does (each stripped line a Python literal,
    lines split as a text-mode file splits them) and check it: every line a dict with exactly
    the subset's fields, string values, unique ids. Integer ids (as the reference's files have
    them) are read as their decimal strings."""
    if subset not in PREDICTION_FIELDS:
        raise ValueError(f"unknown subset {subset!r} (choose from {', '.join(PREDICTION_FIELDS)})")
    fields = set(PREDICTION_FIELDS[subset])
    records: list[dict] = []
    first: dict[str, int] = {}
    for number, line in enumerate(io.StringIO(text, newline=None), 1):
        where = f"{subset} predictions, line {number}"
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
            raise PredictionFormatError(f"{where}: not a Python literal ({exc})") from None
        if not isinstance(record, dict):
            raise PredictionFormatError(f"{where}: expected a dict, got {type(record).__name__}")
        if set(record) != fields:
            missing, extra = sorted(fields - set(record)), sorted(map(str, set(record) - fields))
            raise PredictionFormatError(f"{where}: missing fields {missing}, extra fields {extra}")
        if type(record["id"]) is int:  # as in the reference's own files; bools are not ids
            record["id"] = str(record["id"])
        for name, value in record.items():
            if not isinstance(value, str):
                kind = "a str or an int" if name == "id" else "a str"
                raise PredictionFormatError(
                    f"{where}: field `{name}` must be {kind}, got {type(value).__name__}"
                )
        if record["id"] in first:
            raise PredictionFormatError(
                f"{where}: duplicate id {record['id']!r} (first on line {first[record['id']]})"
            )
        first[record["id"]] = number
        records.append(record)
    return records
