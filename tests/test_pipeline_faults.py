"""Faults during the main job: a worker node dies; the driver is killed and the job rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_pipeline import job, read_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_nodes():
    """A head (no CPUs: drivers only) and two 4-CPU worker nodes, all on 127.0.0.1."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=4) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def _committed(store: Path) -> int:
    return len(list(store.glob("jobs/*/shards/*.done")))


def test_losing_a_worker_node_mid_job_keeps_every_row_once(three_nodes, inputs_dir, tmp_path):
    cluster, workers = three_nodes
    result: dict = {}

    def run() -> None:
        result["summary"] = job("caption", inputs_dir, tmp_path, shard_size=2, max_in_flight=2)[1]

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 300
    while _committed(tmp_path) < 1 and time.time() < deadline:
        time.sleep(0.2)
    assert _committed(tmp_path) >= 1, "no shard committed in time"
    cluster.remove_node(workers[0])  # kills its raylet and every actor on it
    thread.join(timeout=600)
    assert not thread.is_alive()
    rows = read_rows(tmp_path, result["summary"]["job_id"])
    assert len(rows) == 16
    assert len({r["video_id"] for r in rows}) == 16
    assert result["summary"]["progress"]["committed_videos"] == 16


def test_killed_driver_resumes_with_only_uncommitted_shards(inputs_dir, tmp_path):
    from videopanda_cluster.jobs.ledger import Ledger
    from videopanda_cluster.storage.local import LocalStore

    cmd = [
        sys.executable, "-m", "videopanda_cluster.cli", "caption", str(inputs_dir),
        "--output", str(tmp_path), "--shard-size", "2", "--max-in-flight", "1",
        "--max-new-tokens", "4", "--job-id", "resume-me",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    first = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _committed(tmp_path) < 2 and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started
    first.wait()
    ledger = Ledger.load(LocalStore(tmp_path), "resume-me")
    done_before = ledger.committed()
    assert 2 <= len(done_before) < len(ledger.shard_ids())
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    rows = read_rows(tmp_path, "resume-me")
    assert len(rows) == 16 and len({r["video_id"] for r in rows}) == 16
    for shard in ledger.shard_ids():
        if shard in done_before:
            assert ledger.attempts(shard) == 1  # never recomputed
    summary = json.loads((tmp_path / "jobs" / "resume-me" / "summary.json").read_text())
    assert summary["this_run"]["shards"] == len(ledger.shard_ids()) - len(done_before)
