"""Head loss on KubeRay, through the CLI: the same command resubmitted with the same job id.

The captioning RayJob runs ``videopanda caption --config FILE --job-id ID --address ...`` on the
Ray head. Losing the head pod loses the driver and the whole Ray cluster (GCS, every actor); only
the store survives. Here a ``ray start --head`` process group plays the head: it is killed
together with the driver after some shards committed, a new head is started (as KubeRay does for
a resubmitted RayJob) and the same command, pointed at the new cluster, must resume from the job
ledger. (tests/test_pipeline_faults.py kills an embedded-Ray driver; this is the joined-cluster
path the RayJob uses.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_pipeline import read_rows
from tests.test_pipeline_faults import _committed
from videopanda_cluster.cli import app
from videopanda_cluster.jobs.ledger import Ledger
from videopanda_cluster.storage.local import LocalStore

pytestmark = pytest.mark.slow

# Small sample videos (encoders every FFmpeg build has); one video per shard.
VIDEOS = (
    "qcif_176x144_5f_10fps.mp4",
    "rotated_480x360_30f_25fps_rot270.mp4",
    "rotated_320x240_20f_25fps_rot90.mkv",
    "single_frame_640x480.mp4",
    "vfr_340x256_90f.mp4",
    "slow_176x144_12f_0.4fps.mkv",
)
JOB_ID = "caption-head-loss"
# Ray on loopback without token auth: a throw-away local cluster.
ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    from videopanda_cluster.video.samples import default_specs, write_video

    directory = tmp_path_factory.mktemp("videos")
    for n, spec in enumerate(default_specs()):
        if spec.name in VIDEOS:
            write_video(directory / spec.filename, spec, seed=n)
    return directory


@pytest.fixture(scope="module")
def job_config(videos, tmp_path_factory) -> tuple[Path, Path]:
    """(settings file, store): the job's settings as the RayJob mounts them from its ConfigMap."""
    from videopanda_cluster.model.tiny import ensure_tiny_checkpoint

    folder = tmp_path_factory.mktemp("job")
    checkpoint = ensure_tiny_checkpoint(folder / "tiny-112", image_size=112)
    settings = {
        "inputs": str(videos),
        "output": str(folder / "store"),
        "checkpoint": str(checkpoint),
        "shard_size": 1,
        "max_in_flight": 1,
        "max_new_tokens": 4,
        "decode_workers": 1,
    }
    path = folder / "job.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return path, folder / "store"


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process group started with start_new_session=True, and wait for it (a bit)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@contextlib.contextmanager
def ray_head(num_cpus: int) -> Iterator[tuple[str, subprocess.Popen]]:
    """A one-node Ray cluster in its own process group; yields (address, process)."""
    temp = Path(tempfile.mkdtemp(prefix="vp-ray-"))  # short: Ray's socket paths are limited
    port, dashboard, agent, metrics = _free_ports(4)
    cmd = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
        f"--port={port}", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
        f"--temp-dir={temp}", f"--num-cpus={num_cpus}", "--object-store-memory=200000000",
        "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
    ]  # fmt: skip
    log = temp / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            cmd, env=ENV, cwd=temp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.time() + 180
        while not (temp / "ray_current_cluster").exists():  # written once the head is up
            assert head.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", head
    finally:
        _kill_group(head)
        shutil.rmtree(temp, ignore_errors=True)


def _submit(config: Path, job_id: str, address: str, *extra: str) -> list[str]:
    """The RayJob's entrypoint: ``videopanda caption --config ... --job-id ... --address ...``."""
    return [
        sys.executable, "-m", "videopanda_cluster.cli", "caption", "--config", str(config),
        "--job-id", job_id, "--address", address, *extra,
    ]  # fmt: skip


def _status(store: Path, job_id: str) -> dict:
    result = CliRunner().invoke(app, ["status", job_id, "--output", str(store), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_resubmitting_after_head_loss_resumes_and_a_new_job_id_starts_afresh(job_config):
    config, store = job_config
    expected = {Path(name).stem for name in VIDEOS}

    # 1. First submission; the head (and the driver on it) is lost after 2 committed shards.
    with ray_head(num_cpus=3) as (address, head):
        driver = subprocess.Popen(
            _submit(config, JOB_ID, address),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while _committed(store) < 2 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.05)
        finished_early = driver.poll() is not None
        _kill_group(head)
        _kill_group(driver)
    assert not finished_early, "the first submission ended before the head was lost"
    ledger = Ledger.load(LocalStore(store), JOB_ID)
    done_before = ledger.committed()
    assert 2 <= len(done_before) < len(VIDEOS) == len(ledger.shard_ids())
    status = _status(store, JOB_ID)
    assert (status["committed_shards"], status["total_videos"]) == (len(done_before), len(VIDEOS))
    results = store / "jobs" / JOB_ID / "results"
    kept = {s: (results / "parquet" / f"shard-{s}.parquet").read_bytes() for s in done_before}

    # 2. The same command on a new cluster (another shape: operational settings may change).
    with ray_head(num_cpus=4) as (address, _):
        again = subprocess.run(
            _submit(config, JOB_ID, address, "--decode-workers", "2"),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        summary = json.loads((store / "jobs" / JOB_ID / "summary.json").read_text())
        assert summary["this_run"]["shards"] == len(VIDEOS) - len(done_before)
        for shard in done_before:  # committed shards were neither recomputed nor rewritten
            assert ledger.attempts(shard) == 1
            assert (results / "parquet" / f"shard-{shard}.parquet").read_bytes() == kept[shard]
        rows = read_rows(store, JOB_ID)
        assert sorted(r["video_id"] for r in rows) == sorted(expected)  # each exactly once
        assert _status(store, JOB_ID)["committed_videos"] == len(VIDEOS)

        # 3. Another job id with the same settings does not reuse the first job's ledger.
        attempts = {s: ledger.attempts(s) for s in ledger.shard_ids()}
        other = subprocess.run(
            _submit(config, f"{JOB_ID}-2", address),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert other.returncode == 0, other.stderr[-3000:]
    fresh = json.loads((store / "jobs" / f"{JOB_ID}-2" / "summary.json").read_text())
    assert fresh["this_run"]["shards"] == len(VIDEOS)
    second = Ledger.load(LocalStore(store), f"{JOB_ID}-2")
    assert all(second.attempts(s) == 1 for s in second.shard_ids())
    assert {s: ledger.attempts(s) for s in ledger.shard_ids()} == attempts
    assert {r["video_id"] for r in read_rows(store, f"{JOB_ID}-2")} == expected
