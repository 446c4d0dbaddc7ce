"""Scene warm-up: a warm start for STAB + projector of a model trained from random weights.

The reference does not train STAB from scratch: its stage 1 starts from EVE's weights (spec §7.1)
and distils a pretrained video encoder (§7.3). A random small model has neither, and its near-linear
visual path (patch embedding, LSTE and the position convolution are linear) learns shape kind from
the language loss too slowly for a CPU budget (docs/training.md). This warm-up stands in for the
missing warm start, a deliberate deviation used by the bundled small model: before stage 1, STAB and
the projector are fitted for ``steps`` steps to per-cell labels read off a ``videopanda synth``
corpus's ground truth (``metadata.json``, as ``scene_teacher.py``): for every sampled frame and STAB
token, the shape kind covering most of its cell (or "none" below ``min_cover``, unless the cell
holds a large share of a small shape: ``peak_share``), and the motion (a direction, still or none)
of the shape covering it; colour labels and each frame's set of (kind,
colour) pairs read from its mean token are available (``groups``) but not used by the recipe (colour
learns from the language loss; "pairs" did not help, and a per-cell colour head beside kind and
motion cost shape accuracy, docs/training.md "Eighth round"). Motion was left to the
distillation until its small shapes learned the axis but not the sense of a motion ("Seventh
round"). One linear head per label group reads the projected tokens; the heads are dropped
afterwards and the LLM is not touched. It is privileged information, used in training only;
evaluation sees videos alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.modeling import VideoPanda
from ..video.normalize import to_model_input
from .config import WARMUP_GROUPS, Precision, check_precision
from .data import FrameCache
from .distill import align_targets, frame_grid, student_positions
from .scene_teacher import CHANNELS, SceneTeacherOptions, scene_features
from .stages import autocast
from .synth import SynthVideo, load_metadata, video_path

GROUPS: dict[str, tuple[int, ...]] = {  # label group → its CHANNELS indices
    group: tuple(i for i, name in enumerate(CHANNELS) if name.startswith(f"{group}:"))
    for group in ("kind", "colour", "motion")
}
PAIRS = len(GROUPS["kind"]) * len(GROUPS["colour"])  # (kind, colour) pairs: kind · 4 + colour
# Classes per head, "none" not counted. The cell groups label each token; "pairs" labels a
# frame with the set of (kind, colour) pairs it shows, read from the *mean* of its tokens: tokens
# whose kind and colour features merely add up lose under averaging which colour goes with which
# kind, so this head asks for features that bind the two (docs/training.md, "Fifth round").
CLASSES: dict[str, int] = {
    **{group: len(channels) for group, channels in GROUPS.items()},
    "pairs": PAIRS,
}


@dataclass(frozen=True)
class WarmupConfig:
    """Optimiser steps, videos per step, AdamW settings (linear warmup, cosine decay)."""

    steps: int = 800
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    min_cover: float = 0.2  # a cell's label is "none" when no class covers this much of it...
    # ...unless its class covers at least this share of the class's largest cover in the frame:
    # a small shape (a default radius in a 640x272 frame is under 0.2 of every 28-px cell at
    # 168 px) keeps the cells that hold most of it instead of teaching "none" (None: off).
    peak_share: float | None = 0.5
    none_weight: float = 0.2  # CE weight of the "none" class (most cells are background)
    groups: tuple[str, ...] = WARMUP_GROUPS  # label groups with a head (docs/training.md)
    schedule: str = "constant"  # after the linear warmup: "constant" or "cosine" (to 0)
    seed: int = 0
    split: str = "train"
    precision: Precision | None = None  # of the passes, as the stages' (stages.autocast)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"steps and batch must be at least 1, got {self.steps}, {self.batch}")
        unknown = sorted(set(self.groups) - set(CLASSES))
        if unknown or not self.groups:
            raise ValueError(f"groups must be among {', '.join(CLASSES)}, got {self.groups}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be constant or cosine, got {self.schedule!r}")


def cell_labels(
    cover: torch.Tensor, min_cover: float, peak_share: float | None = None
) -> dict[str, torch.Tensor]:
    """(cells, channels) cover of one frame at weight 1 → per group of :data:`GROUPS` (cells,)
    class ids, the group's size (one past its last class) meaning "none"; and ``"pair"``, the
    covering shape's (kind, colour) pair id, :data:`PAIRS` for none. A cell is labelled with its
    largest class if that covers ``min_cover`` of it or, with ``peak_share``, at least that share
    of the class's largest cover over the frame's cells."""
    labels = {}
    for group, channels in GROUPS.items():
        values = cover[:, list(channels)]  # (cells, classes)
        best, index = values.max(dim=1)
        keep = best >= min_cover
        if peak_share is not None:
            peak = values.max(dim=0).values[index]  # the cell's class at its fullest cell
            keep |= (best > 0) & (best >= peak_share * peak)
        labels[group] = torch.where(keep, index, len(channels))
    kind, colour = labels["kind"], labels["colour"]
    both = (kind < CLASSES["kind"]) & (colour < CLASSES["colour"])
    labels["pair"] = torch.where(both, kind * CLASSES["colour"] + colour, PAIRS)
    return labels


class CellHeads(nn.Module):
    """One linear classifier per cell group over a projected token (classes + "none"), and for
    ``"pairs"`` a multi-label one over a frame's mean token."""

    def __init__(self, width: int, groups: tuple[str, ...] = tuple(CLASSES)) -> None:
        super().__init__()
        sizes = {g: CLASSES[g] + (g != "pairs") for g in groups}
        self.heads = nn.ModuleDict({g: nn.Linear(width, n) for g, n in sizes.items()})

    def forward(self, frames: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per frame its (cells, D) tokens → per cell group (all cells, classes + 1); for
        "pairs", (frames, PAIRS)."""
        cells = torch.cat(frames)
        return {
            group: head(torch.stack([f.mean(0) for f in frames]) if group == "pairs" else cells)
            for group, head in self.heads.items()
        }


def pair_sets(labels: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Per frame's cell labels → (frames, PAIRS) multi-hot of the pairs its cells show."""
    sets = torch.zeros(len(labels), PAIRS)
    for row, frame in enumerate(labels):
        present = frame["pair"][frame["pair"] < PAIRS]
        sets[row, present] = 1.0
    return sets


@dataclass
class _Clip:
    frames: np.ndarray  # (T, S, S, 3) uint8, letterboxed as at inference
    geometry: Any
    labels: list[dict[str, torch.Tensor]]  # per frame, per group: (valid cells,) class ids


def load_clips(
    corpus: str | Path, model: VideoPanda, cfg: WarmupConfig, frames: FrameCache | None = None
) -> list[_Clip]:
    """Decode the ``cfg.split`` videos like training does (through ``frames``, a cache the
    stages after the warm-up reuse) and label their valid cells."""
    config = model.config
    options = SceneTeacherOptions(
        image_size=config.image_size,
        num_frames=config.num_frames,
        kind_weight=1.0,
        motion_weight=1.0,
        background_weight=1.0,
    )
    cache = frames if frames is not None else FrameCache()
    videos = [video for video, split in load_metadata(corpus) if split == cfg.split]

    def decode(video: SynthVideo) -> tuple[np.ndarray, Any]:
        return cache.decode(
            Path(corpus) / video_path(video.name), config.num_frames, config.image_size
        )

    clips = []
    # One thread decodes ahead, in order (its decoder process uses the other core), while this
    # one labels the clip before: the same clips, in less time.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warmup-decode")
    try:
        for video, (pixels, geometry) in zip(videos, pool.map(decode, videos), strict=True):
            masks = to_model_input(pixels, geometry, config.num_frames)[:, 3]
            cover = scene_features(video, options).tokens
            labels = []
            for k in range(config.num_frames):
                aligned = align_targets(cover[k], masks[k], frame_grid(masks[k], config), config)
                labels.append(cell_labels(aligned, cfg.min_cover, cfg.peak_share))
            clips.append(_Clip(pixels, geometry, labels))
    finally:
        pool.shutdown(cancel_futures=True)
    if not clips:
        raise ValueError(f"{corpus}: no {cfg.split} videos to warm up on")
    return clips


def _cell_tokens(model: VideoPanda, pixels: torch.Tensor) -> list[torch.Tensor]:
    """(N, T, 4, S, S) → per frame (clip-major) its projected spatial tokens (h·w, D)."""
    config = model.config
    clips = pixels.reshape(-1, config.chunk_size, *pixels.shape[2:])
    frames, grids = model.video_tower(clips)
    projected = model.video_projector(torch.cat(frames)).split([f.shape[0] for f in frames])
    return [
        tokens[student_positions(0, grid, tokens.shape[0], config)]
        for tokens, grid in zip(projected, grids, strict=True)
    ]


def warm_up(
    model: VideoPanda,
    corpus: str | Path,
    cfg: WarmupConfig = WarmupConfig(),
    log: Callable[[str], None] | None = None,
    frames: FrameCache | None = None,
) -> dict[str, Any]:
    """Fit ``model``'s STAB and projector in place; returns a summary (losses, per-group cell
    accuracy over the last tenth of the steps, for "pairs" the share of frames whose whole set
    is right, seconds). ``frames``: a decode cache to share with the stages after it."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    began = time.monotonic()
    torch.manual_seed(cfg.seed)
    clips = load_clips(corpus, model, cfg, frames)
    heads = CellHeads(model.config.llm_width, cfg.groups).to(model.device)
    params = [*model.video_tower.parameters(), *model.video_projector.parameters()]
    params += list(heads.parameters())
    trainable = [p.requires_grad for p in params]
    for p in params:  # a loaded model comes back frozen
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(np.ceil(cfg.warmup_ratio * cfg.steps))
    if cfg.schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, cfg.steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    rng = np.random.default_rng([cfg.seed, 7])
    tower_mode = model.video_tower.training
    model.video_tower.train()
    losses, hits, counts = [], dict.fromkeys(cfg.groups, 0), dict.fromkeys(cfg.groups, 0)
    class_weights = {
        g: torch.tensor([1.0] * CLASSES[g] + [cfg.none_weight], device=model.device)
        for g in cfg.groups
        if g != "pairs"
    }
    tail = cfg.steps - max(1, cfg.steps // 10)
    for step in range(cfg.steps):
        picks = rng.choice(len(clips), size=min(cfg.batch, len(clips)), replace=False)
        batch = [clips[i] for i in picks]
        pixels = torch.stack(
            [to_model_input(c.frames, c.geometry, model.config.num_frames) for c in batch]
        ).to(model.device, model.dtype)
        with autocast(model.device, cfg.precision):
            logits = heads(_cell_tokens(model, pixels))
        loss = torch.zeros((), device=model.device)
        for group in cfg.groups:
            if group == "pairs":
                target = pair_sets([f for c in batch for f in c.labels]).to(model.device)
                bce = F.binary_cross_entropy_with_logits(
                    logits[group].float(), target, reduction="sum"
                )
                loss = loss + bce / target.shape[0]  # summed over the pairs, mean over frames
                right = ((logits[group] > 0) == target.bool()).all(1)  # the exact set
            else:
                target = torch.cat([f[group] for c in batch for f in c.labels]).to(model.device)
                loss = loss + F.cross_entropy(logits[group].float(), target, class_weights[group])
                right = logits[group].argmax(1) == target
            if step >= tail:
                hits[group] += int(right.sum())
                counts[group] += right.numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log and (step % 100 == 0 or step == cfg.steps - 1):
            log(f"warm-up step {step + 1}/{cfg.steps}: loss {losses[-1]:.4f}")
    model.video_tower.train(tower_mode)
    for p, flag in zip(params, trainable, strict=True):
        p.requires_grad_(flag)
    return {
        "config": asdict(cfg),
        "videos": len(clips),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "losses": losses,
        "cell_accuracy_last_tenth": {g: hits[g] / max(counts[g], 1) for g in cfg.groups},
        "seconds": round(time.monotonic() - began, 3),
    }
