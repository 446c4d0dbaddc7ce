"""Reruns of a job on real Ray: edited manifests (refused, or ``--update``d) and two drivers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.azurite import azurite as azurite_fixture  # noqa: F401
from tests.test_pipeline import (
    job,
    ray_local,  # noqa: F401
    read_rows,
)
from videopanda_cluster.jobs.failures import JobLocked
from videopanda_cluster.jobs.lease import lease_key
from videopanda_cluster.jobs.ledger import InputsChanged, Ledger
from videopanda_cluster.storage import LocalStore

pytestmark = pytest.mark.usefixtures("ray_local")  # real Ray, shared with test_pipeline
SMALL = {"shard_size": 2, "max_new_tokens": 4, "decode_workers": 1, "max_in_flight": 1}


def write_manifest(path: Path, videos: dict[str, Path]) -> Path:
    path.write_text(
        "".join(json.dumps({"video_id": v, "uri": str(u)}) + "\n" for v, u in videos.items())
    )
    return path


@pytest.fixture
def videos(inputs_dir) -> dict[str, Path]:
    good = sorted(p for p in inputs_dir.iterdir() if not p.name.startswith("corrupt"))
    return {f"v{i}": path for i, path in enumerate(good[:5])}


@pytest.mark.slow
def test_an_edited_manifest_is_refused_then_updated(videos, tmp_path):
    manifest = write_manifest(tmp_path / "daily.jsonl", {v: videos[v] for v in ("v0", "v1", "v2")})
    out = tmp_path / "out"
    _, first = job("caption", manifest, out, **SMALL)
    job_id = first["job_id"]
    assert first["progress"]["committed_videos"] == 3

    # the next day: v1 is gone, v3 and v4 arrived; the same command (same default job id)
    write_manifest(manifest, {v: videos[v] for v in ("v0", "v2", "v3", "v4")})
    with pytest.raises(InputsChanged) as info:
        job("caption", manifest, out, **SMALL)
    message = str(info.value)
    assert f"job {job_id} was planned from other inputs" in message
    assert "2 added ('v3', 'v4'), 1 removed ('v1')" in message and "--update" in message

    _, updated = job("caption", manifest, out, update=True, **SMALL)
    assert updated["job_id"] == job_id
    assert updated["this_run"]["videos"] == 2 and updated["this_run"]["shards"] == 1
    report = updated["inputs_update"]
    assert report["new_shards"] == ["000002"] and report["added_examples"] == ["v3", "v4"]
    assert report["removed_examples"] == ["v1"] and report["dropped_videos"] == 0
    ledger = Ledger.load(LocalStore(out), job_id)
    assert {s: ledger.attempts(s) for s in ledger.shard_ids()} == {
        "000000": 1,  # committed before the update: never run again
        "000001": 1,
        "000002": 1,
    }
    rows = read_rows(out, job_id)
    assert sorted(r["video_id"] for r in rows) == ["v0", "v1", "v2", "v3", "v4"]  # v1's row stays
    # and now the inputs are those of the plan: a plain rerun has nothing to do
    _, again = job("caption", manifest, out, **SMALL)
    assert again["this_run"]["shards"] == 0 and "inputs_update" not in again


@pytest.mark.slow
def test_a_video_removed_before_it_ran_is_reported_not_processed(videos, tmp_path):
    from videopanda_cluster.cluster.driver import plan_job
    from videopanda_cluster.jobs.config import build_config

    manifest = write_manifest(tmp_path / "m.jsonl", {v: videos[v] for v in ("v0", "v1", "v2")})
    out = tmp_path / "out"
    cfg = build_config(
        {}, {"kind": "caption", "inputs": str(manifest), "output": str(out), **SMALL}
    )
    plan_job(cfg, LocalStore(out))  # a driver planned the job, then died before any shard ran
    write_manifest(manifest, {v: videos[v] for v in ("v0", "v2")})
    with pytest.raises(InputsChanged, match=r"1 removed \('v1'\)"):
        job("caption", manifest, out, **SMALL)
    _, summary = job("caption", manifest, out, update=True, **SMALL)
    assert summary["inputs_update"]["dropped_examples"] == ["v1"]
    assert summary["this_run"]["videos"] == 2
    assert sorted(r["video_id"] for r in read_rows(out, summary["job_id"])) == ["v0", "v2"]


@pytest.mark.slow
def test_a_second_driver_of_a_running_job_is_refused(videos, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", videos)
    out = tmp_path / "out"
    store = LocalStore(out)
    settings = {**SMALL, "shard_size": 1, "job_id": "shared"}
    result: dict = {}

    def first_driver() -> None:
        result["summary"] = job("caption", manifest, out, **settings)[1]

    thread = threading.Thread(target=first_driver)
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline and not store.list("jobs/shared/attempts/"):
        time.sleep(0.1)
    assert store.exists(lease_key("shared"))
    started = time.time()
    with pytest.raises(JobLocked) as info:
        job("caption", manifest, out, **settings)
    assert time.time() - started < 30
    assert "job shared is being run by" in str(info.value) and " since " in str(info.value)
    thread.join(timeout=600)
    assert result["summary"]["progress"]["committed_videos"] == 5
    ledger = Ledger.load(store, "shared")
    assert all(ledger.attempts(s) == 1 for s in ledger.shard_ids())  # every shard ran once
    assert len(read_rows(out, "shared")) == 5


@pytest.mark.slow
def test_a_crashed_drivers_lease_is_taken_over(videos, tmp_path):
    from tests.test_lease import crashed_lease, held

    manifest = write_manifest(tmp_path / "m.jsonl", {"v0": videos["v0"]})
    out = tmp_path / "out"
    store = LocalStore(out)
    crashed_lease(store, "resumed", silent_for=600)
    _, summary = job("caption", manifest, out, job_id="resumed", **SMALL)
    assert summary["progress"]["committed_videos"] == 1
    assert held(store, "resumed").released_at is not None


@pytest.mark.slow
def test_the_command_refuses_changed_inputs_and_takes_update(videos, tmp_path):
    from tests.test_cli import _cli

    manifest = write_manifest(tmp_path / "m.jsonl", {v: videos[v] for v in ("v0", "v1")})
    out = tmp_path / "out"
    _, first = job("caption", manifest, out, **SMALL)
    write_manifest(manifest, {v: videos[v] for v in ("v0", "v2")})
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    command = ["caption", str(manifest), "--output", str(out), *flags]
    refused = _cli(*command)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "planned from other inputs: 1 added ('v2'), 1 removed ('v1')" in " ".join(
        refused.stdout.split()
    )
    updated = _cli(*command, "--update", timeout=600)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "inputs update: removed videos" in updated.stdout and "1 (v1)" in updated.stdout
    summary = json.loads((out / "jobs" / first["job_id"] / "summary.json").read_text())
    assert summary["this_run"]["videos"] == 1 and summary["inputs_update"]["added_videos"] == 1
