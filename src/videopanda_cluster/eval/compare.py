"""Side-by-side reports (``eval report RUN RUN [...]``): several runs of one benchmark in one
report, e.g. two models, two checkpoints or two generation settings.

Metrics: per subset, exact match and token F1 over every answered item; per judged dimension,
accuracy (``qa``) and mean score over successful verdicts (the values of ``report.py``). Each
run's value carries its 95% cluster-bootstrap interval over its own answered items, as in its
own report. Each later run is compared with the first (the baseline) over the items both
answered (for a judged metric: both have a successful verdict): the mean per-item difference,
run − baseline, with a 95% interval from a paired bootstrap that resamples videos (each
resample draws whole videos with replacement and averages the differences of their items), so
questions about one video count as one unit, as in the single-run intervals.

Written to ``eval-compare/<name>/comparison.{json,md,html}``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..storage.base import Store
from .layout import DIMENSIONS, comparison_key
from .report import (
    UNITS,
    Answer,
    Bootstrap,
    Section,
    digits,
    fmt_ci,
    html_document,
    judged_values,
    load_answers,
    markdown_sections,
    offline_values,
)

COMPARISON_FILES = ("comparison.json", "comparison.md", "comparison.html")
_OFFLINE = ("exact_match", "token_f1")
_MAX_NAME = 80


@dataclass(frozen=True)
class _Metric:
    subset: str
    dimension: str | None  # None: an offline metric
    name: str  # exact_match, token_f1, accuracy or mean_score

    @property
    def label(self) -> str:
        return (
            f"{self.subset} {self.name}"
            if self.dimension is None
            else (f"{self.dimension} {self.name}")
        )

    def value(self, answer: Answer) -> float | None:
        if self.dimension is None:
            return offline_values(answer).get(self.name)
        return judged_values(answer, self.dimension).get(self.name)


def _metrics(runs: dict[str, list[Answer]]) -> list[_Metric]:
    """The metrics every run has: subsets all answered, dimensions all judged."""
    subsets = [
        s
        for s in dict.fromkeys(a.key[0] for answers in runs.values() for a in answers)
        if all(any(a.key[0] == s for a in answers) for answers in runs.values())
    ]
    out = [_Metric(s, None, name) for s in subsets for name in _OFFLINE]
    for subset in subsets:
        for dim in DIMENSIONS.get(subset, ()):
            for name in ("accuracy", "mean_score"):
                metric = _Metric(subset, dim, name)
                if all(
                    any(metric.value(a) is not None for a in answers) for answers in runs.values()
                ):
                    out.append(metric)
    return out


def _per_run(metric: _Metric, answers: list[Answer], boot: Bootstrap) -> dict:
    pairs = [(v, a.video) for a in answers if (v := metric.value(a)) is not None]
    value, ci = boot.mean_ci(pairs)
    return {"value": value, "ci": ci, "items": len(pairs)}


def _paired(metric: _Metric, base: list[Answer], other: list[Answer], boot: Bootstrap) -> dict:
    """The mean difference other − base over the items both have a value for."""
    theirs = {a.key: v for a in base if (v := metric.value(a)) is not None}
    rows = [
        (v, theirs[a.key], a.video)
        for a in other
        if (v := metric.value(a)) is not None and a.key in theirs
    ]
    difference, ci = boot.mean_ci([(v - b, video) for v, b, video in rows])
    return {
        "items": len(rows),
        "videos": len({video for _, _, video in rows}),
        "value": float(np.mean([v for v, _, _ in rows])) if rows else None,
        "baseline": float(np.mean([b for _, b, _ in rows])) if rows else None,
        "difference": difference,
        "ci": ci,
    }


def comparison_name(run_ids: Sequence[str]) -> str:
    """``A-vs-B`` for short run ids, else a digest of them."""
    name = "-vs-".join(run_ids)
    if len(name) <= _MAX_NAME:
        return name
    return "runs-" + hashlib.sha256("\0".join(run_ids).encode()).hexdigest()[:16]


def compare_runs(
    store: Store,
    run_ids: Sequence[str],
    *,
    name: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Compare runs of one benchmark (the first is the baseline), write the comparison's three
    files into ``store`` and return its JSON. Raises ValueError for fewer than two distinct
    runs or runs of different benchmarks."""
    run_ids = list(run_ids)
    if len(run_ids) < 2 or len(set(run_ids)) != len(run_ids):
        raise ValueError(f"a comparison needs two or more distinct runs, got {run_ids}")
    loaded = {run_id: load_answers(store, run_id) for run_id in run_ids}
    benchmarks = {run_id: str(run.get("benchmark")) for run_id, (run, _) in loaded.items()}
    if len(set(benchmarks.values())) > 1:
        shown = ", ".join(f"{r}: {b}" for r, b in benchmarks.items())
        raise ValueError(f"runs of different benchmarks cannot be compared ({shown})")
    answers = {run_id: found for run_id, (_, found) in loaded.items()}
    baseline = run_ids[0]
    boot = Bootstrap(n_resamples, 0.05, seed)
    metrics = []
    for metric in _metrics(answers):
        metrics.append({
            "subset": metric.subset,
            "dimension": metric.dimension,
            "metric": metric.name,
            "label": metric.label,
            "per_run": {r: _per_run(metric, answers[r], boot) for r in run_ids},
            "paired": {
                r: _paired(metric, answers[baseline], answers[r], boot)
                for r in run_ids[1:]
            },
        })  # fmt: skip
    report = {
        "name": name or comparison_name(run_ids),
        "benchmark": benchmarks[baseline],
        "baseline": baseline,
        "runs": [
            {"run_id": r, "model": run.get("model"), "answered": len(answers[r])}
            for r, (run, _) in loaded.items()
        ],
        "units": UNITS,
        "bootstrap": {
            "resample": "videos",
            "n_resamples": n_resamples,
            "alpha": boot.alpha,
            "seed": seed,
            "interval": "percentile",
            "paired": True,
        },
        "metrics": metrics,
    }
    _write(store, report)
    return report


# -------------------------------------------------------------------------------- rendering


def _sections(report: dict) -> list[Section]:
    run_ids = [run["run_id"] for run in report["runs"]]
    runs = Section(
        "runs", "Runs", ["run", "model", "answered"],
        [[r["run_id"], str((r["model"] or {}).get("name", "–")), str(r["answered"])]
         for r in report["runs"]],
        notes=[f"Baseline: {report['baseline']}."],
    )  # fmt: skip
    values = Section(
        "metrics",
        "Metrics (95% CI over videos)",
        ["metric", *run_ids],
        [
            [m["label"]]
            + [
                fmt_ci(m["per_run"][r]["value"], m["per_run"][r]["ci"], digits(m["metric"]))
                for r in run_ids
            ]
            for m in report["metrics"]
        ],
        notes=["Percent for exact match, token F1 and accuracy; judge scale 0-5 for scores."],
    )
    paired = Section(
        "paired",
        f"Paired differences against {report['baseline']}",
        ["metric", "run", "items", "videos", "baseline", "run", "difference (95% CI)"],
        [
            [
                m["label"],
                r,
                str(p["items"]),
                str(p["videos"]),
                fmt_ci(p["baseline"], None, digits(m["metric"])),
                fmt_ci(p["value"], None, digits(m["metric"])),
                _signed(p["difference"], p["ci"], digits(m["metric"])),
            ]
            for m in report["metrics"]
            for r, p in m["paired"].items()
        ],
        notes=[
            "Over the items both runs answered (for a judged metric: both have a verdict); "
            "the interval is a paired bootstrap that resamples videos."
        ],
    )
    return [runs, values, paired]


def _signed(value: float | None, ci: list[float] | None, digits: int) -> str:
    if value is None:
        return "–"
    text = f"{value:+.{digits}f}"
    return text if ci is None else f"{text} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _write(store: Store, report: dict) -> None:
    name, sections = report["name"], _sections(report)
    title = f"Comparison: {', '.join(r['run_id'] for r in report['runs'])} ({report['benchmark']})"
    files = {
        "comparison.json": json.dumps(report, indent=2, allow_nan=False),
        "comparison.md": "\n".join(markdown_sections(title, sections)) + "\n",
        "comparison.html": html_document(title, sections),
    }
    for file, text in files.items():
        store.put(comparison_key(name, file), text.encode("utf-8"))
