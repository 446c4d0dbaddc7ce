"""The three training stages (spec §7.1): what trains, learning rates, optimiser and schedule."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import nn

from .config import RECIPE_STAGES, Precision, changed_settings, check_precision

StageName = Literal["prealign", "pretrain", "finetune"]
# bf16 on CUDA as the reference; fp32 elsewhere (a CPU without bf16 units gains nothing from it).
DEVICE_PRECISION: dict[str, Precision] = {"cuda": "bf16"}
# The distillation head (training only) trains with STAB at the visual LR in every stage (§7.1).
VISUAL_MODULES = ("video_tower", "video_projector", "video_tower_compressor")
# What a stage may change when it resumes or is reused: how often it saves and how a global batch
# is split over workers and passes; every other setting changes what it trains.
RESUME_FREE = ("save_every", "micro_batch")


@dataclass(frozen=True)
class StageConfig:
    """One stage's hyper-parameters. ``global_batch`` samples per optimiser step, summed over
    workers and accumulation; each forward pass holds ``micro_batch`` samples per worker."""

    name: StageName
    visual_lr: float  # STAB + projector (+ the distillation head)
    llm_lr: float
    warmup_ratio: float
    global_batch: int
    micro_batch: int
    save_every: int
    epochs: int = 1
    max_steps: int | None = None  # cap on optimiser steps (the schedule spans the capped run)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # The reference effectively trained without clipping (DeepSpeed's default 0 applies; HF's
    # max_grad_norm is not forwarded, spec §7). We clip by default; None turns it off.
    max_grad_norm: float | None = 1.0
    max_length: int = 4096  # tokens of the spliced sequence (text + visual)
    overflow: Literal["truncate", "skip"] = "truncate"
    seed: int = 42
    # Weight of the distillation loss (spec §7.3; the reference trains with 1). 0 = off: plain CE
    # and no teacher. > 0 needs a teacher passed to train_stage (see distill.py).
    distill_weight: float = 0.0
    # Weight of the question-focus loss (forward.py; training only, not in the reference): at each
    # answer with a focus word, a linear head on the Llama's hidden state after ``focus_layer``
    # layers at the position that predicts the answer must name the word the question is about.
    focus_weight: float = 0.0
    focus_layer: int = 1
    # Weight of the shape-attention loss (shape_attention.py; training only, not in the
    # reference): at each answer position, Llama layer ``attend_layer`` (1-based) should attend
    # to the video's shape cells, which the scene teacher marks; > 0 needs distill_weight > 0.
    attend_weight: float = 0.0
    attend_layer: int = 2
    # Weight of the question-copy loss (question_copy.py; training only, not in the reference):
    # at each answer with a focus word, some head of Llama layer ``copy_layer`` (1-based) should
    # attend to that word in the question.
    copy_weight: float = 0.0
    copy_layer: int = 1
    precision: Precision | None = None  # None: the device's (DEVICE_PRECISION)

    def __post_init__(self) -> None:
        if self.name not in RECIPE_STAGES:
            raise ValueError(f"unknown stage {self.name!r}")
        check_precision(self.precision)
        if not self.distill_weight >= 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        for loss in ("focus", "attend", "copy"):  # each training-only loss: a weight and a layer
            weight, layer = getattr(self, f"{loss}_weight"), getattr(self, f"{loss}_layer")
            if not weight >= 0 or layer < 1:
                raise ValueError(
                    f"{loss}_weight must be >= 0 and {loss}_layer >= 1, got {weight}, {layer}"
                )
        if self.attend_weight and not self.distill_weight:
            raise ValueError(
                "attend_weight needs distill_weight > 0: the scene teacher's targets mark the "
                "shape cells"
            )
        if self.global_batch < 1 or self.micro_batch < 1 or self.global_batch % self.micro_batch:
            raise ValueError("global_batch must be a positive multiple of micro_batch")
        if self.overflow not in ("truncate", "skip"):
            raise ValueError(f"overflow must be 'truncate' or 'skip', got {self.overflow!r}")

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per worker and optimiser step."""
        per_worker, rest = divmod(self.global_batch, world_size * self.micro_batch)
        if rest or not per_worker:
            raise ValueError(
                f"global_batch {self.global_batch} is not a multiple of "
                f"{world_size} workers × micro_batch {self.micro_batch}"
            )
        return per_worker

    def to_dict(self) -> dict:
        return asdict(self)

    def check_resumable(self, stored: Mapping[str, Any], where: str) -> None:
        """Refuse to continue or reuse ``where`` (trained with the settings ``stored``) unless
        only RESUME_FREE settings differ."""
        # A setting added after ``stored`` was written counts as its default there.
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        changed = changed_settings({**defaults, **stored}, self.to_dict(), RESUME_FREE)
        if changed:
            raise ValueError(
                f"{self.name} {where} was trained with other settings ({', '.join(changed)}); "
                "use a new output store"
            )


# The numeric settings a recipe may set per stage (RecipeConfig.stage_set, `--stage-set`): the
# batch sizes and checkpoint interval come from the recipe's own options instead.
STAGE_SETTINGS = {
    f.name: int if str(f.type).startswith("int") else float
    for f in fields(StageConfig)
    if str(f.type).split(" ")[0] in ("int", "float")
    and f.name not in ("global_batch", "micro_batch", "save_every")
}


# The reference scripts' settings (64 GPUs); override batch sizes for other clusters.
PRESETS: dict[str, StageConfig] = {
    "prealign": StageConfig("prealign", 4e-4, 4e-5, 0.03, 512, 8, save_every=200),
    "pretrain": StageConfig("pretrain", 4e-5, 4e-5, 0.01, 512, 8, save_every=300),
    "finetune": StageConfig("finetune", 2e-5, 2e-5, 0.01, 256, 4, save_every=400),
}


def stage_config(name: str, **overrides) -> StageConfig:
    """A preset with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown stage {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def is_visual(name: str) -> bool:
    return name.split(".", 1)[0] in VISUAL_MODULES


def set_trainable(model: nn.Module, stage: StageName) -> None:
    """prealign: STAB and projector only (LLM frozen); pretrain/finetune: everything."""
    for name, p in model.named_parameters():
        p.requires_grad_(stage != "prealign" or is_visual(name))


def param_groups(
    model: nn.Module,
    cfg: StageConfig,
    compressor: nn.Module | None = None,
    llm_heads: nn.Module | None = None,
) -> list[dict]:
    """Trainable parameters in two groups, visual (STAB + projector, and the distillation
    ``compressor`` when given) and LLM (with the training-only ``llm_heads``), with their LRs."""
    groups: dict[str, list[nn.Parameter]] = {"visual": [], "llm": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["visual" if is_visual(name) else "llm"].append(p)
    if compressor is not None:
        groups["visual"] += [p for p in compressor.parameters() if p.requires_grad]
    if llm_heads is not None:
        groups["llm"] += [p for p in llm_heads.parameters() if p.requires_grad]
    lrs = {"visual": cfg.visual_lr, "llm": cfg.llm_lr}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def build_optimizer(
    model: nn.Module,
    cfg: StageConfig,
    compressor: nn.Module | None = None,
    llm_heads: nn.Module | None = None,
) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, cfg, compressor, llm_heads),
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: StageConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ceil(warmup_ratio · total) steps, then cosine to 0 (HF's schedule)."""
    from transformers import get_cosine_schedule_with_warmup

    warmup = math.ceil(cfg.warmup_ratio * total_steps)  # as HF's TrainingArguments
    return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


def autocast(
    device: torch.device, precision: Precision | None = None
) -> contextlib.AbstractContextManager:
    """The training passes' arithmetic: ``precision``, or the device's own when None."""
    if (precision or DEVICE_PRECISION.get(device.type, "fp32")) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
