"""Data-parallel training with Ray Train: DDP over N workers (gloo on CPU, nccl on GPU).

Every worker loads the model from an HF-layout folder, trains its shard of each global batch with
:func:`train_stage` and reports each step's loss with ``ray.train.report``; rank 0 writes the
checkpoints to the store. The global batch (and so the update) is the same for any worker count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..model.config import AttentionImpl
from .stages import StageConfig


@dataclass(frozen=True)
class RayStageJob:
    """Everything a worker needs, as plain values (it is shipped to every worker)."""

    model: str  # HF-layout folder with the tokenizer, readable by every worker
    data: str  # reference conversation JSON
    video_root: str
    store: str  # store URL for checkpoints
    prefix: str
    stage: dict[str, Any]  # StageConfig fields
    flip: bool = True
    system_prompt: str = "train"  # key of data.SYSTEM_PROMPTS
    isolate: bool = True  # decode videos in a killable child process
    threads: int | None = None  # torch intra-op threads per worker
    # Precomputed teacher features for the distillation loss (StoredTeacher): store URL, prefix.
    teacher_store: str | None = None
    teacher_prefix: str = "teacher"
    report_every: int = 10  # steps between ray.train.report calls (a sync point of all workers)
    # The Llama's attention while training: "eager" (the reference's numerics) or "sdpa" (the
    # same maths in one fused kernel; faster, equal in fp32 up to rounding).
    attention: AttentionImpl = "eager"

    def load_model(self, device: torch.device | str = "cpu"):
        """The job's starting model (fp32) on ``device``, with the job's attention."""
        from ..model.modeling import VideoPanda

        model = VideoPanda.from_pretrained(self.model, device=device, dtype=torch.float32)
        model.set_attention(self.attention)
        return model

    def dataset(self, model, frames=None):
        """The job's training records over its videos, prepared for ``model``; ``frames``: a
        ``FrameCache`` shared with other stages of a run in this process (None: its own)."""
        from .data import VideoConversationDataset, load_records, system_prompt

        return VideoConversationDataset(
            load_records(self.data),
            self.video_root,
            model.tokenizer,
            num_frames=model.config.num_frames,
            size=model.config.image_size,
            system=system_prompt(self.system_prompt),
            flip=self.flip,
            isolate=self.isolate,
            frames=frames,
        )

    def teacher(self):
        """The stored teacher, or None when the job has none."""
        if self.teacher_store is None:
            return None
        from ..storage import open_store
        from .distill import StoredTeacher

        return StoredTeacher(open_store(self.teacher_store), self.teacher_prefix)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: ``config`` is ``asdict(RayStageJob)``."""
    import ray.train
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    from ..storage import open_store
    from .loop import StepResult, World, train_stage

    job = RayStageJob(**config)
    if job.threads:
        torch.set_num_threads(job.threads)
    device = ray.train.torch.get_device()
    model = job.load_model(device)
    dataset = job.dataset(model)

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        ids = [device] if device.type == "cuda" else None
        # lmhra2 (and, in stage 1, nothing of the LLM) gets no gradient: unused parameters
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def report(step: StepResult) -> None:
        if step.step % job.report_every and step.step != step.total_steps:
            return
        terms = {f"loss_{name}": value for name, value in step.terms.items()}
        ray.train.report(
            {"step": step.step, "loss": step.loss, "tokens": step.tokens, **terms, **step.lrs}
        )

    train_stage(
        model,
        dataset,
        StageConfig(**job.stage),
        open_store(job.store),
        job.prefix,
        world=World.from_torch(),
        wrap=wrap,
        on_step=report,
        teacher=job.teacher(),
    )


def run_stage(job: RayStageJob, num_workers: int, use_gpu: bool, storage_path: str):
    """Run one stage on ``num_workers`` Ray workers; returns Ray's ``Result``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(job),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=job.prefix.replace("/", "-"), storage_path=storage_path),
    )
    return trainer.fit()
