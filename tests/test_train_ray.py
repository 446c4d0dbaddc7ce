"""Ray Train: two DDP workers (gloo, CPU) follow one worker with the same global batch."""

from __future__ import annotations

import io
from dataclasses import asdict

import pytest
import torch

from tests.test_train_helpers import build, tiny_model
from videopanda_cluster.storage import LocalStore
from videopanda_cluster.train.checkpoints import STATE_FILE, latest_step
from videopanda_cluster.train.ray_train import RayStageJob, run_stage
from videopanda_cluster.train.stages import stage_config

STEPS = 4
RTOL = 1e-4


@pytest.fixture(scope="module")
def ray_cpu():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _losses(store: LocalStore, prefix: str) -> list[float]:
    step = latest_step(store, prefix)
    key = f"{prefix}/step-{step:08d}/{STATE_FILE}"
    return torch.load(io.BytesIO(store.get(key)), weights_only=True)["losses"]


def test_two_workers_follow_one_worker(ray_cpu, tmp_path):
    _, tokenizer, data = build(tmp_path)
    model = tiny_model(tokenizer)
    model.save_pretrained(tmp_path / "init")
    # 4 samples, global batch 2: one worker accumulates 2 micro-batches, two workers take 1 each
    cfg = stage_config("pretrain", global_batch=2, micro_batch=1, save_every=STEPS, epochs=2)
    store = LocalStore(tmp_path / "store")
    losses = {}
    for workers in (1, 2):
        job = RayStageJob(
            model=str(tmp_path / "init"),
            data=str(data),
            video_root=str(data.parent),
            store=str(tmp_path / "store"),
            prefix=f"w{workers}",
            stage=asdict(cfg),
            isolate=False,
            threads=1,
        )
        result = run_stage(job, num_workers=workers, use_gpu=False, storage_path=str(tmp_path))
        assert result.error is None
        assert latest_step(store, f"w{workers}") == STEPS
        losses[workers] = _losses(store, f"w{workers}")
    one, two = torch.tensor(losses[1]), torch.tensor(losses[2])
    assert one.shape == (STEPS,)
    assert one[0] == two[0]  # same samples, same dropout, same weights: the very same loss
    torch.testing.assert_close(two, one, rtol=RTOL, atol=0)
    print("max relative loss difference, 1 vs 2 workers:", float(((two - one) / one).abs().max()))
