"""Ray Train: two DDP workers (gloo, CPU) follow one worker with the same global batch.

Stated tolerance: over the first 50 optimiser steps every loss of the 2-worker run is within a
relative 1e-4 of the 1-worker run's, and the final weights are within 1e-4 (absolute). BatchNorm
running statistics are not compared: each worker updates them from its own videos and DDP keeps
rank 0's, so a 2-worker model's eval-mode statistics come from half the videos.
"""

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

STEPS = 50
RTOL = 1e-4
WEIGHT_ATOL = 1e-4
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


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


def _weights(store: LocalStore, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    folder = f"{prefix}/step-{latest_step(store, prefix):08d}/"
    tensors: dict[str, torch.Tensor] = {}
    for key in store.list(folder):
        if key.endswith(".safetensors"):
            tensors.update(load(store.get(key)))
    return tensors


@pytest.mark.slow
def test_two_workers_follow_one_worker(ray_cpu, tmp_path):
    _, tokenizer, data = build(tmp_path)
    model = tiny_model(tokenizer)
    model.save_pretrained(tmp_path / "init")
    # 4 samples, global batch 2: one worker accumulates 2 micro-batches, two workers take 1 each
    cfg = stage_config(
        "pretrain",
        visual_lr=1e-3,
        llm_lr=1e-3,
        global_batch=2,
        micro_batch=1,
        save_every=STEPS,
        epochs=25,
    )
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
    assert one[-1] < one[0] * 0.8  # it trained: 50 steps on 4 samples bring the loss down
    final = {w: _weights(store, f"w{w}") for w in (1, 2)}
    assert final[1].keys() == final[2].keys()
    for name, tensor in final[1].items():
        if name.rpartition(".")[2] in BN_STATS:  # each worker's own videos; rank 0's are saved
            continue
        torch.testing.assert_close(final[2][name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)
