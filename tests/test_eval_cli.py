"""`videopanda eval run | judge | report` end to end, each a real CLI process: embedded Ray, the
tiny model, a real local OpenAI-compatible judge server, files in a local store."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import typer.main

from tests.eval_fixtures import make_benchmark_fixture
from tests.openai_server import FAKE_KEY, out_of_quota, raw_body
from tests.openai_server import openai_server as openai_server_fixture  # noqa: F401
from tests.test_cli import _cli
from videopanda_cluster import eval_cli
from videopanda_cluster.eval.judge import JudgeConfig
from videopanda_cluster.eval.predictions import read_reference_predictions
from videopanda_cluster.jobs.failures import ExitCode

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


@pytest.mark.slow
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

    path.write_text('{"id": 7, "question": "q", "answer": "a", "pred": None}\n')
    bad = _judge(store, str(path), openai_server)
    assert bad.returncode == 2 and "line 1" in bad.stdout


def _qa_file(tmp_path: Path, count: int = 3) -> Path:
    path = tmp_path / "preds.jsonl"
    rows = [
        {"id": f"v{i}_0", "question": f"q{i}?", "answer": "a", "pred": "a"} for i in range(count)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_judge_exits_non_zero_when_verdicts_failed(tmp_path, openai_server):
    """Against a closed port every verdict fails: a documented exit code, unless allowed."""
    path, store = _qa_file(tmp_path), tmp_path / "store"
    dead = type("Dead", (), {"base_url": f"http://127.0.0.1:{_closed_port()}/v1"})()
    out = _judge(store, str(path), dead, "--max-attempts", "1")
    assert out.returncode == ExitCode.JUDGE_FAILURES, out.stdout + out.stderr
    assert "3 of 3 verdicts failed" in out.stdout
    (run_dir,) = (store / "eval").iterdir()
    assert json.loads((run_dir / "judge.json").read_text())["dimensions"]["qa"]["failed"] == 3
    allowed = _judge(store, str(path), dead, "--max-attempts", "1", "--allow-failures")
    assert allowed.returncode == 0 and "3 of 3 verdicts failed" in allowed.stdout
    ok = _judge(store, str(path), openai_server)
    assert ok.returncode == 0 and "0 of 3 verdicts failed" in ok.stdout


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (out_of_quota(), ExitCode.ACCESS_DENIED),
        (raw_body("<html>oops</html>", "text/html"), ExitCode.JUDGE_FAILURES),
    ],
)
def test_judge_faults_end_with_one_line(tmp_path, openai_server, fault, code):
    path, store = _qa_file(tmp_path), tmp_path / "store"
    openai_server.when("q1?", fault, forever=True)
    out = _judge(store, str(path), openai_server, "--max-attempts", "2")
    assert out.returncode == code, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    if code == ExitCode.ACCESS_DENIED:
        (line,) = out.stdout.strip().splitlines()
        assert line.startswith("error: ") and "insufficient_quota" in line
    else:
        assert "1 of 3 verdicts failed" in out.stdout
        (run_dir,) = (store / "eval").iterdir()
        assert (run_dir / "verdicts.jsonl").read_text().count('"status": "failed"') == 1


def test_judge_cli_defaults_are_the_config_defaults():
    command = typer.main.get_command(eval_cli.app).commands["judge"]
    cli = {param.name: param.default for param in command.params}
    shared = cli.keys() & JudgeConfig.model_fields.keys()
    assert shared >= {"temperature", "top_p", "max_tokens", "concurrency", "max_attempts"}
    assert shared >= {"timeout", "api_key_env", "base_url", "azure_endpoint", "api_version"}
    by_protocol = {"temperature", "top_p"}  # None: the protocol's (builtin: the config's)
    assert all(cli[n] is None for n in by_protocol)
    shared -= by_protocol
    assert {n: cli[n] for n in shared} == {n: JudgeConfig.model_fields[n].default for n in shared}
