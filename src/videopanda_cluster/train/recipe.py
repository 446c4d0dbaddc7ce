"""The small-model recipe: a corpus tokenizer, a random small Video-Panda and the three stages.

Stages run in order (prealign → pretrain → finetune), each starting from the previous stage's
final checkpoint; the first starts from a new random model, or from its scene warm-up
(``warmup.py``) when asked. Store layout: ``warmup/`` (the warmed-up model and
``warmup.json``), ``stages/<stage>/step-XXXXXXXX/`` (see ``checkpoints.py``) and ``model/``, the
final model in the HF layout with ``training.json``. Re-running on the same store resumes: a
finished warm-up or stage is not run again.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ..model.config import ABLATIONS, AttentionImpl, VideoPandaConfig, check_attention
from ..model.modeling import VideoPanda
from ..model.prompt import SYSTEM_PROMPT_EVAL, SYSTEM_PROMPT_TRAIN, load_tokenizer
from ..model.tokenizer_builder import build_sentencepiece_tokenizer
from ..storage import LocalStore, Store, open_store
from .checkpoints import STATE_FILE, checkpoint_prefix, download, latest_step
from .data import VIDEO_MARKERS, load_records
from .loop import total_steps, train_stage
from .ray_train import RayStageJob, run_stage
from .stages import StageConfig, stage_config
from .warmup import WarmupConfig, warm_up

RECIPE_STAGES = ("prealign", "pretrain", "finetune")
# The paper's stage 2 trains on the same caption data as stage 1 (Valley).
STAGE_DATA = {
    "prealign": "train/prealign.json",
    "pretrain": "train/prealign.json",
    "finetune": "train/finetune.json",
}
TEMPLATE_TEXTS = (SYSTEM_PROMPT_EVAL, SYSTEM_PROMPT_TRAIN, "USER: ASSISTANT:")
MODEL_KEY = "model"
WARMUP_KEY = "warmup"  # the warmed-up initial model (warmup.py), before stage 1
WARMUP_FILE = "warmup.json"
TRAINING_FILE = "training.json"
DEFAULT_VOCAB = 512
# Per-stage settings of the bundled small model (random init, CPU, global batch 16): the
# reference's learning rates are for a warm-started 7B model and leave a small random one at
# chance. A short stage 1 (the LLM is random and frozen there), one caption epoch, then up to 5
# QA epochs, capped at 900 steps (the 30-minute budget on 2 cores); see docs/training.md
# ("Bundled model") for the runs behind these numbers.
SMALL_HPARAMS: dict[str, dict[str, Any]] = {
    "prealign": {"epochs": 1, "max_steps": 50, "visual_lr": 1e-3, "warmup_ratio": 0.1},
    "pretrain": {"epochs": 1, "visual_lr": 1e-3, "llm_lr": 1e-3, "warmup_ratio": 0.1},
    "finetune": {
        "epochs": 5,
        "max_steps": 900,
        "visual_lr": 1e-3,
        "llm_lr": 1e-3,
        "warmup_ratio": 0.02,
        "focus_weight": 1.0,  # the question-focus loss (forward.py), after the first Llama layer
        "focus_layer": 1,
    },
}
_VOCAB_LIMIT = re.compile(r"value <= (\d+)")


# -- tokenizer and model ---------------------------------------------------------------------
def corpus_texts(corpus_dir: str | Path) -> list[str]:
    """Every turn of the corpus's training conversations (video markers removed), the answer
    vocabularies of ``synth.json`` and the prompt template's fixed words, in a fixed order."""
    root = Path(corpus_dir)
    texts = list(TEMPLATE_TEXTS)
    for name in sorted(set(STAGE_DATA.values())):
        for record in load_records(root / name):
            for _, value in record.turns:
                for marker in VIDEO_MARKERS:
                    value = value.replace(marker, "")
                texts.append(value.strip())
    summary = root / "synth.json"
    if summary.is_file():
        words = json.loads(summary.read_text())["vocabularies"]
        texts += [" ".join(words[kind]) for kind in sorted(words)]
    return [t for t in texts if t]


def build_corpus_tokenizer(
    corpus_dir: str | Path, out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB
) -> Path:
    """Train the SentencePiece tokenizer (Llama ids: unk 0, BOS 1, EOS 2, no pad) on the corpus.

    A ``vocab_size`` larger than the corpus supports is lowered to SentencePiece's limit.
    """
    texts = corpus_texts(corpus_dir)
    try:
        return build_sentencepiece_tokenizer(Path(out_dir), texts, vocab_size)
    except RuntimeError as exc:
        limit = _VOCAB_LIMIT.search(str(exc))
        if not limit:
            raise
        return build_sentencepiece_tokenizer(Path(out_dir), texts, int(limit.group(1)))


def init_small_model(
    corpus_dir: str | Path,
    out_dir: str | Path,
    image_size: int = 224,
    seed: int = 0,
    vocab_size: int = DEFAULT_VOCAB,
    ablations: Sequence[str] = (),
    llm_layers: int = 4,
) -> Path:
    """Save a randomly initialised ``VideoPandaConfig.small`` model (``llm_layers`` Llama
    layers) with the corpus tokenizer; ``ablations`` names the config's ablation switches to
    turn on (e.g. ``no_gstra``)."""
    unknown = sorted(set(ablations) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablation {unknown}; choose from {', '.join(ABLATIONS)}")
    out = build_corpus_tokenizer(corpus_dir, out_dir, vocab_size)
    tokenizer = load_tokenizer(out)
    torch.manual_seed(seed)
    config = VideoPandaConfig.small(len(tokenizer), image_size, llm_layers)
    model = VideoPanda(replace(config, **{name: True for name in ablations}))
    model.tokenizer = tokenizer
    model.save_pretrained(out)
    return out


# -- stages ----------------------------------------------------------------------------------
def stage_prefix(stage: str) -> str:
    return f"stages/{stage}"


def _final_checkpoint(store: Store, stage: str) -> str | None:
    step = latest_step(store, stage_prefix(stage))
    return None if step is None else checkpoint_prefix(stage_prefix(stage), step)


def _start_folder(
    store: Store,
    stage: str,
    work: Path,
    corpus: Path,
    new_model: Mapping[str, Any],
) -> tuple[Path, str]:
    """The model a stage starts from: the nearest earlier stage's final checkpoint in the store,
    else a fresh small model (``new_model``: keyword arguments of :func:`init_small_model`).
    Returns the folder and where it came from."""
    for earlier in reversed(RECIPE_STAGES[: RECIPE_STAGES.index(stage)]):
        key = _final_checkpoint(store, earlier)
        if key:
            return download(store, key, work / f"{stage}-start"), key
    new_model = dict(new_model)
    warmup = new_model.pop("warmup", None)
    origin = f"random init (seed {new_model['seed']})"
    if warmup is None:
        return init_small_model(corpus, work / "init", **new_model), origin
    if not store.exists(f"{WARMUP_KEY}/{WARMUP_FILE}"):  # else: warmed up by an earlier run
        _warm_up(store, init_small_model(corpus, work / "init", **new_model), corpus, warmup)
    return download(store, WARMUP_KEY, work / "warmup"), f"scene warm-up of {origin}"


def _warm_up(store: Store, init: Path, corpus: Path, cfg: WarmupConfig) -> None:
    """Warm ``init`` up (``warmup.py``) and save it under ``warmup/``, its summary last (the
    marker of a finished warm-up; an interrupted one starts again from the same init)."""
    model = VideoPanda.from_pretrained(init, device="cpu", dtype=torch.float32)
    summary = warm_up(model, corpus, cfg, log=print)
    folder = init.parent / "warmup-out"
    model.save_pretrained(folder)
    for path in sorted(folder.iterdir()):
        store.put(f"{WARMUP_KEY}/{path.name}", path.read_bytes())
    store.put(f"{WARMUP_KEY}/{WARMUP_FILE}", json.dumps(summary, indent=1).encode())


def _train_local(job: RayStageJob) -> None:
    """One process, no Ray: what a single Ray worker does, on the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads or threads)
    try:
        _train_model(job, job.load_model())
    finally:
        torch.set_num_threads(threads)


def _train_model(job: RayStageJob, model: VideoPanda) -> None:
    """Train a loaded ``model`` as ``job`` says, in this process."""
    dataset = job.dataset(model)
    cfg, store = StageConfig(**job.stage), open_store(job.store)
    train_stage(model, dataset, cfg, store, job.prefix, teacher=job.teacher())


def _trainer_state(store: Store, key: str) -> dict[str, Any]:
    return torch.load(io.BytesIO(store.get(f"{key}/{STATE_FILE}")), weights_only=True)


def _stage_summary(
    cfg: StageConfig, samples: int, workers: int, start: str, key: str, state: dict, secs: float
) -> dict[str, Any]:
    losses = [float(x) for x in state["losses"]]
    return {
        "stage": cfg.name,
        "data": STAGE_DATA[cfg.name],
        "samples": samples,
        "steps": len(losses),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses": losses,
        "seconds": round(secs, 3),
        "workers": workers,
        "seed": cfg.seed,
        "started_from": start,
        "checkpoint": key,
        "sample_stats": {reason: len(ids) for reason, ids in state["stats"].items()},
        "config": cfg.to_dict(),
    }


def run_one_stage(
    cfg: StageConfig,
    corpus: Path,
    store: Store,
    start: Path,
    workers: int,
    work: Path,
    threads: int | None = None,
    use_gpu: bool = False,
    flip: bool = False,
    teacher: tuple[str, str] | None = None,
    system_prompt: str = "train",
    attention: AttentionImpl = "eager",
) -> tuple[str, dict]:
    """Train one stage from the model folder ``start`` (Ray Train when ``workers`` ≥ 1);
    returns its final checkpoint's key and trainer state."""
    total_steps(cfg, len(load_records(corpus / STAGE_DATA[cfg.name])))  # fail early if too small
    job = RayStageJob(
        model=str(start),
        data=str(corpus / STAGE_DATA[cfg.name]),
        video_root=str(corpus),
        store=store.url,
        prefix=stage_prefix(cfg.name),
        stage=asdict(cfg),
        flip=flip,
        system_prompt=system_prompt,
        threads=threads,
        teacher_store=teacher[0] if teacher else None,
        teacher_prefix=teacher[1] if teacher else "teacher",
        attention=attention,
    )
    if workers == 0:
        _train_local(job)
    else:
        result = run_stage(job, workers, use_gpu, str(work / "ray"))
        if result.error is not None:
            raise RuntimeError(f"stage {cfg.name} failed: {result.error}") from result.error
    key = _final_checkpoint(store, cfg.name)
    return key, _trainer_state(store, key)


# -- export and the whole recipe ---------------------------------------------------------------
def model_location(store: Store) -> str:
    """Where the exported model is: a local folder for a local store, else its store URL."""
    if isinstance(store, LocalStore):
        return str(store.root / MODEL_KEY)
    return f"{store.url.rstrip('/')}/{MODEL_KEY}"


def export_model(store: Store, checkpoint: str, training: dict[str, Any]) -> str:
    """Copy ``checkpoint`` (without the trainer state) to ``model/`` with ``training.json``."""
    for key in store.list(checkpoint + "/"):
        name = key.rpartition("/")[2]
        if name != STATE_FILE:
            store.put(f"{MODEL_KEY}/{name}", store.get(key))
    store.put(f"{MODEL_KEY}/{TRAINING_FILE}", json.dumps(training, indent=1).encode())
    return model_location(store)


def _warmup_summary(store: Store) -> dict[str, Any] | None:
    """The scene warm-up's summary without its per-step losses, or None if there was none."""
    if not store.exists(f"{WARMUP_KEY}/{WARMUP_FILE}"):
        return None
    summary = json.loads(store.get(f"{WARMUP_KEY}/{WARMUP_FILE}"))
    return {k: v for k, v in summary.items() if k != "losses"}


def _corpus_seed(corpus: Path) -> int | None:
    summary = corpus / "synth.json"
    return json.loads(summary.read_text())["seed"] if summary.is_file() else None


def run_recipe(
    corpus_dir: str | Path,
    output_store: str,
    stages: Sequence[str] = RECIPE_STAGES,
    workers: int = 1,
    max_steps: int | None = None,
    *,
    image_size: int = 224,
    seed: int = 0,
    global_batch: int = 8,
    micro_batch: int = 1,
    epochs: int = 1,
    threads: int | None = None,
    use_gpu: bool = False,
    flip: bool = False,
    stage_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ablations: Sequence[str] = (),
    llm_layers: int = 4,
    system_prompt: str = "train",
    distill_weight: float = 0.0,
    teacher: tuple[str, str] | None = None,
    warmup: WarmupConfig | None = None,
    attention: AttentionImpl = "eager",
    work_dir: str | Path | None = None,
    on_stage: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``stages`` in recipe order into ``output_store`` and export the last one's model.

    ``workers`` ≥ 1 trains on Ray Train (``work_dir`` must then be readable by every worker);
    0 trains in this process. ``seed`` seeds the initial weights and every stage's data order.
    ``stage_overrides`` replaces StageConfig fields per stage (after the shared arguments).
    ``flip`` turns on the reference's random horizontal flip; it is off by default because it
    does not change the labels, and the synthetic corpus asks left/right questions.
    ``system_prompt`` ("train" or "eval", see ``data.SYSTEM_PROMPTS``) is the system prompt
    the conversations are rendered with; ``llm_layers`` sizes a new model's Llama.
    ``distill_weight`` > 0 adds the distillation loss (spec §7.3) against precomputed teacher
    features, ``teacher`` = (store URL, prefix); each stage starts a fresh compressor.
    ``warmup`` (a synth corpus only) runs the scene warm-up (``warmup.py``) on the new model
    before its first stage; it is done once per store and kept under ``warmup/``.
    ``attention`` ("eager" or "sdpa") is the Llama's attention while training the stages.
    Returns the ``training.json`` contents, with ``model`` the exported folder.
    """
    check_attention(attention)
    unknown = [s for s in stages if s not in RECIPE_STAGES]
    if unknown or not stages:
        raise ValueError(f"stages must be among {', '.join(RECIPE_STAGES)}, got {list(stages)}")
    corpus, store = Path(corpus_dir), open_store(output_store)
    ordered = [s for s in RECIPE_STAGES if s in stages]
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        new_model = dict(
            image_size=image_size,
            seed=seed,
            ablations=ablations,
            llm_layers=llm_layers,
            warmup=warmup,
        )
        start, origin = _start_folder(store, ordered[0], work, corpus, new_model)
        summaries = []
        shared = dict(
            global_batch=global_batch,
            micro_batch=micro_batch,
            epochs=epochs,
            max_steps=max_steps,
            seed=seed,
            distill_weight=distill_weight,
        )
        for name in ordered:
            cfg = stage_config(name, **{**shared, **(stage_overrides or {}).get(name, {})})
            t0 = time.monotonic()
            key, state = run_one_stage(
                cfg,
                corpus,
                store,
                start,
                workers,
                work,
                threads,
                use_gpu,
                flip,
                teacher,
                system_prompt,
                attention,
            )
            samples = len(load_records(corpus / STAGE_DATA[name]))
            summary = _stage_summary(
                cfg, samples, workers, origin, key, state, time.monotonic() - t0
            )
            summaries.append(summary)
            if on_stage:
                on_stage(summary)
            start, origin = download(store, key, work / f"{name}-final"), key
        config = VideoPandaConfig.from_pretrained(start)
        training = {
            "recipe": "videopanda small",
            "stages": summaries,
            "init_seed": seed,
            "ablations": sorted(ablations),
            "llm_layers": config.llm["num_hidden_layers"],
            "system_prompt": system_prompt,
            "attention": attention,
            "warmup": _warmup_summary(store),
            "image_size": config.image_size,
            "vocab_size": config.llm["vocab_size"],
            "corpus": {"path": str(corpus), "seed": _corpus_seed(corpus)},
            "wall_seconds": round(time.monotonic() - began, 3),
        }
        training["model"] = export_model(store, summaries[-1]["checkpoint"], training)
    return training
