"""`videopanda eval run | judge | report` end to end, each a real CLI process: embedded Ray, the
tiny model, a real local OpenAI-compatible judge server, files in a local store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.eval_fixtures import make_benchmark_fixture
from tests.openai_server import FAKE_KEY
from tests.openai_server import openai_server as openai_server_fixture  # noqa: F401
from tests.test_cli import _cli
from videopanda_cluster.eval.predictions import read_reference_predictions

KEY_ENV = "VPC_TEST_EVAL_KEY"


def _judge(store: Path, target: str, server, *extra: str):
    os.environ[KEY_ENV] = FAKE_KEY  # the CLI process inherits it
    return _cli(
        "eval", "judge", target, "--output", str(store), "--judge-model", "judge-test-0001",
        "--base-url", server.base_url, "--api-key-env", KEY_ENV, "--concurrency", "2",
        *extra,
    )  # fmt: skip


@pytest.mark.slow  # scripts/check.sh leaves it to the full suite
def test_run_judge_report_on_a_benchmark(corpus, tmp_path, openai_server):
    bench = make_benchmark_fixture("activitynet-qa", tmp_path / "data", corpus, corrupt=True)
    store = tmp_path / "store"
    out = _cli(
        "eval", "run", "--benchmark", "activitynet-qa", "--data-root", str(bench["data_root"]),
        "--output", str(store), "--run-id", "anet", "--max-new-tokens", "4",
        "--decode-workers", "1", timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    run = json.loads((store / "eval/anet/run.json").read_text())
    answerable = bench["answerable"]["qa"]
    assert run["counts"]["answered"] == len(answerable)
    assert run["counts"]["missing"] == len(bench["missing"]["qa"]) > 0
    assert run["counts"]["failed"] == len(bench["corrupt"]["qa"]) > 0
    preds = read_reference_predictions((store / "eval/anet/predictions/qa.jsonl").read_text(), "qa")
    assert [p["id"] for p in preds] == answerable

    first = _judge(store, "anet", openai_server)
    assert first.returncode == 0, first.stdout + first.stderr
    calls = openai_server.counts["total"]
    assert calls == len(answerable)
    judged = json.loads((store / "eval/anet/judge.json").read_text())
    assert judged["dimensions"]["qa"]["judged"] == len(answerable)
    again = _judge(store, "anet", openai_server)
    assert again.returncode == 0 and openai_server.counts["total"] == calls  # all from the cache

    report = _cli("eval", "report", "anet", "--output", str(store), "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    data = json.loads(report.stdout)
    assert data["run_id"] == "anet"
    for name in ("report.json", "report.md", "report.png", "report.html"):
        assert (store / "eval/anet" / name).stat().st_size > 0
    assert FAKE_KEY not in "".join(
        p.read_text(errors="replace") for p in store.rglob("*") if p.is_file()
    )


def test_judge_a_prediction_file_made_elsewhere(tmp_path, openai_server):
    lines = [
        {"id": "v1_0", "question": "what is red?", "answer": "ball", "pred": "ball"},
        {"id": "v1_1", "question": "what moves?", "answer": "car", "pred": "a red car"},
        {"id": "v2_0", "question": "who sings?", "answer": "woman", "pred": "a child"},
    ]
    path = tmp_path / "merge.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    store = tmp_path / "store"
    out = _judge(store, str(path), openai_server, "--benchmark", "msvd-qa")
    assert out.returncode == 0, out.stdout + out.stderr
    (run_dir,) = (store / "eval").iterdir()
    judged = json.loads((run_dir / "judge.json").read_text())["dimensions"]["qa"]
    # the fake server's rule: equal -> yes/5, contained -> yes/3, else no/1
    assert (judged["yes"], judged["no"]) == (2, 1)
    assert judged["accuracy"] == pytest.approx(2 / 3)
    assert judged["mean_score"] == pytest.approx((5 + 3 + 1) / 3)
    report = _cli("eval", "report", run_dir.name, "--output", str(store))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "msvd" in (run_dir / "report.md").read_text().lower()

    path.write_text('{"id": 7, "question": "q", "answer": "a", "pred": "p"}\n')
    bad = _judge(store, str(path), openai_server)
    assert bad.returncode == 2 and "line 1" in bad.stdout
