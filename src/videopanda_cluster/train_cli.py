"""`videopanda train`: the small-model recipe (tokenizer, random init, three stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console

from .model.config import AttentionImpl
from .train.config import PRECISIONS, RECIPE_STAGES, WARMUP_GROUPS, Precision, RecipeConfig

Opt = typer.Option
console = Console()
STAGE_CHOICES = (*RECIPE_STAGES, "all")


def stage_line(summary: dict[str, Any]) -> str:
    """One line for a stage summary of ``run_recipe``: steps, last loss (and, for an objective
    of several terms, each term unweighted), time and checkpoint."""
    if summary["resumed"]:
        return f"{summary['stage']}: already trained → {summary['checkpoint']}"
    loss = summary["last_loss"]
    shown = "n/a" if loss is None else f"{loss:.4f}"
    terms = summary.get("last_terms", {})
    if set(terms) - {"ce"}:
        shown += " (" + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()) + ")"
    return (
        f"{summary['stage']}: {summary['steps']} steps, last loss {shown}, "
        f"{summary['seconds']:.1f} s → {summary['checkpoint']}"
    )


def _print_stage(summary: dict[str, Any]) -> None:
    console.print(stage_line(summary), markup=False)


def _stage_steps(text: str) -> tuple[str, int]:
    name, _, steps = text.partition("=")
    if not steps.strip().isdigit():
        raise typer.BadParameter(f"--stage-steps takes STAGE=N, got {text!r}")
    return name.strip(), int(steps)


def _stage_set(text: str) -> tuple[str, str, float]:
    target, _, value = text.partition("=")
    name, _, setting = target.partition(".")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not name.strip() or not setting.strip() or number is None:
        raise typer.BadParameter(f"--stage-set takes STAGE.SETTING=NUMBER, got {text!r}")
    return name.strip(), setting.strip(), number


def _stage_precision(text: str) -> tuple[str, Precision]:
    name, _, precision = text.partition("=")
    if not name.strip() or not precision.strip():
        raise typer.BadParameter(f"--stage-precision takes STAGE=PRECISION, got {text!r}")
    return name.strip(), cast(Precision, precision.strip())  # checked by RecipeConfig


def train(
    corpus: Annotated[Path, Opt(help="Corpus folder written by `videopanda synth`.")],
    output: Annotated[str, Opt(help="Store: a directory or az://container/prefix.")],
    stage: Annotated[str, Opt(help="prealign, pretrain, finetune or all.")] = "all",
    workers: Annotated[int, Opt(help="Ray Train workers (0: in this process).", min=0)] = (
        RecipeConfig.workers
    ),
    max_steps: Annotated[int | None, Opt(help="Optimiser steps per stage at most.", min=1)] = (
        RecipeConfig.max_steps
    ),
    stage_steps: Annotated[
        list[str] | None,
        Opt(help="STAGE=N: that stage's step cap, over --max-steps and --hparams (repeatable)."),
    ] = None,
    stage_set: Annotated[
        list[str] | None,
        Opt(
            help="STAGE.SETTING=NUMBER: one stage's setting (e.g. finetune.llm_lr=5e-4), over "
            "--hparams and the other options (repeatable; recorded in the stage's config).",
        ),
    ] = None,
    image_size: Annotated[
        int, Opt(help="Input frame size of a new model: a multiple of 28 (the bundled one: 224).")
    ] = RecipeConfig.image_size,
    seed: Annotated[int, Opt(help="Seed of the initial weights and the data order.")] = (
        RecipeConfig.seed
    ),
    global_batch: Annotated[int, Opt(help="Samples per optimiser step.", min=1)] = (
        RecipeConfig.global_batch
    ),
    micro_batch: Annotated[int, Opt(help="Samples per forward pass and worker.", min=1)] = (
        RecipeConfig.micro_batch
    ),
    epochs: Annotated[
        int | None, Opt(help="Epochs of every stage (default: per stage, from --hparams).", min=1)
    ] = RecipeConfig.epochs,
    hparams: Annotated[
        str, Opt(help="small: the bundled model's per-stage LRs and epochs; reference: spec §7.1.")
    ] = RecipeConfig.hparams,
    gpu: Annotated[bool, Opt(help="Train on GPUs (one per worker).")] = RecipeConfig.use_gpu,
    ablate: Annotated[
        list[str] | None,
        Opt(
            help="Ablation switch of a new model, repeatable: no_gstra, no_lste, no_fsra, "
            "no_split_tokens, lsd_avgpool."
        ),
    ] = None,
    flip: Annotated[bool, Opt(help="The reference's random horizontal flip.")] = RecipeConfig.flip,
    llm_layers: Annotated[int, Opt(help="Llama layers of a new model.", min=1)] = (
        RecipeConfig.llm_layers
    ),
    system_prompt: Annotated[
        str, Opt(help="System prompt of the training conversations: train (reference) or eval.")
    ] = RecipeConfig.system_prompt,
    distill_weight: Annotated[
        float, Opt(help="Weight of the distillation loss (needs --teacher-store).", min=0)
    ] = RecipeConfig.distill_weight,
    teacher_store: Annotated[
        str | None, Opt(help="Store with precomputed teacher features.")
    ] = RecipeConfig.teacher_store,
    teacher_prefix: Annotated[str, Opt(help="Prefix of the teacher features.")] = (
        RecipeConfig.teacher_prefix
    ),
    warmup_steps: Annotated[
        int,
        Opt(
            help="Steps of the scene warm-up of a new model's STAB before stage 1 "
            "(0: none; a synth corpus only).",
            min=0,
        ),
    ] = 0,
    warmup_group: Annotated[
        list[str] | None,
        Opt(
            help="A label group the warm-up fits (repeat; default: "
            f"{', '.join(WARMUP_GROUPS)}; docs/training.md).",
        ),
    ] = None,
    attention: Annotated[
        AttentionImpl,
        Opt(help="Llama attention while training: eager (reference numerics) or sdpa."),
    ] = RecipeConfig.attention,
    precision: Annotated[
        Precision | None,
        Opt(
            help=f"Arithmetic of the warm-up's and stages' passes: {' or '.join(PRECISIONS)} "
            "(bf16 autocast; weights stay fp32). Default: bf16 on GPUs, fp32 on CPUs.",
        ),
    ] = RecipeConfig.precision,
    stage_precision: Annotated[
        list[str] | None,
        Opt(help="STAGE=PRECISION: one stage's arithmetic, over --precision (repeatable)."),
    ] = None,
) -> None:
    """Train the small Video-Panda on a corpus, stage by stage, and export the final model."""
    from .train.recipe import RECIPE_STAGES, run_recipe
    from .train.warmup import WarmupConfig

    if stage not in STAGE_CHOICES:
        raise typer.BadParameter(f"--stage must be one of {', '.join(STAGE_CHOICES)}")
    if system_prompt not in ("train", "eval"):
        raise typer.BadParameter("--system-prompt must be train or eval")
    if distill_weight > 0 and not teacher_store:
        raise typer.BadParameter("--distill-weight needs --teacher-store")
    try:
        options = RecipeConfig(
            workers=workers,
            max_steps=max_steps,
            stage_steps=tuple(_stage_steps(text) for text in stage_steps or ()),
            stage_set=tuple(_stage_set(text) for text in stage_set or ()),
            image_size=image_size,
            seed=seed,
            global_batch=global_batch,
            micro_batch=micro_batch,
            epochs=epochs,
            hparams=hparams,
            use_gpu=gpu,
            flip=flip,
            ablations=tuple(ablate or ()),
            llm_layers=llm_layers,
            system_prompt=system_prompt,
            distill_weight=distill_weight,
            teacher_store=teacher_store,
            teacher_prefix=teacher_prefix,
            warmup=WarmupConfig(
                steps=warmup_steps,
                seed=seed,
                groups=tuple(warmup_group or WARMUP_GROUPS),
            )
            if warmup_steps
            else None,
            attention=attention,
            precision=precision,
            stage_precision=tuple(_stage_precision(text) for text in stage_precision or ()),
        )
        stages = RECIPE_STAGES if stage == "all" else (stage,)
        training = run_recipe(corpus, output, stages, options, on_stage=_print_stage)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        console.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    console.print(f"model: {training['model']} ({training['wall_seconds']:.1f} s)", markup=False)


def register(app: typer.Typer) -> None:
    app.command()(train)
