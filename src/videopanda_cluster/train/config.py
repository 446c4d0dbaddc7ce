"""The small-model recipe's options and their defaults, shared by ``run_recipe`` and
``videopanda train`` (no torch import: the CLI reads its defaults from here)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from ..model.config import AttentionImpl, check_attention

if TYPE_CHECKING:
    from .warmup import WarmupConfig

HPARAMS = ("small", "reference")
RECIPE_STAGES = ("prealign", "pretrain", "finetune")
# The label groups the scene warm-up fits by default (train/warmup.py, docs/training.md).
WARMUP_GROUPS: tuple[str, ...] = ("kind", "motion")
# Arithmetic of the training passes: "bf16" autocasts matmuls and convolutions to bfloat16 (weights,
# gradients and optimiser state stay fp32), "fp32" does not; None: the device's own
# (stages.DEVICE_PRECISION: bf16 on CUDA as the reference, fp32 elsewhere).
Precision = Literal["bf16", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp32")


def check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def changed_settings(
    stored: Mapping[str, Any], asked: Mapping[str, Any], free: tuple[str, ...] = ()
) -> list[str]:
    """ "key stored → asked" for each setting (JSON-compared) that differs, less ``free``: what a
    rerun may not change about work already in a store."""
    old, new = (json.loads(json.dumps(dict(d))) for d in (stored, asked))
    keys = sorted((old.keys() | new.keys()) - set(free))
    return [f"{k} {old.get(k)} → {new.get(k)}" for k in keys if old.get(k) != new.get(k)]


@dataclass(frozen=True)
class RecipeConfig:
    """How ``run_recipe`` trains. ``hparams`` "small" applies ``recipe.SMALL_HPARAMS`` per stage
    (the bundled model's), "reference" the spec's (§7.1); ``epochs`` and ``max_steps`` given
    replace the per-stage ones, and ``stage_steps`` replaces one stage's step cap."""

    workers: int = 1  # Ray Train workers; 0 trains in this process
    max_steps: int | None = None  # optimiser steps per stage at most
    stage_steps: tuple[tuple[str, int], ...] = ()  # (stage, its step cap), over max_steps
    # (stage, StageConfig field, value): one stage's numeric setting over the hparams' and
    # the options' (stages.STAGE_SETTINGS names the fields), e.g. ("finetune", "llm_lr", 5e-4)
    stage_set: tuple[tuple[str, str, float], ...] = ()
    # (stage, precision): one stage's arithmetic over ``precision`` (the warm-up keeps that)
    stage_precision: tuple[tuple[str, Precision], ...] = ()
    image_size: int = 112  # input frame size of a new model
    seed: int = 0  # initial weights and every stage's data order
    global_batch: int = 16  # samples per optimiser step
    micro_batch: int = 16  # samples per forward pass and worker
    epochs: int | None = None  # of every stage; None: per stage from hparams, else 1
    hparams: str = "small"  # one of HPARAMS
    use_gpu: bool = False
    flip: bool = False  # the reference's random horizontal flip (off: synth asks left/right)
    ablations: tuple[str, ...] = ()  # a new model's ablation switches (recipe.ABLATIONS)
    llm_layers: int = 4  # Llama layers of a new model
    system_prompt: str = "train"  # of the training conversations: train (reference) or eval
    # > 0: the distillation loss (spec §7.3) against the teacher features under teacher_store
    # (its prefix teacher_prefix); each stage starts a fresh compressor
    distill_weight: float = 0.0
    teacher_store: str | None = None  # store URL of precomputed teacher features
    teacher_prefix: str = "teacher"
    warmup: WarmupConfig | None = None  # scene warm-up of a new model (a synth corpus only)
    attention: AttentionImpl = "eager"  # the Llama's attention while training: eager or sdpa
    threads: int | None = None  # torch threads per worker (None: torch's default)
    # of the stages' passes (None: the device's), and of a warm-up that sets none of its own
    precision: Precision | None = None

    def __post_init__(self) -> None:
        if self.warmup is not None and self.warmup.precision is None:
            object.__setattr__(self, "warmup", replace(self.warmup, precision=self.precision))
        object.__setattr__(self, "ablations", tuple(self.ablations))
        object.__setattr__(self, "stage_steps", tuple(tuple(p) for p in self.stage_steps))
        for name, steps in self.stage_steps:
            if name not in RECIPE_STAGES or steps < 1:
                raise ValueError(
                    f"stage_steps needs a stage of {', '.join(RECIPE_STAGES)} and steps >= 1, "
                    f"got {name}={steps}"
                )
        object.__setattr__(self, "stage_set", tuple(tuple(t) for t in self.stage_set))
        from .stages import STAGE_SETTINGS  # stages.py imports this module

        for name, setting, value in self.stage_set:
            if name not in RECIPE_STAGES:
                raise ValueError(
                    f"stage_set needs a stage of {', '.join(RECIPE_STAGES)}, got {name}.{setting}"
                )
            if setting not in STAGE_SETTINGS:
                raise ValueError(
                    f"stage_set cannot set {setting!r}; it sets {', '.join(STAGE_SETTINGS)}"
                )
            if STAGE_SETTINGS[setting] is int and value != int(value):
                raise ValueError(f"{name}.{setting} takes a whole number, got {value}")
        object.__setattr__(self, "stage_precision", tuple(tuple(p) for p in self.stage_precision))
        for name, precision in self.stage_precision:
            if name not in RECIPE_STAGES:
                raise ValueError(
                    f"stage_precision needs a stage of {', '.join(RECIPE_STAGES)}, got {name}"
                )
            check_precision(precision)
        if self.hparams not in HPARAMS:
            raise ValueError(f"hparams must be small or reference, got {self.hparams!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        check_attention(self.attention)
        check_precision(self.precision)
        if self.distill_weight > 0 and not self.teacher_store:
            raise ValueError("distill_weight > 0 needs a teacher_store")
