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
from typing import Any, overload

import torch

from ..model.config import ABLATIONS, VideoPandaConfig, check_attention
from ..model.modeling import VideoPanda
from ..model.prompt import SYSTEM_PROMPT_EVAL, SYSTEM_PROMPT_TRAIN, load_tokenizer
from ..model.tokenizer_builder import build_sentencepiece_tokenizer
from ..storage import LocalStore, Store, open_store
from .checkpoints import STATE_FILE, checkpoint_prefix, download, latest_step
from .config import RECIPE_STAGES, RecipeConfig, changed_settings
from .data import VIDEO_MARKERS, FrameCache, load_records
from .distill import StoredTeacher
from .loop import total_steps, train_stage
from .ray_train import RayStageJob, run_stage
from .shape_attention import check_channels
from .stages import STAGE_SETTINGS, StageConfig, stage_config
from .warmup import WarmupConfig, warm_up

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
SUMMARY_FILE = "summary.json"  # stages/<stage>/: the summary of the run that finished the stage
DEFAULT_VOCAB = 512
# Per-stage settings of the bundled small model (random init, CPU, global batch 16): the
# reference's learning rates are for a warm-started 7B model and leave a small random one at
# chance. A short stage 1 (the LLM is random and frozen there), one caption epoch, then up to 5
# QA epochs, capped at 1,100 steps (below); see docs/training.md ("Bundled model") for the runs
# behind these numbers.
SMALL_HPARAMS: dict[str, dict[str, Any]] = {
    "prealign": {"epochs": 1, "max_steps": 50, "visual_lr": 1e-3, "warmup_ratio": 0.1},
    "pretrain": {"epochs": 1, "visual_lr": 1e-3, "llm_lr": 1e-3, "warmup_ratio": 0.1},
    "finetune": {
        "epochs": 5,
        # At 224 px about the 60-minute budget on 2 cores (about 2.6 epochs of the bundled
        # corpus's 6,756 finetune records); 1,000 steps lose "first" and absent-object questions
        # (docs/training.md, "Twenty-fifth run").
        "max_steps": 1100,
        "visual_lr": 1e-3,
        "llm_lr": 1e-3,
        "warmup_ratio": 0.02,
        "focus_weight": 1.0,  # the question-focus loss (forward.py), after the first Llama layer
        "focus_layer": 1,
        # the question-copy loss (question_copy.py): a head of the first Llama layer brings the
        # question's focus word to the answer (docs/training.md, "Twentieth round")
        "copy_weight": 1.0,
        "copy_layer": 1,
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
    image_size: int = RecipeConfig.image_size,
    seed: int = RecipeConfig.seed,
    vocab_size: int = DEFAULT_VOCAB,
    ablations: Sequence[str] = (),
    llm_layers: int = RecipeConfig.llm_layers,
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
    switches: dict[str, Any] = {name: True for name in ablations}
    model = VideoPanda(replace(config, **switches))
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
    frames: FrameCache,
) -> tuple[Path, str]:
    """The model a stage starts from: the nearest earlier stage's final checkpoint in the store,
    else a fresh small model (``new_model``: keyword arguments of :func:`init_small_model`),
    warmed up when ``new_model`` says so (decoding through ``frames``). Returns the folder and
    where it came from."""
    for earlier in reversed(RECIPE_STAGES[: RECIPE_STAGES.index(stage)]):
        key = _final_checkpoint(store, earlier)
        if key:
            return _stored_model(store, key, work / f"{stage}-start", new_model), key
    new_model = dict(new_model)
    warmup = new_model.pop("warmup", None)
    origin = f"random init (seed {new_model['seed']})"
    if warmup is None:
        return init_small_model(corpus, work / "init", **new_model), origin
    stored = _warmup_summary(store)
    if stored is None:
        init = init_small_model(corpus, work / "init", **new_model)
        _warm_up(store, init, corpus, warmup, frames)
    else:  # warmed up by an earlier run: only if with these settings
        changed = changed_settings(stored["config"], asdict(warmup))
        if changed:
            raise ValueError(
                f"the store's warm-up was made with other settings ({', '.join(changed)}); "
                "use a new output store"
            )
    folder = _stored_model(store, WARMUP_KEY, work / "warmup", new_model)
    return folder, f"scene warm-up of {origin}"


def _stored_model(store: Store, key: str, folder: Path, new_model: Mapping[str, Any]) -> Path:
    """Download the store's model under ``key``, refusing it when it is not the model
    ``new_model`` asks for (frame size, Llama depth, ablations): a rerun must not continue one
    model's weights under another's settings."""
    path = download(store, key, folder)
    config = VideoPandaConfig.from_pretrained(path)
    held = {
        "image_size": config.image_size,
        "llm_layers": config.llm["num_hidden_layers"],
        "ablations": sorted(config.ablations),
    }
    asked = {name: new_model[name] for name in held}
    asked["ablations"] = sorted(asked["ablations"])
    changed = changed_settings(held, asked)
    if changed:
        raise ValueError(
            f"the store's {key} holds another model than the one asked for "
            f"({', '.join(changed)}); use a new output store"
        )
    return path


def _warm_up(store: Store, init: Path, corpus: Path, cfg: WarmupConfig, frames: FrameCache) -> None:
    """Warm ``init`` up (``warmup.py``) and save it under ``warmup/``, its summary last (the
    marker of a finished warm-up; an interrupted one starts again from the same init)."""
    model = VideoPanda.from_pretrained(init, device="cpu", dtype=torch.float32)
    summary = warm_up(model, corpus, cfg, log=print, frames=frames)
    folder = init.parent / "warmup-out"
    model.save_pretrained(folder)
    for path in sorted(folder.iterdir()):
        store.put(f"{WARMUP_KEY}/{path.name}", path.read_bytes())
    store.put(f"{WARMUP_KEY}/{WARMUP_FILE}", json.dumps(summary, indent=1).encode())


def _train_local(job: RayStageJob, frames: FrameCache) -> None:
    """One process, no Ray: what a single Ray worker does, on the CPU, decoding through
    ``frames`` (shared by the run's stages: each video is decoded once)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads or threads)
    try:
        dataset = job.dataset(model := job.load_model(), frames)
        cfg, store = StageConfig(**job.stage), open_store(job.store)
        train_stage(model, dataset, cfg, store, job.prefix, teacher=job.teacher())
    finally:
        torch.set_num_threads(threads)


def _trainer_state(store: Store, key: str) -> dict[str, Any]:
    return torch.load(io.BytesIO(store.get(f"{key}/{STATE_FILE}")), weights_only=True)


def _stage_summary(
    cfg: StageConfig,
    samples: int,
    workers: int,
    start: str,
    key: str,
    state: dict,
    secs: float | None = None,
) -> dict[str, Any]:
    losses = [float(x) for x in state["losses"]]
    return {
        "stage": cfg.name,
        "data": STAGE_DATA[cfg.name],
        "samples": samples,
        "steps": len(losses),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        # the objective's terms at the last step, unweighted (loop.StageResult.terms)
        "last_terms": {k: float(v[-1]) for k, v in state.get("terms", {}).items() if len(v)},
        "losses": losses,
        "seconds": None if secs is None else round(secs, 3),
        "resumed": False,  # True: trained by an earlier run (``seconds`` are that run's)
        "workers": workers,
        "seed": cfg.seed,
        "started_from": start,
        "checkpoint": key,
        "sample_stats": {reason: len(ids) for reason, ids in state["stats"].items()},
        "config": cfg.to_dict(),
    }


def stage_configs(options: RecipeConfig, stages: Sequence[str]) -> list[StageConfig]:
    """Each stage's StageConfig: the shared options, then the hparams' per-stage settings
    (less ``epochs``/``max_steps`` when the options give them), then ``stage_steps``,
    ``stage_precision`` and ``stage_set``."""
    shared = dict(
        global_batch=options.global_batch,
        micro_batch=options.micro_batch,
        epochs=options.epochs or 1,
        max_steps=options.max_steps,
        seed=options.seed,
        distill_weight=options.distill_weight,
        precision=options.precision,
    )
    capped = dict(options.stage_steps)
    precisions = dict(options.stage_precision)
    configs = []
    for name in stages:
        per_stage = dict(SMALL_HPARAMS[name]) if options.hparams == "small" else {}
        if options.epochs is not None:
            per_stage.pop("epochs", None)
        if options.max_steps is not None:
            per_stage.pop("max_steps", None)
        if name in capped:
            per_stage["max_steps"] = capped[name]
        if name in precisions:
            per_stage["precision"] = precisions[name]
        for stage, setting, value in options.stage_set:  # checked by RecipeConfig
            if stage == name:
                per_stage[setting] = STAGE_SETTINGS[setting](value)
        configs.append(stage_config(name, **{**shared, **per_stage}))
    return configs


def check_stage_data(configs: Sequence[StageConfig], corpus: Path, hparams: str) -> None:
    """Fail, in one line, before anything trains if a stage's data cannot train it: too few
    samples for one step, or no question-focus words where the stage has the focus loss."""
    for cfg in configs:
        path = corpus / STAGE_DATA[cfg.name]
        records = load_records(path)
        try:
            total_steps(cfg, len(records))
        except ValueError as exc:
            raise ValueError(f"{cfg.name}: {path}: {exc}") from None
        if cfg.focus_weight and not any(w for r in records for w in r.focus):
            raise ValueError(
                f"{cfg.name} trains the question-focus loss (--hparams {hparams}), but no human "
                f"turn of {STAGE_DATA[cfg.name]} has a `focus` key; use --hparams reference or "
                "a corpus with focus words (videopanda synth)"
            )


def _finished(store: Store, cfg: StageConfig, samples: int) -> str | None:
    """The final checkpoint of ``cfg``'s stage if an earlier run trained all its steps."""
    step = latest_step(store, stage_prefix(cfg.name))
    if step is None or step < total_steps(cfg, samples):
        return None
    key = checkpoint_prefix(stage_prefix(cfg.name), step)
    stored = _trainer_state(store, key).get("config")
    if stored is not None:
        cfg.check_resumable(stored, f"checkpoint step {step}")
    return key


def run_one_stage(
    cfg: StageConfig,
    corpus: Path,
    store: Store,
    start: Path,
    work: Path,
    options: RecipeConfig,
    frames: FrameCache,
) -> tuple[str, dict]:
    """Train one stage from the model folder ``start`` (Ray Train when ``options.workers`` ≥ 1,
    else here, decoding through ``frames``); returns its final checkpoint's key and trainer
    state. Paths must be absolute: Ray Train workers run in other directories."""
    job = RayStageJob(
        model=str(start),
        data=str(corpus / STAGE_DATA[cfg.name]),
        video_root=str(corpus),
        store=store.url,
        prefix=stage_prefix(cfg.name),
        stage=asdict(cfg),
        flip=options.flip,
        system_prompt=options.system_prompt,
        threads=options.threads,
        teacher_store=options.teacher_store,
        teacher_prefix=options.teacher_prefix,
        attention=options.attention,
    )
    if options.workers == 0:
        _train_local(job, frames)
    else:
        result = run_stage(job, options.workers, options.use_gpu, str(work / "ray"))
        if result.error is not None:
            raise RuntimeError(f"stage {cfg.name} failed: {result.error}") from result.error
    key = _final_checkpoint(store, cfg.name)
    if key is None:
        raise RuntimeError(f"stage {cfg.name} finished without a checkpoint in the store")
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


@overload
def _absolute(url: str) -> str: ...
@overload
def _absolute(url: None) -> None: ...
def _absolute(url: str | None) -> str | None:
    """A local store path made absolute (Ray Train workers run in other directories)."""
    if url is None or "://" in url:
        return url
    return str(Path(url).resolve())


def _summary_key(stage: str) -> str:
    return f"{stage_prefix(stage)}/{SUMMARY_FILE}"


def run_recipe(
    corpus_dir: str | Path,
    output_store: str,
    stages: Sequence[str] = RECIPE_STAGES,
    options: RecipeConfig | None = None,
    *,
    work_dir: str | Path | None = None,
    on_stage: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``stages`` in recipe order into ``output_store`` and export the last one's model.

    ``options`` (default :class:`RecipeConfig`, as ``videopanda train``) says how; with
    ``workers`` ≥ 1 it trains on Ray Train (``work_dir`` must then be readable by every worker).
    Every stage's data is checked before the first starts; a stage an earlier run on the same
    store finished is not trained again, and its summary (``resumed``) keeps that run's time.
    ``on_stage`` sees each stage's summary. Returns the ``training.json`` contents, with
    ``model`` the exported folder.
    """
    options = options or RecipeConfig()
    check_attention(options.attention)
    unknown = [s for s in stages if s not in RECIPE_STAGES]
    if unknown or not stages:
        raise ValueError(f"stages must be among {', '.join(RECIPE_STAGES)}, got {list(stages)}")
    options = replace(options, teacher_store=_absolute(options.teacher_store))
    corpus, store = Path(corpus_dir).resolve(), open_store(_absolute(output_store))
    ordered = [s for s in RECIPE_STAGES if s in stages]
    configs = stage_configs(options, ordered)
    check_stage_data(configs, corpus, options.hparams)
    if any(cfg.attend_weight for cfg in configs) and options.teacher_store:  # fail before training
        teacher = StoredTeacher(open_store(options.teacher_store), options.teacher_prefix)
        check_channels(teacher.channels)
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work_dir).resolve() if work_dir else Path(tmp)
        new_model = dict(
            image_size=options.image_size,
            seed=options.seed,
            ablations=options.ablations,
            llm_layers=options.llm_layers,
            warmup=options.warmup,
        )
        frames = FrameCache()  # the warm-up's and in-process stages' decoded videos
        start, origin = _start_folder(store, ordered[0], work, corpus, new_model, frames)
        summaries = []
        for cfg in configs:
            samples = len(load_records(corpus / STAGE_DATA[cfg.name]))
            key = _finished(store, cfg, samples)
            if key:  # by an earlier run: its summary, else one without a time
                summary = (
                    json.loads(store.get(_summary_key(cfg.name)))
                    if store.exists(_summary_key(cfg.name))
                    else _stage_summary(
                        cfg, samples, options.workers, origin, key, _trainer_state(store, key)
                    )
                )
                summary["resumed"] = True
            else:
                t0 = time.monotonic()
                key, state = run_one_stage(cfg, corpus, store, start, work, options, frames)
                secs = time.monotonic() - t0
                summary = _stage_summary(cfg, samples, options.workers, origin, key, state, secs)
                store.put(_summary_key(cfg.name), json.dumps(summary, indent=1).encode())
            summaries.append(summary)
            if on_stage:
                on_stage(summary)
            start, origin = _stored_model(store, key, work / f"{cfg.name}-final", new_model), key
        config = VideoPandaConfig.from_pretrained(start)
        training = {
            "recipe": "videopanda small",
            "hparams": options.hparams,
            "stages": summaries,
            "init_seed": options.seed,
            "ablations": sorted(options.ablations),
            "llm_layers": config.llm["num_hidden_layers"],
            "system_prompt": options.system_prompt,
            "attention": options.attention,
            "warmup": _warmup_summary(store),
            "image_size": config.image_size,
            "vocab_size": config.llm["vocab_size"],
            "corpus": {"path": str(corpus), "seed": _corpus_seed(corpus)},
            "wall_seconds": round(time.monotonic() - began, 3),
        }
        training["model"] = export_model(store, summaries[-1]["checkpoint"], training)
    return training
