"""Side-by-side reports (``eval report RUN RUN``): per-run values equal each run's own report,
paired differences over the items both runs answered (computed here by hand), a paired
bootstrap over videos, refusals, and the HTML in headless Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.test_eval_report import _item, _render, _verdict, _write_run
from videopanda_cluster.cli import app
from videopanda_cluster.eval.compare import compare_runs, comparison_name
from videopanda_cluster.eval.layout import comparison_key
from videopanda_cluster.eval.metrics import bootstrap_ci
from videopanda_cluster.eval.report import build_report
from videopanda_cluster.storage.local import LocalStore

RESAMPLES = 300
# id -> (video, answer); run A and run B answer overlapping sets with their own predictions
ITEMS = {str(i): (f"v{i // 2}", f"answer {i}") for i in range(10)}
PRED_A = {i: (a if int(i) % 3 else "wrong") for i, (_, a) in ITEMS.items() if i != "9"}
PRED_B = {i: (a if int(i) % 2 else "wrong") for i, (_, a) in ITEMS.items() if i != "0"}
SCORE_A = {i: 5 if p != "wrong" else 1 for i, p in PRED_A.items()}
SCORE_B = {i: 4 if p != "wrong" else 0 for i, p in PRED_B.items() if i != "5"}  # 5: failed


def _run(store: LocalStore, run_id: str, preds: dict, scores: dict, benchmark="msvd-qa"):
    items = [_item(i, "qa", video, answer=a) for i, (video, a) in ITEMS.items()]
    lines = [
        {"id": i, "question": f"question {i}?", "answer": ITEMS[i][1], "pred": p}
        for i, p in preds.items()
    ]
    verdicts = [
        _verdict(i, "qa", "qa", scores.get(i), None if i not in scores else
                 ("yes" if scores[i] >= 3 else "no"))
        for i in preds
    ]  # fmt: skip
    _write_run(store, run_id, benchmark, items, {"qa": lines}, verdicts)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> LocalStore:
    store = LocalStore(tmp_path_factory.mktemp("compare") / "store")
    _run(store, "a", PRED_A, SCORE_A)
    _run(store, "b", PRED_B, SCORE_B)
    _run(store, "other", PRED_A, SCORE_A, benchmark="msrvtt-qa")
    return store


@pytest.fixture(scope="module")
def comparison(store) -> dict:
    return compare_runs(store, ["a", "b"], n_resamples=RESAMPLES)


def _metric(report: dict, label: str) -> dict:
    return next(m for m in report["metrics"] if m["label"] == label)


def test_per_run_values_are_each_runs_own_report(store, comparison):
    assert [m["label"] for m in comparison["metrics"]] == [
        "qa exact_match", "qa token_f1", "qa accuracy", "qa mean_score"
    ]  # fmt: skip
    for run_id in ("a", "b"):
        own = build_report(store, run_id, sample_items=0, n_resamples=RESAMPLES)
        for label, value in (
            ("qa exact_match", own["offline"]["qa"]["exact_match"]),
            ("qa accuracy", own["metrics"]["qa"]["accuracy"]),
            ("qa mean_score", own["metrics"]["qa"]["mean_score"]),
        ):
            assert _metric(comparison, label)["per_run"][run_id]["value"] == pytest.approx(value)


def test_paired_differences_use_the_items_both_runs_answered(comparison):
    both = sorted(set(PRED_A) & set(PRED_B), key=int)  # 1..8
    em = _metric(comparison, "qa exact_match")["paired"]["b"]
    diffs = [100.0 * (PRED_B[i] != "wrong") - 100.0 * (PRED_A[i] != "wrong") for i in both]
    assert em["items"] == len(both) == 8 and em["videos"] == len({ITEMS[i][0] for i in both})
    assert em["difference"] == pytest.approx(np.mean(diffs))
    low, high = bootstrap_ci(diffs, [ITEMS[i][0] for i in both], n_resamples=RESAMPLES)
    assert em["ci"] == pytest.approx([low, high]) and low <= em["difference"] <= high
    assert em["baseline"] == pytest.approx(np.mean([100.0 * (PRED_A[i] != "wrong") for i in both]))
    # a judged metric pairs only items with a verdict in both runs (5 failed in run b)
    judged = [i for i in both if i in SCORE_B]
    score = _metric(comparison, "qa mean_score")["paired"]["b"]
    assert score["items"] == len(judged) == 7
    assert score["difference"] == pytest.approx(np.mean([SCORE_B[i] - SCORE_A[i] for i in judged]))


def test_outputs_and_refusals(store, comparison, tmp_path):
    name = comparison["name"]
    assert name == comparison_name(["a", "b"]) == "a-vs-b"
    saved = json.loads(store.get(comparison_key(name, "comparison.json")))
    assert saved == json.loads(json.dumps(comparison))
    markdown = store.get(comparison_key(name, "comparison.md")).decode()
    assert "## Paired differences against a" in markdown
    em = _metric(comparison, "qa exact_match")["paired"]["b"]
    assert f"{em['difference']:+.1f} [{em['ci'][0]:+.1f}, {em['ci'][1]:+.1f}]" in markdown.replace(
        "\\", ""
    )
    with pytest.raises(ValueError, match="different benchmarks"):
        compare_runs(store, ["a", "other"], n_resamples=RESAMPLES)
    with pytest.raises(ValueError, match="two or more distinct runs"):
        compare_runs(store, ["a", "a"])
    out = CliRunner().invoke(
        app, ["eval", "report", "a", "b", "--output", str(store.root), "--name", "ab"]
    )
    assert out.exit_code == 0, out.output
    assert store.exists(comparison_key("ab", "comparison.html"))
    out = CliRunner().invoke(app, ["eval", "report", "a", "nope", "--output", str(store.root)])
    assert out.exit_code == 2 and "nope" in out.output


def test_comparison_html_renders_in_chromium(store, comparison, tmp_path):
    html_path, screenshot = tmp_path / "comparison.html", tmp_path / "shot.png"
    html_path.write_bytes(store.get(comparison_key(comparison["name"], "comparison.html")))
    result = _render(html_path, screenshot)
    assert result["console_errors"] == [] and result["page_errors"] == []
    assert result["failed_requests"] == [] and result["scripts"] == 0
    page = html_path.read_text()
    assert page.count("<table>") == 3 and '<section id="paired">' in page
