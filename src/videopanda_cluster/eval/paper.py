"""The Video-Panda paper's published numbers (``paper_results.json``), for comparison tables."""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources

from .layout import BENCHMARKS, QA_BENCHMARKS


@cache
def _load() -> dict:
    text = resources.files(__package__).joinpath("paper_results.json").read_text("utf-8")
    return json.loads(text)


def load_paper_results() -> dict:
    """The whole file: ``source``, ``reference_model``, ``split_items`` (test split sizes),
    ``qa`` (Table 1), ``vcgbench`` (Table 2).

    A fresh copy each call, so callers may change it.
    """
    return copy.deepcopy(_load())


def paper_table(benchmark: str) -> dict:
    """The paper's rows for one benchmark, with the table's name, source and caveat.

    ``{"table", "title", "decimals", "source", "reference_model", "caveat", "metrics", "rows":
    [{"model", "vision_params", "same_training_data", "values": {metric: number or None}}]}``.
    QA benchmarks have the metrics ``accuracy`` (%) and ``score``; ``vcgbench`` has its five
    dimensions and ``average`` (scores). ``decimals`` is the precision the paper prints.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}"
        )
    data = load_paper_results()
    qa = benchmark in QA_BENCHMARKS
    group = data["qa"] if qa else data["vcgbench"]
    metrics = ["accuracy", "score"] if qa else [*group["dimensions"], "average"]
    rows = [
        {**_row_info(row), "values": row["results"][benchmark] if qa else row["results"]}
        for row in group["rows"]
    ]
    return {
        "table": group["table"],
        "title": group["title"],
        "decimals": group["decimals"],  # as published
        "source": data["source"],
        "reference_model": data["reference_model"],
        "caveat": group["caveats"].get(benchmark),
        "metrics": metrics,
        "rows": rows,
    }


def split_items(benchmark: str) -> int | None:
    """Questions in the benchmark's published test split (None: not recorded)."""
    return _load()["split_items"].get(benchmark)


def _row_info(row: dict) -> dict:
    return {key: row[key] for key in ("model", "vision_params", "same_training_data")}
