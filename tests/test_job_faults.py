"""Faults of the environment are not data: store outages, throttling and refused credentials
while reading ``az://`` inputs leave the videos uncommitted and the job resumable (issue 17).

A real Azurite serves the inputs through a loopback proxy that can answer with 429/503/403.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer
from tests.fault_proxy import FaultProxy
from tests.test_pipeline import wait_for_a_commit
from videopanda_cluster.jobs.config import build_config
from videopanda_cluster.jobs.failures import ExitCode, JobFailed
from videopanda_cluster.storage import LocalStore

pytestmark = pytest.mark.slow

FAST_SDK_RETRIES = {"VIDEOPANDA_AZURE_RETRIES": "1", "VIDEOPANDA_AZURE_BACKOFF": "0.2"}


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Azurite behind a fault proxy; a local Ray whose workers reach the store through it."""
    import ray

    server = AzuriteServer(tmp_path_factory.mktemp("azurite-faults") / "data")
    server.start()
    proxy = FaultProxy(server.port).__enter__()
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": proxy.connection_string(ACCOUNT, ACCOUNT_KEY),
        **FAST_SDK_RETRIES,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # Ray's workers inherit the driver's environment at init
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield server, proxy
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proxy.__exit__()
    server.stop()


def upload(inputs_dir: Path, url: str) -> list[str]:
    """Copy the test inputs to ``url``; returns their az:// URIs."""
    from videopanda_cluster.storage.open import open_store

    store = open_store(url)
    uris = []
    for path in sorted(inputs_dir.iterdir()):
        store.put(path.name, path.read_bytes())
        uris.append(f"{url}/{path.name}")
    return uris


def manifest_of(uris: list[str], path: Path) -> Path:
    """A local manifest naming blob URIs: planning the job never touches the input store."""
    lines = [json.dumps({"video_id": Path(u).stem, "uri": u}) for u in uris]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(inputs: str, output: str, **extra):
    from videopanda_cluster.cluster.driver import run_job

    values = {
        "kind": "caption",
        "inputs": inputs,
        "output": output,
        "shard_size": 2,
        "max_in_flight": 1,
        "max_new_tokens": 4,
        "decode_workers": 2,
        "store_retry_window": 2.0,
        **extra,
    }
    return run_job(build_config({}, values))


def result_rows(output: str, job_id: str) -> list[dict]:
    from videopanda_cluster.eval.run import read_result_rows
    from videopanda_cluster.storage.open import open_store

    return read_result_rows(open_store(output), job_id)


def assert_every_video_once(rows: list[dict], names: list[str]) -> None:
    """One row per video; error rows only for the planted corrupt files, none for the store."""
    ids = sorted(r["video_id"] for r in rows)
    assert ids == sorted(Path(n).stem for n in names)
    for row in rows:
        if row["video_id"].startswith("corrupt_"):
            assert row["status"] == "error" and row["error"] != "source_unreadable", row
        else:
            assert row["status"] == "ok", (row["video_id"], row["error"], row["message"])


def in_thread(fn, **kwargs) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        try:
            result["summary"] = fn(**kwargs)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def test_input_store_outage_commits_no_rows_and_a_rerun_answers_each_video_once(
    faults, inputs_dir, tmp_path
):
    """Inputs on Azurite, results local: Azurite stops mid-job for longer than the retry window.
    Before the fix the job ended with exit 0 and committed ``source_unreadable`` rows."""
    server, _ = faults
    names = sorted(p.name for p in inputs_dir.iterdir())
    inputs = str(manifest_of(upload(inputs_dir, "az://videos/outage"), tmp_path / "m.jsonl"))
    out = tmp_path / "out"
    thread, result = in_thread(run, inputs=inputs, output=str(out), job_id="outage")
    wait_for_a_commit(LocalStore(out))
    server.stop()
    thread.join(timeout=300)
    server.start()
    assert not thread.is_alive()
    error = result.get("error")
    assert isinstance(error, JobFailed), result
    assert error.exit_code == ExitCode.STORE_UNAVAILABLE
    assert "input store unreachable" in str(error) and "rerun to resume" in str(error)
    assert ACCOUNT_KEY not in str(error)
    assert not any(r["error"] == "source_unreadable" for r in result_rows(str(out), "outage"))
    summary = run(inputs=inputs, output=str(out), job_id="outage")
    assert summary["progress"]["committed_videos"] == len(names)
    assert_every_video_once(result_rows(str(out), "outage"), names)


def test_outage_of_input_and_result_store_resumes_exactly_once(faults, inputs_dir):
    """Inputs and results on Azurite (``az://`` listing input): stopped for longer than the retry
    window mid-job, restarted, rerun: every valid video answered once, no store error rows."""
    from videopanda_cluster.jobs.ledger import Ledger
    from videopanda_cluster.storage.open import open_store

    server, _ = faults
    names = sorted(p.name for p in inputs_dir.iterdir())
    upload(inputs_dir, "az://videos/both")
    output = "az://results/both"
    store = open_store(output)
    thread, result = in_thread(run, inputs="az://videos/both", output=output, job_id="both")
    wait_for_a_commit(store)
    server.stop()
    thread.join(timeout=300)
    time.sleep(1)
    server.start()
    assert not thread.is_alive()
    error = result.get("error")
    assert isinstance(error, JobFailed), result
    assert error.exit_code == ExitCode.STORE_UNAVAILABLE and "rerun to resume" in str(error)
    ledger = Ledger.load(store, "both")
    before = ledger.committed()
    assert before and len(before) < len(ledger.shard_ids())
    summary = run(inputs="az://videos/both", output=output, job_id="both")
    assert summary["progress"]["committed_videos"] == len(names)
    assert_every_video_once(result_rows(output, "both"), names)
    assert all(ledger.attempts(s) == 1 for s in before)  # committed shards never rerun


@pytest.mark.parametrize("status", [429, 503])
def test_throttled_input_reads_are_retried_inside_the_shard(faults, inputs_dir, tmp_path, status):
    """The input store throttles every read for 4 s; the job waits it out and answers all."""
    _, proxy = faults
    names = sorted(p.name for p in inputs_dir.iterdir())[:6]
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in names:
        (subset / name).write_bytes((inputs_dir / name).read_bytes())
    uris = upload(subset, f"az://videos/throttle-{status}")
    inputs = str(manifest_of(uris, tmp_path / "m.jsonl"))
    out = str(tmp_path / "out")
    before = proxy.failed
    proxy.fail(status, 4.0, method="GET")
    summary = run(inputs=inputs, output=out, job_id="throttled", store_retry_window=60.0)
    assert proxy.failed > before  # the throttling was hit
    assert summary["progress"]["committed_videos"] == len(names)
    assert_every_video_once(result_rows(out, "throttled"), names)


def test_refused_credentials_stop_the_job_at_once_and_commit_nothing(faults, inputs_dir, tmp_path):
    """403 on every read (an expired SAS): the job stops with the access-denied code and no
    error rows; once access is back, a rerun answers every video."""
    _, proxy = faults
    names = sorted(p.name for p in inputs_dir.iterdir())[:4]
    uris = upload(inputs_dir, "az://videos/denied")
    uris = [u for u in uris if u.rsplit("/", 1)[1] in names]
    inputs = str(manifest_of(uris, tmp_path / "m.jsonl"))
    out = str(tmp_path / "out")
    proxy.fail(403, 600.0, method="GET")
    try:
        with pytest.raises(JobFailed) as caught:
            run(inputs=inputs, output=out, job_id="denied", store_retry_window=600.0)
    finally:
        proxy.clear()
    assert caught.value.exit_code == ExitCode.ACCESS_DENIED
    assert "refused access" in str(caught.value) and ACCOUNT_KEY not in str(caught.value)
    assert result_rows(out, "denied") == []
    summary = run(inputs=inputs, output=out, job_id="denied")
    assert summary["progress"]["committed_videos"] == len(names)
    assert_every_video_once(result_rows(out, "denied"), names)
