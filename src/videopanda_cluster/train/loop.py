"""One training stage: seeded data order, gradient accumulation, checkpoints and exact resume.

Global batch ``b`` of step ``k`` (epoch ``e = k // steps_per_epoch``) is a slice of a permutation
seeded with ``(seed, e)``; worker ``r`` of ``W`` takes the ``r``-th contiguous ``1/W`` of it and
splits that into micro-batches. The loss is the token mean over the whole global batch (summed CE
divided by the all-reduced count of supervised tokens), so the update does not depend on how the
batch is split across workers or micro-batches.

With distillation (``cfg.distill_weight`` > 0 and a teacher) the step's objective is
``CE_sum / T + w · D_sum / F``: D_sum sums the frame losses 1 − mean cos, F counts the frames
that enter L_distill in the global batch and T its supervised tokens (spec §7.3: a per-frame mean
over the global batch). Gradients are scaled by 1 / T after all micro-batches, as for CE alone, so
each micro-batch backpropagates ``CE_sum + (w · T / F) · D_sum``; T and F are known before the
first forward pass because they follow from the data alone (labels, masks, teacher validity,
length policy; ``distill.plan_counts``), all-reduced over the workers. The reported loss is the
total (CE mean + w · L_distill + the weighted focus and shape-attention token means when on), and
``StageResult.terms`` keeps each term unweighted, step by step. The compressor's weights
are saved in ``trainer_state.pt`` (key ``"compressor"``), never in the model folder.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..model.compressor import VideoCompressor
from ..model.modeling import VideoPanda
from ..storage import Store
from ..video.errors import VideoDecodeError
from .checkpoints import latest_step, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import Sample, SampleError, SampleStats, VideoConversationDataset
from .distill import Teacher, TeacherFeatures, plan_counts, teacher_targets
from .forward import FocusHead, TrainingModel
from .question_copy import QuestionCopyLoss
from .shape_attention import ShapeAttentionLoss
from .stages import StageConfig, autocast, build_optimizer, build_scheduler, set_trainable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel workers (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def from_torch(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, items: list) -> list:
        """Concatenate a small picklable list from every worker."""
        if self.size == 1:
            return items
        out: list[list] = [[] for _ in range(self.size)]
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


@dataclass(frozen=True)
class StepResult:
    step: int  # optimiser steps done
    total_steps: int
    loss: float  # the step's objective over the global batch (nan when it had no supervised token)
    tokens: int  # supervised tokens in the global batch
    lrs: dict[str, float]
    grad_norm: float | None
    checkpoint: str | None  # store prefix written after this step
    terms: dict[str, float] = field(default_factory=dict)  # StageResult.terms, this step's

    @property
    def distill(self) -> float | None:
        """L_distill over the global batch (None: off or no frame)."""
        return self.terms.get("distill")


@dataclass
class StageResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    # each term of the objective, unweighted, per step: "ce", "focus", "attend" as token means
    # and "distill" as L_distill (the loss is ce + the weighted others)
    terms: dict[str, list[float]] = field(default_factory=dict)
    stats: SampleStats = field(default_factory=SampleStats)
    checkpoint: str | None = None  # the last checkpoint written


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of the sample at ``position`` of epoch ``epoch``'s order (dropout, flip)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def total_steps(cfg: StageConfig, dataset_size: int) -> int:
    per_epoch = dataset_size // cfg.global_batch
    steps = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    if steps < 1:
        raise ValueError(f"{dataset_size} samples give no step of {cfg.global_batch}")
    return steps


def train_stage(
    model: VideoPanda,
    dataset: VideoConversationDataset,
    cfg: StageConfig,
    store: Store,
    prefix: str,
    *,
    world: World | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    resume: bool = True,
    teacher: Teacher | None = None,
    compressor: VideoCompressor | None = None,
) -> StageResult:
    """Train ``model`` for one stage, checkpointing to ``store`` under ``prefix``.

    With ``resume`` it continues from the newest complete checkpoint under ``prefix`` and ends
    with the same weights as a run that was never interrupted. ``wrap`` wraps the training
    module (DDP); ``on_step`` sees every step's result (raising there stops the run).

    ``cfg.distill_weight`` > 0 adds the distillation loss against ``teacher``, through
    ``compressor`` (trained in place; a new seeded one for the model and teacher when None, so
    pass the previous stage's to carry it over). With the weight 0 both are ignored.
    """
    world = world or World()
    seed_everything(cfg.seed)
    set_trainable(model, cfg.name)
    model.train()
    compressor = _distill_setup(model, cfg, teacher, compressor)
    focus = _focus_setup(model, cfg, dataset)
    attend = None
    if cfg.attend_weight:  # StageConfig: it comes with distillation, so with a teacher
        channels = getattr(teacher, "channels", None)
        attend = ShapeAttentionLoss(cfg.attend_layer, channels, dataset.tokenizer)
    copier = None
    if cfg.copy_weight:
        copier = QuestionCopyLoss(cfg.copy_layer, dataset.tokenizer, _focus_words(dataset))
    steps = total_steps(cfg, len(dataset))
    per_epoch = len(dataset) // cfg.global_batch
    accumulation = cfg.accumulation(world.size)
    optimizer = build_optimizer(model, cfg, compressor, focus)
    scheduler = build_scheduler(optimizer, cfg, steps)
    result = StageResult(steps=steps)
    start = latest_step(store, prefix) if resume else None
    if start is not None:
        state = load_checkpoint(store, prefix, start, model)
        if "config" in state:  # every checkpoint this version writes
            cfg.check_resumable(state["config"], f"checkpoint step {start} under {prefix!r}")
        if compressor is not None:
            if "compressor" not in state:
                raise ValueError(f"checkpoint step {start} under {prefix!r} has no compressor")
            compressor.load_state_dict(state["compressor"])
        if focus is not None:
            if "focus_head" not in state:
                raise ValueError(f"checkpoint step {start} under {prefix!r} has no focus head")
            focus.load_state_dict(state["focus_head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        result.losses = list(state["losses"])
        result.terms = {k: list(v) for k, v in state.get("terms", {}).items()}  # older: none
        result.stats.ids = {k: list(v) for k, v in state["stats"].items()}
        result.checkpoint = f"{prefix}/step-{start:08d}"
        log.info("resuming %s from step %d of %d", cfg.name, start, steps)
    inner = TrainingModel(model, compressor, focus, attend, copier)
    net = wrap(inner) if wrap else inner
    trainable = [p for p in model.parameters() if p.requires_grad]
    for head in (compressor, focus):
        if head is not None:
            trainable += list(head.parameters())
    shard = cfg.global_batch // world.size
    names = (
        "ce",
        *(["focus"] if focus is not None else []),
        *(["attend"] if attend is not None else []),
        *(["copy"] if copier is not None else []),
    )
    for step in range(start or 0, steps):
        epoch, index = divmod(step, per_epoch)
        order = epoch_order(cfg.seed, epoch, len(dataset))
        first = index * cfg.global_batch + world.rank * shard
        loss_sum, tokens = 0.0, 0
        term_sums = dict.fromkeys(names, 0.0)
        events: list[tuple[str, str]] = []
        batches = []
        for m in range(accumulation):
            positions = range(first + m * cfg.micro_batch, first + (m + 1) * cfg.micro_batch)
            batches.append(_load(dataset, order, positions, cfg.seed, epoch, events))
        plan = None
        if compressor is not None and teacher is not None:
            plan = _plan_distill(batches, cfg, model, teacher, world)
        distill_sum, frames = 0.0, 0
        for m, (samples, seeds) in enumerate(batches):
            extra: dict[str, Any] = {"focus_weight": cfg.focus_weight} if focus is not None else {}
            if attend is not None:
                extra["attend_weight"] = cfg.attend_weight
            if copier is not None:
                extra["copy_weight"] = cfg.copy_weight
            if plan is not None:
                extra |= {"targets": plan.targets[m], "distill_scale": plan.scale}
            sync = m == accumulation - 1 or not hasattr(net, "no_sync")
            with (
                contextlib.nullcontext() if sync else cast(Any, net).no_sync(),
                autocast(model.device, cfg.precision),
            ):
                loss, count, outcomes = net(samples, seeds, cfg.max_length, cfg.overflow, **extra)
            loss.backward()
            loss_sum += float(loss.detach())
            tokens += count
            for name in names:
                term_sums[name] += inner.term_sums.get(name, 0.0)
            events += [(o, s.id) for o, s in zip(outcomes, samples, strict=True) if o]
            if inner.distill_stats is not None:
                distill_sum += float(inner.distill_stats.frame_losses.sum())
                frames += inner.distill_stats.frames
        if plan is not None and plan.scale and (tokens, frames) != plan.local:
            raise RuntimeError(  # the data-only count disagrees with the forward pass
                f"step {step}: planned {plan.local} (tokens, frames), forward had "
                f"{(tokens, frames)}"
            )
        totals = world.all_reduce(
            torch.tensor([loss_sum, tokens, *term_sums.values()], dtype=torch.float64)
        )
        global_tokens = int(totals[1])
        grad_norm = None
        if global_tokens:
            for p in trainable:  # DDP averaged over workers; make it the global token mean
                if p.grad is not None:
                    p.grad.mul_(world.size / global_tokens)
            if cfg.max_grad_norm is not None:
                grad_norm = float(nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm))
            optimizer.step()
        else:
            log.warning("step %d: no supervised token in the global batch; update skipped", step)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        with warnings.catch_warnings():  # a skipped update is deliberate; the schedule moves on
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for reason, sample_id in world.gather(events):
            result.stats.record(reason, sample_id)
        loss_value = float(totals[0]) / global_tokens if global_tokens else float("nan")
        distill_value = None
        if plan is not None and plan.scale:
            summed = world.all_reduce(torch.tensor([distill_sum], dtype=torch.float64))
            distill_value = float(summed[0]) / plan.frames
        result.losses.append(loss_value)
        terms = {
            name: float(total) / global_tokens if global_tokens else float("nan")
            for name, total in zip(names, totals[2:].tolist(), strict=True)
        }
        if distill_value is not None:
            terms["distill"] = distill_value
        for name, value in terms.items():
            result.terms.setdefault(name, []).append(value)
        done = step + 1
        key = None
        if done % cfg.save_every == 0 or done == steps:
            state = {
                "step": done,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "losses": list(result.losses),
                "terms": {k: list(v) for k, v in result.terms.items()},
                "stats": result.stats.ids,
                "config": cfg.to_dict(),
            }
            if compressor is not None:
                state["compressor"] = compressor.state_dict()
            if focus is not None:
                state["focus_head"] = focus.state_dict()
            key = save_checkpoint(store, prefix, done, model, state) if world.rank == 0 else None
            result.checkpoint = f"{prefix}/step-{done:08d}"
            world.barrier()
        if on_step:
            on_step(
                StepResult(
                    done,
                    steps,
                    loss_value,
                    global_tokens,
                    lrs,
                    grad_norm,
                    key,
                    terms,
                )
            )
    if result.stats.ids:
        log.warning("%s: samples changed or left out: %s", cfg.name, result.stats.counts)
    return result


def _distill_setup(
    model: VideoPanda,
    cfg: StageConfig,
    teacher: Teacher | None,
    compressor: VideoCompressor | None,
) -> VideoCompressor | None:
    """The trainable compressor when this stage distils, else None."""
    if not cfg.distill_weight:
        return None
    if teacher is None:
        raise ValueError(f"distill_weight {cfg.distill_weight} needs a teacher (train_stage)")
    if compressor is None:  # after seed_everything: the same initial weights on every worker
        compressor = VideoCompressor.for_model(model.config, teacher.dim)
    elif compressor.teacher_width != teacher.dim or compressor.llm_width != model.config.llm_width:
        raise ValueError(
            f"compressor maps {compressor.llm_width} → {compressor.teacher_width}, the model and "
            f"teacher need {model.config.llm_width} → {teacher.dim}"
        )
    compressor.to(device=model.device, dtype=model.dtype)
    compressor.train()
    return compressor.requires_grad_(True)  # every stage (spec §7.1)


def _focus_setup(
    model: VideoPanda, cfg: StageConfig, dataset: VideoConversationDataset
) -> FocusHead | None:
    """The trainable question-focus head (forward.py) when this stage has the loss, else None."""
    if not cfg.focus_weight:
        return None
    head = FocusHead(model.config.llm_width, _focus_words(dataset), cfg.focus_layer)  # seeded
    return head.to(device=model.device, dtype=model.dtype).train().requires_grad_(True)


def _focus_words(dataset: VideoConversationDataset) -> list[str]:
    """The sorted focus words of the whole dataset (the same on every worker)."""
    return sorted({w for r in dataset.records for w in r.focus if w is not None})


@dataclass
class _DistillPlan:
    targets: list[list[TeacherFeatures]]  # per micro-batch, the teacher's features of each sample
    local: tuple[int, int]  # this worker's (supervised tokens, counted frames)
    tokens: int  # over the global batch
    frames: int
    scale: float  # distill_scale: w · T / F (0 when there is no frame or no token)


def _plan_distill(
    batches: list[tuple[list[Sample], list[int]]],
    cfg: StageConfig,
    model: VideoPanda,
    teacher: Teacher,
    world: World,
) -> _DistillPlan:
    """Teacher targets of the step's micro-batches and the global counts that normalise the
    distillation term (see the module docstring)."""
    targets = [teacher_targets(teacher, samples) for samples, _ in batches]
    tokens = frames = 0
    for (samples, _), batch_targets in zip(batches, targets, strict=True):
        t, f = plan_counts(samples, batch_targets, model.config, cfg.max_length, cfg.overflow)
        tokens, frames = tokens + t, frames + f
    totals = world.all_reduce(torch.tensor([tokens, frames], dtype=torch.float64))
    global_tokens, global_frames = int(totals[0]), int(totals[1])
    scale = cfg.distill_weight * global_tokens / global_frames if global_frames else 0.0
    return _DistillPlan(targets, (tokens, frames), global_tokens, global_frames, scale)


def _load(
    dataset: VideoConversationDataset,
    order: np.ndarray,
    positions: range,
    seed: int,
    epoch: int,
    events: list[tuple[str, str]],
) -> tuple[list[Sample], list[int]]:
    """Samples at ``positions`` of the epoch order; failures go to ``events`` (reason, id)."""
    samples, seeds = [], []
    for pos in positions:
        index = int(order[pos])
        s = sample_seed(seed, epoch, pos)
        try:
            samples.append(dataset.load(index, s))
            seeds.append(s)
        except SampleError as exc:
            log.warning("sample %d left out: %s", index, exc)
            events.append(("bad_text", dataset.records[index].id))
        except VideoDecodeError as exc:
            log.warning("sample %d left out: %s", index, exc)
            events.append(("video_error", dataset.records[index].id))
    return samples, seeds
