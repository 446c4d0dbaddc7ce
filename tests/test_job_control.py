"""Job control from the command line: Ctrl-C/SIGTERM stop cleanly, every failure is one line
with a documented exit code, and ``status`` only reads (issue 17)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.azurite import ACCOUNT, ACCOUNT_KEY, free_port
from tests.azurite import azurite as azurite_fixture  # noqa: F401
from tests.test_pipeline import read_rows
from videopanda_cluster.jobs.failures import ExitCode, describe, environment_fault, one_line

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "COLUMNS": "200"}


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "videopanda_cluster.cli", *args],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


FAILURE_STARTS = ("job failed:", "error:", "configuration error:", "internal error:")


def assert_one_line(proc: subprocess.CompletedProcess, code: ExitCode, *words: str) -> str:
    """The process failed with ``code`` and printed one failure line naming ``words``, and no
    traceback of its own. (Ray's diagnostic lines about its tasks, prefixed ``(raylet)``, may
    carry colours and a worker's traceback inline; they are not the driver's failure.)"""
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    for frame in ("jobs_cli.py", "cluster/driver.py", "jobs/lease.py"):  # the driver's own
        assert frame not in text, text
    failure = [line for line in text.splitlines() if line.startswith(FAILURE_STARTS)]
    assert len(failure) == 1, text
    assert all(w in failure[0] for w in words), text
    assert "\x1b[" not in failure[0]
    return failure[0]


def committed(out: Path) -> int:
    return len(list(out.glob("jobs/*/shards/*.done")))


# --- one-line failures -----------------------------------------------------------------------


def test_failure_lines_strip_colours_and_secrets_and_keep_one_line():
    text = "\x1b[31mboom\x1b[0m AccountKey=abc123;x sig=zzz&y\n  File 'a.py', line 3"
    assert one_line(text) == "boom AccountKey=***;x sig=***&y"
    code, line = describe(RuntimeError("x" * 1000))
    assert code == ExitCode.INTERNAL and len(line) < 600 and "--debug" in line
    assert describe(ValueError("bad input"))[0] == ExitCode.USAGE


def test_environment_faults_are_classified_by_kind():
    import errno

    from videopanda_cluster.storage.base import StoreAccessDenied, StoreUnavailable

    down = environment_fault(StoreUnavailable("az://x down"), "input store")
    assert down is not None and down.exit_code == ExitCode.STORE_UNAVAILABLE
    assert str(down).startswith("input store unreachable")
    denied = environment_fault(StoreAccessDenied("403"))
    assert denied is not None and denied.exit_code == ExitCode.ACCESS_DENIED
    full = environment_fault(OSError(errno.ENOSPC, "No space left on device"))
    assert full is not None and full.exit_code == ExitCode.LOCAL_RESOURCE
    assert environment_fault(KeyError("x")) is None
    assert environment_fault(OSError(errno.ENOENT, "missing")) is None  # a fault of the input


def test_status_of_a_mistyped_store_creates_nothing(tmp_path):
    typo = tmp_path / "typo_dir"
    proc = cli("status", "some-job", "--output", str(typo))
    assert proc.returncode == 1 and "no job" in proc.stdout + proc.stderr
    assert not typo.exists()


@pytest.mark.slow
def test_unreachable_result_store_is_one_line_with_its_code(inputs_dir):
    port = free_port()  # nothing listens there
    env = {
        **ENV,
        "AZURE_STORAGE_CONNECTION_STRING": (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
        ),
        "VIDEOPANDA_AZURE_RETRIES": "0",
    }
    proc = cli("caption", str(inputs_dir), "--output", "az://results/x", env=env)
    line = assert_one_line(proc, ExitCode.STORE_UNAVAILABLE, "unreachable")
    assert "rerun to resume" in line and ACCOUNT_KEY not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_wrong_azure_key_is_one_line_without_the_key(inputs_dir, azurite):
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    env = {
        **ENV,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string.replace(ACCOUNT_KEY, wrong),
        "VIDEOPANDA_AZURE_RETRIES": "0",
    }
    proc = cli("caption", str(inputs_dir), "--output", "az://results/denied", env=env)
    assert_one_line(proc, ExitCode.ACCESS_DENIED, "refused access")
    assert wrong not in proc.stdout + proc.stderr


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs (root and mount permitted), unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_is_one_line_and_leaves_the_job_resumable(inputs_dir, tiny_fs):
    (tiny_fs / "filler").write_bytes(b"\0" * (256 * 1024 - 8192))  # almost full
    proc = cli("caption", str(inputs_dir), "--output", str(tiny_fs / "out"))
    assert_one_line(proc, ExitCode.LOCAL_RESOURCE, "No space left")


@pytest.mark.slow
def test_read_only_output_is_one_line(inputs_dir, tiny_fs):
    (tiny_fs / "out").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    proc = cli("caption", str(inputs_dir), "--output", str(tiny_fs / "out"))
    assert_one_line(proc, ExitCode.LOCAL_RESOURCE, "Read-only file system")


# --- interruption ------------------------------------------------------------------------------


def start_job(inputs: Path, out: Path, job_id: str) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "videopanda_cluster.cli", "caption", str(inputs),
        "--output", str(out), "--shard-size", "1", "--max-in-flight", "1",
        "--max-new-tokens", "4", "--job-id", job_id, "--stop-grace", "20",
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def interrupt(proc: subprocess.Popen, out: Path, after: int, send, timeout: float):
    """Once ``after`` shards are committed, ``send(proc)`` signals; (proc, output, when sent)."""
    try:
        wait_until(lambda: committed(out) >= after or proc.poll() is not None)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        send(proc)
        sent = time.time()
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, output, sent


def wait_until(check, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_sigterm_stops_submitting_writes_the_summary_and_exits_130(inputs_dir, tmp_path):
    """Kubernetes' SIGTERM (and the first Ctrl-C): no new shard starts, the summary is written,
    exit 130 with a one-line reason; a rerun completes every video exactly once."""
    out = tmp_path / "out"

    def stop(proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGTERM)

    proc, output, stopped = interrupt(start_job(inputs_dir, out, "stop-me"), out, 2, stop, 120)
    assert proc.returncode == ExitCode.INTERRUPTED, output
    assert time.time() - stopped < 60
    assert "interrupted;" in output and "rerun to resume" in output
    assert "Traceback" not in output
    done = committed(out)
    total = len(list(inputs_dir.iterdir()))
    assert done < total  # it did not go on to the end
    time.sleep(3)
    assert committed(out) == done  # nothing commits after the exit
    summary = json.loads((out / "jobs" / "stop-me" / "summary.json").read_text())
    assert summary["stopped"]["exit_code"] == ExitCode.INTERRUPTED
    assert summary["progress"]["committed_shards"] == done
    rerun = cli(
        "caption", str(inputs_dir), "--output", str(out), "--shard-size", "1",
        "--max-in-flight", "1", "--max-new-tokens", "4", "--job-id", "stop-me",
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = read_rows(out, "stop-me")
    assert sorted(r["video_id"] for r in rows) == sorted(p.stem for p in inputs_dir.iterdir())


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once(inputs_dir, tmp_path):
    out = tmp_path / "out"

    def twice(proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGINT)

    proc, output, second = interrupt(start_job(inputs_dir, out, "impatient"), out, 1, twice, 30)
    assert proc.returncode == ExitCode.INTERRUPTED, output
    assert time.time() - second < 10
    assert "Traceback" not in output


@pytest.mark.slow
def test_workers_that_keep_dying_are_one_line_without_colours(inputs_dir, tmp_path):
    """A checkpoint whose weights are cut short: every model actor dies at start. The job stops
    with the cluster code and one line (Ray's message has ANSI colours and a traceback)."""
    import shutil

    from videopanda_cluster.bundled import small_model

    broken = tmp_path / "broken-model"
    shutil.copytree(small_model(), broken)
    weights = next(broken.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    proc = cli(
        "caption", str(inputs_dir), "--output", str(tmp_path / "out"), "--checkpoint",
        str(broken), "--shard-size", "8",
    )  # fmt: skip
    assert_one_line(proc, ExitCode.CLUSTER, "failed 4 times")


def test_a_job_held_by_another_driver_is_refused_with_code_3(inputs_dir, tmp_path):
    """A live lease of a driver on another machine: the command refuses at once, one line."""
    from videopanda_cluster.jobs.lease import LeaseRecord, lease_key
    from videopanda_cluster.storage import LocalStore

    store = LocalStore(tmp_path / "out")
    now = time.time()
    record = LeaseRecord("other-host", 4242, "t" * 32, now - 30, now, 120.0)
    store.put(lease_key("held"), record.encode())
    proc = cli("caption", str(inputs_dir), "--output", str(tmp_path / "out"), "--job-id", "held")
    line = assert_one_line(proc, ExitCode.JOB_LOCKED, "other-host pid 4242")
    assert "since" in line
