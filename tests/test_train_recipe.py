"""The small-model recipe: corpus tokenizer, three chained stages on Ray Train, export, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from videopanda_cluster.cli import app
from videopanda_cluster.model.modeling import VideoPanda
from videopanda_cluster.model.prompt import build_prompt, load_tokenizer, tokenize_prompt
from videopanda_cluster.train.config import RecipeConfig
from videopanda_cluster.train.data import load_video
from videopanda_cluster.train.recipe import (
    RECIPE_STAGES,
    SMALL_HPARAMS,
    TRAINING_FILE,
    build_corpus_tokenizer,
    run_recipe,
    stage_configs,
)
from videopanda_cluster.train.synth import SynthOptions, write_synth
from videopanda_cluster.train_cli import stage_line

SIZE = 112
STEPS = 2
RUN = {"max_steps": STEPS, "image_size": SIZE, "global_batch": 2, "micro_batch": 1, "threads": 1}
RUN.update(hparams="reference")


def _options(**changes) -> RecipeConfig:
    return RecipeConfig(**{**RUN, "workers": 0, **changes})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synth(root, seed=3, videos=6, options=SynthOptions(frames=8, width=64, height=64))
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """The recipe, all three stages of STEPS steps, in this process (workers=0)."""
    base = tmp_path_factory.mktemp("recipe")
    training = run_recipe(corpus, str(base / "store"), options=_options(), work_dir=base / "work")
    return base, training


def _llm(folder) -> dict[str, torch.Tensor]:
    return VideoPanda.from_pretrained(folder, dtype=torch.float32).llm.state_dict()


def test_tokenizer_is_deterministic_with_llama_ids(corpus, tmp_path):
    first = build_corpus_tokenizer(corpus, tmp_path / "a")
    second = build_corpus_tokenizer(corpus, tmp_path / "b")
    assert (first / "tokenizer.model").read_bytes() == (second / "tokenizer.model").read_bytes()
    tok = load_tokenizer(first)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        0,
        1,
        2,
        None,
    )
    ids = tokenize_prompt(build_prompt("What colour is the circle?"), tok)
    assert ids[0] == 1 and tok.unk_token_id not in ids
    assert tok.decode(tok("the circle moves left").input_ids, skip_special_tokens=True) == (
        "the circle moves left"
    )


def test_stages_chain_and_checkpoints_exist(trained):
    base, training = trained
    stages = training["stages"]
    assert [s["stage"] for s in stages] == list(RECIPE_STAGES)
    for summary in stages:
        assert summary["steps"] == STEPS and len(summary["losses"]) == STEPS
        assert all(loss == loss for loss in summary["losses"])  # no NaN
        assert (base / "store" / summary["checkpoint"] / "config.json").is_file()
    assert stages[0]["started_from"].startswith("random init")
    assert stages[1]["started_from"] == stages[0]["checkpoint"]
    assert stages[2]["started_from"] == stages[1]["checkpoint"]
    assert stages[2]["data"] == "train/finetune.json"


def test_prealign_freezes_the_llm_and_finetune_trains_it(trained):
    base, training = trained
    store = base / "store"
    init = _llm(base / "work" / "init")
    prealign = _llm(store / training["stages"][0]["checkpoint"])
    pretrain = _llm(store / training["stages"][1]["checkpoint"])
    finetune = _llm(store / training["stages"][2]["checkpoint"])
    assert all(torch.equal(init[k], prealign[k]) for k in init)
    assert any(not torch.equal(pretrain[k], finetune[k]) for k in pretrain)


def test_exported_model_loads_and_answers(trained, corpus):
    base, training = trained
    folder = base / "store" / "model"
    assert training["model"] == str(folder)
    saved = json.loads((folder / TRAINING_FILE).read_text())
    assert saved["corpus"]["seed"] == 3 and saved["image_size"] == SIZE
    assert [s["steps"] for s in saved["stages"]] == [STEPS] * 3
    model = VideoPanda.from_pretrained(folder, dtype=torch.float32)
    video = next((corpus / "videos").iterdir())
    pixels = load_video(video, model.config.num_frames, SIZE, isolate=False)
    (answer,) = model.answer(pixels[None], ["What colour is the circle?"], max_new_tokens=4)
    assert isinstance(answer, str)


@pytest.mark.slow
def test_ray_train_worker_matches_in_process(trained, corpus, tmp_path):
    """One Ray Train worker (DDP, gloo) trains prealign with the in-process run's losses."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        options = _options(workers=1)
        training = run_recipe(
            corpus, str(tmp_path / "store"), ("prealign",), options, work_dir=tmp_path / "work"
        )
    finally:
        ray.shutdown()
    (summary,) = training["stages"]
    assert summary["workers"] == 1 and summary["steps"] == STEPS
    expected = torch.tensor(trained[1]["stages"][0]["losses"])
    torch.testing.assert_close(torch.tensor(summary["losses"]), expected, rtol=1e-4, atol=0)
    assert (tmp_path / "store" / "model" / "config.json").is_file()


@pytest.mark.slow
def test_cli_help_and_run(corpus, tmp_path):
    runner = CliRunner()
    shown = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    for option in ("--corpus", "--output", "--stage", "--workers", "--max-steps", "--image-size"):
        assert option in shown.output
    assert "--llm-layers" in shown.output and "--system-prompt" in shown.output
    args = ["train", "--corpus", str(corpus), "--output", str(tmp_path / "store")]
    args += ["--stage", "prealign", "--workers", "0", "--max-steps", "1"]
    args += ["--global-batch", "2", "--micro-batch", "1"]
    ran = subprocess.run(
        [sys.executable, "-m", "videopanda_cluster.cli", *args, "--image-size", str(SIZE)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert ran.returncode == 0, ran.stderr
    assert "prealign: 1 steps" in ran.stdout
    assert f"model: {tmp_path / 'store' / 'model'}" in ran.stdout
    bad = runner.invoke(app, [*args[:4], "--stage", "nope"], env={"COLUMNS": "200"})
    assert bad.exit_code != 0
    bad = runner.invoke(app, [*args, "--system-prompt", "nope"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "--system-prompt must be train or eval" in bad.output
    bad = runner.invoke(app, [*args, "--stage-steps", "finetune"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "--stage-steps takes STAGE=N, got 'finetune'" in bad.output
    bad = runner.invoke(app, [*args, "--stage-steps", "decode=3"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "stage_steps needs a stage of" in bad.output
    for text in ("finetune.llm_lr", "finetune=1", "finetune.llm_lr=fast"):
        bad = runner.invoke(app, [*args, "--stage-set", text], env={"COLUMNS": "200"})
        message = f"--stage-set takes STAGE.SETTING=NUMBER, got {text!r}"
        assert bad.exit_code == 2 and message in bad.output, bad.output
    bad = runner.invoke(app, [*args, "--stage-set", "finetune.seeds=1"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "cannot set 'seeds'" in bad.output
    bad = runner.invoke(app, [*args, "--precision", "fp16"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "'fp16' is not one of" in bad.output
    bad = runner.invoke(app, [*args, "--stage-precision", "finetune"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "--stage-precision takes STAGE=PRECISION" in bad.output
    bad = runner.invoke(app, [*args, "--stage-precision", "finetune=fp16"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "precision must be one of bf16, fp32, got 'fp16'" in bad.output
    bad = runner.invoke(app, [*args, "--hparams", "nope"], env={"COLUMNS": "200"})
    assert (
        bad.exit_code == 2
        and bad.output == "error: hparams must be small or reference, got 'nope'\n"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hparams": "big"}, "hparams must be small or reference"),
        ({"workers": -1}, "workers must be >= 0"),
        ({"distill_weight": 1.0}, "distill_weight > 0 needs a teacher_store"),
        ({"stage_steps": [("warmup", 5)]}, "stage_steps needs a stage of prealign"),
        ({"stage_steps": [("finetune", 0)]}, "got finetune=0"),
        ({"precision": "fp16"}, "precision must be one of bf16, fp32, got 'fp16'"),
        ({"stage_precision": [("warmup", "bf16")]}, "stage_precision needs a stage of prealign"),
        ({"stage_precision": [("finetune", "fp16")]}, "precision must be one of bf16, fp32"),
    ],
)
def test_recipe_config_refuses_bad_options(changes, message):
    with pytest.raises(ValueError, match=message):
        RecipeConfig(**changes)


def test_the_recipe_precision_reaches_a_warm_up_that_sets_none():
    from videopanda_cluster.train.warmup import WarmupConfig

    assert RecipeConfig(precision="bf16", warmup=WarmupConfig(steps=3)).warmup.precision == "bf16"
    assert RecipeConfig(warmup=WarmupConfig(steps=3)).warmup.precision is None  # the device's
    own = RecipeConfig(precision="bf16", warmup=WarmupConfig(steps=3, precision="fp32"))
    assert own.warmup.precision == "fp32"  # a warm-up's own setting stands


def test_stage_precision_sets_one_stages_arithmetic_and_leaves_the_warm_up():
    from videopanda_cluster.train.warmup import WarmupConfig

    options = RecipeConfig(
        hparams="small",
        precision="fp32",
        stage_precision=[("finetune", "bf16")],
        warmup=WarmupConfig(steps=3),
    )
    got = {c.name: c for c in stage_configs(options, RECIPE_STAGES)}
    plain = {c.name: c for c in stage_configs(replace(options, stage_precision=()), RECIPE_STAGES)}
    assert got["finetune"].precision == "bf16" and plain["finetune"].precision == "fp32"
    assert got["finetune"] == replace(plain["finetune"], precision="bf16")  # nothing else
    assert got["prealign"] == plain["prealign"] and got["pretrain"] == plain["pretrain"]
    assert options.warmup is not None and options.warmup.precision == "fp32"


@pytest.mark.parametrize("max_steps", [None, 9])
def test_stage_steps_caps_one_stage_over_the_others(max_steps):
    small = dict(hparams="small", max_steps=max_steps)
    plain = {c.name: c for c in stage_configs(RecipeConfig(**small), RECIPE_STAGES)}
    capped = RecipeConfig(**small, stage_steps=[("finetune", 7)])
    got = {c.name: c for c in stage_configs(capped, RECIPE_STAGES)}
    assert got["finetune"].max_steps == 7 and plain["finetune"].max_steps != 7
    assert plain["prealign"].max_steps == (max_steps or SMALL_HPARAMS["prealign"]["max_steps"])
    for name in ("prealign", "pretrain"):  # untouched: equal to the run without stage_steps
        assert got[name] == plain[name]
    assert got["finetune"].epochs == plain["finetune"].epochs  # only the step cap changes


def test_stage_set_sets_one_stages_setting_over_the_hparams():
    small = dict(hparams="small", stage_steps=[("finetune", 7)])
    plain = {c.name: c for c in stage_configs(RecipeConfig(**small), RECIPE_STAGES)}
    sets = [("finetune", "llm_lr", 5e-4), ("finetune", "weight_decay", 0.05)]
    sets += [("finetune", "max_steps", 9.0), ("pretrain", "focus_layer", 2.0)]
    got = {c.name: c for c in stage_configs(RecipeConfig(**small, stage_set=sets), RECIPE_STAGES)}
    assert got["finetune"].llm_lr == 5e-4 and plain["finetune"].llm_lr == 1e-3
    assert got["finetune"].weight_decay == 0.05 and plain["finetune"].weight_decay == 0.0
    assert got["finetune"].max_steps == 9  # over --stage-steps
    assert got["pretrain"].focus_layer == 2 and isinstance(got["pretrain"].focus_layer, int)
    assert got["prealign"] == plain["prealign"]
    assert got["finetune"].visual_lr == plain["finetune"].visual_lr  # only what was set
    for bad, message in [
        (("decode", "llm_lr", 1.0), "stage_set needs a stage of prealign"),
        (("finetune", "global_batch", 8.0), "cannot set 'global_batch'; it sets visual_lr"),
        (("finetune", "name", 1.0), "cannot set 'name'"),
        (("finetune", "max_steps", 2.5), "finetune.max_steps takes a whole number, got 2.5"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            RecipeConfig(**small, stage_set=[bad])


def test_ablated_recipe_builds_the_switched_model(corpus, tmp_path):
    """GSTRA and LSTE off: the trained model has neither block's weights and says so."""
    training = run_recipe(
        corpus,
        str(tmp_path / "store"),
        ("prealign",),
        _options(ablations=("no_gstra", "no_lste")),
        work_dir=tmp_path / "work",
    )
    assert training["ablations"] == ["no_gstra", "no_lste"]
    model = VideoPanda.from_pretrained(training["model"], dtype=torch.float32)
    assert model.config.no_gstra and model.config.no_lste and not model.config.no_fsra
    names = [name for name, _ in model.video_tower.named_parameters()]
    assert not any(n.startswith(("dec.", "lmhra1.", "temporal_cls_token")) for n in names)
    with pytest.raises(ValueError, match="unknown ablation"):
        run_recipe(corpus, str(tmp_path / "x"), ("prealign",), _options(ablations=("no_llm",)))


def test_recipe_distils_against_stored_teacher_features(corpus, tmp_path):
    """Precomputed features of a small random teacher drive the distillation term: the first
    loss is CE plus a positive distillation loss, so it is larger than without it."""
    from videopanda_cluster.storage import LocalStore
    from videopanda_cluster.train.data import VideoConversationDataset, load_records
    from videopanda_cluster.train.distill import (
        precompute_teacher_features,
        random_teacher,
        write_teacher_info,
    )

    init = run_recipe(corpus, str(tmp_path / "plain"), ("prealign",), _options())
    tokenizer = load_tokenizer(init["model"])
    dataset = VideoConversationDataset(
        load_records(corpus / "train/prealign.json"), corpus, tokenizer, size=SIZE, flip=False
    )
    store = LocalStore(tmp_path / "teacher")
    teacher = random_teacher(dim=16, image_size=SIZE // 2)
    assert precompute_teacher_features(teacher, dataset, store, "t") == []
    write_teacher_info(store, "t", 16)
    distilled = run_recipe(
        corpus,
        str(tmp_path / "distilled"),
        ("prealign",),
        _options(distill_weight=1.0, teacher_store=str(tmp_path / "teacher"), teacher_prefix="t"),
    )
    plain_loss = init["stages"][0]["losses"][0]
    distilled_loss = distilled["stages"][0]["losses"][0]
    assert distilled["stages"][0]["config"]["distill_weight"] == 1.0
    assert distilled_loss > plain_loss  # the same CE (same seed) plus 1 - cos > 0
    assert distilled_loss < plain_loss + 2.0  # 1 - cos lies in [0, 2]
    # the summary keeps each term of the last step; the CLI's line shows them when there are two
    plain, both = init["stages"][0], distilled["stages"][0]
    assert plain["last_terms"] == {"ce": plain["last_loss"]}
    terms = both["last_terms"]
    assert set(terms) == {"ce", "distill"} and 0 <= terms["distill"] <= 2
    assert both["last_loss"] == pytest.approx(terms["ce"] + terms["distill"])
    assert "(ce" not in stage_line(plain)
    shown = (
        f"last loss {both['last_loss']:.4f} (ce {terms['ce']:.4f}, distill {terms['distill']:.4f})"
    )
    assert shown in stage_line(both)


def test_shape_attention_without_the_scene_teacher_is_refused_before_training(corpus, tmp_path):
    from videopanda_cluster.storage import LocalStore
    from videopanda_cluster.train.distill import write_teacher_info

    write_teacher_info(LocalStore(tmp_path / "teacher"), "t", 16)  # no channel names
    options = _options(
        distill_weight=1.0,
        teacher_store=str(tmp_path / "teacher"),
        teacher_prefix="t",
        stage_set=[("finetune", "attend_weight", 1.0)],
    )
    with pytest.raises(ValueError, match="needs the scene teacher"):
        run_recipe(corpus, str(tmp_path / "out"), RECIPE_STAGES, options)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))


def test_llm_layers_and_eval_system_prompt(corpus, tmp_path):
    """A 2-layer model trained on conversations rendered with the eval system prompt: the
    exported model has 2 Llama layers, training.json says both, and the dataset the stage
    trained on rendered the eval wording."""
    from videopanda_cluster.model.prompt import SYSTEM_PROMPT_EVAL, SYSTEM_PROMPT_TRAIN
    from videopanda_cluster.train.ray_train import RayStageJob

    training = run_recipe(
        corpus,
        str(tmp_path / "store"),
        ("prealign",),
        _options(llm_layers=2, system_prompt="eval"),
        work_dir=tmp_path / "work",
    )
    assert (training["llm_layers"], training["system_prompt"]) == (2, "eval")
    model = VideoPanda.from_pretrained(training["model"], dtype=torch.float32)
    assert len(model.llm.model.layers) == 2
    job = RayStageJob(
        model=training["model"],
        data=str(corpus / "train" / "prealign.json"),
        video_root=str(corpus),
        store=str(tmp_path / "x"),
        prefix="p",
        stage={},
        system_prompt="eval",
    )
    assert job.dataset(model).system == SYSTEM_PROMPT_EVAL
    assert RayStageJob(**{**job.__dict__, "system_prompt": "train"}).dataset(model).system == (
        SYSTEM_PROMPT_TRAIN
    )
    with pytest.raises(ValueError, match="unknown system prompt"):
        RayStageJob(**{**job.__dict__, "system_prompt": "nope"}).dataset(model)
    with pytest.raises(ValueError, match="llm_layers"):
        run_recipe(corpus, str(tmp_path / "y"), ("prealign",), _options(llm_layers=0))


def test_sdpa_attention_trains_like_eager(trained, corpus, tmp_path):
    """Training with the fused attention: the job's model uses it, the losses equal the eager
    run's up to fp32 rounding, and training.json says which attention trained the model."""
    from videopanda_cluster.train.ray_train import RayStageJob

    training = run_recipe(
        corpus, str(tmp_path / "store"), ("prealign",), _options(attention="sdpa")
    )
    assert training["attention"] == "sdpa" and trained[1]["attention"] == "eager"
    (summary,) = training["stages"]
    expected = torch.tensor(trained[1]["stages"][0]["losses"])
    torch.testing.assert_close(torch.tensor(summary["losses"]), expected, rtol=1e-4, atol=0)
    job = RayStageJob(training["model"], "d", str(corpus), "s", "p", {}, attention="sdpa")
    assert job.load_model().llm.config._attn_implementation == "sdpa"
    assert (
        RayStageJob(**{**job.__dict__, "attention": "eager"})
        .load_model()
        .llm.config._attn_implementation
        == "eager"
    )
    with pytest.raises(ValueError, match="attention must be eager or sdpa"):
        run_recipe(corpus, str(tmp_path / "x"), ("prealign",), _options(attention="flash"))


def _cli(args: list[str], cwd=None) -> subprocess.CompletedProcess:
    """``videopanda`` in a subprocess (the tokenizer builder needs real standard streams)."""
    env = {**os.environ, "COLUMNS": "200"}
    command = [sys.executable, "-m", "videopanda_cluster.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def _train_cli(*args: str) -> list[str]:
    return ["train", "--stage", "prealign", "--max-steps", "1", "--global-batch", "2",
            "--micro-batch", "1", "--image-size", str(SIZE), "--hparams", "reference",
            "--llm-layers", "1", *args]  # fmt: skip


@pytest.mark.slow
def test_relative_paths_reach_ray_workers_resolved(corpus, tmp_path):
    """`--corpus`, `--output` and `--teacher-store` relative to the driver's directory: the Ray
    Train workers (which run elsewhere) find them all."""
    from videopanda_cluster.storage import LocalStore
    from videopanda_cluster.train.data import VideoConversationDataset, load_records
    from videopanda_cluster.train.distill import (
        precompute_teacher_features,
        random_teacher,
        write_teacher_info,
    )

    tokenizer = load_tokenizer(build_corpus_tokenizer(corpus, tmp_path / "tok"))
    dataset = VideoConversationDataset(
        load_records(corpus / "train/prealign.json"), corpus, tokenizer, size=SIZE, flip=False
    )
    assert (
        precompute_teacher_features(
            random_teacher(dim=16, image_size=SIZE // 2), dataset, LocalStore(tmp_path / "t"), "t"
        )
        == []
    )
    write_teacher_info(LocalStore(tmp_path / "t"), "t", 16)
    relative = os.path.relpath(corpus, tmp_path)
    args = _train_cli("--corpus", relative, "--output", "store", "--workers", "1")
    args += ["--distill-weight", "1", "--teacher-store", "t", "--teacher-prefix", "t"]
    ran = _cli(args, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    saved = json.loads((tmp_path / "store" / "model" / TRAINING_FILE).read_text())
    assert saved["corpus"]["path"] == str(corpus) and saved["stages"][0]["steps"] == 1
    assert saved["stages"][0]["config"]["distill_weight"] == 1.0


@pytest.mark.slow
def test_a_recipe_needing_focus_words_is_refused_before_training(corpus, tmp_path):
    """--hparams small trains finetune with the question-focus loss: a corpus without `focus`
    keys is refused in one line before any stage starts."""
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(corpus, plain)
    finetune = plain / "train" / "finetune.json"
    rows = json.loads(finetune.read_text())
    for row in rows:
        for turn in row["conversations"]:
            turn.pop("focus", None)
    finetune.write_text(json.dumps(rows))
    args = [a if a != "reference" else "small" for a in _train_cli()]
    args = [*args[:2], "all", *args[3:], "--corpus", str(plain), "--output", str(tmp_path / "s")]
    ran = _cli([*args, "--workers", "0"])
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert ran.stdout.count("\n") == 1 and "train/finetune.json" in ran.stdout
    assert "focus" in ran.stdout and "--hparams reference" in ran.stdout
    assert not (tmp_path / "s" / "stages").exists()


def test_a_rerun_with_other_stage_settings_is_refused(corpus, tmp_path):
    """A stage in the store (finished, or stopped at a checkpoint) is only reused or resumed with
    the settings it was trained with; what only splits batches or spaces checkpoints may change."""
    store, stage = str(tmp_path / "s"), ("prealign",)
    run = dict(llm_layers=1, max_steps=STEPS)
    run_recipe(corpus, store, stage, _options(**run), work_dir=tmp_path / "w")
    for changes, told in [
        ({"max_steps": STEPS - 1}, f"max_steps {STEPS} → {STEPS - 1}"),  # finished: reused
        ({"seed": 5}, "seed 0 → 5"),
        ({"precision": "bf16"}, "precision None → bf16"),
        ({"max_steps": STEPS + 1}, f"max_steps {STEPS} → {STEPS + 1}"),  # resumed at its end
    ]:
        with pytest.raises(ValueError, match=f"prealign .*{told}.*; use a new output store"):
            run_recipe(corpus, store, stage, _options(**{**run, **changes}))
    assert sorted(p.name for p in (tmp_path / "s" / "stages" / "prealign").glob("step-*")) == [
        f"step-{STEPS:08d}"
    ]
    again = run_recipe(corpus, store, stage, _options(**run, micro_batch=2, global_batch=2))
    assert again["stages"][0]["resumed"]


def test_a_rerun_asking_for_another_model_is_refused(corpus, tmp_path):
    """A store's stages (and warm-up) hold one model's weights: a rerun that asks for another
    frame size, depth or ablation neither reuses them nor starts from them."""
    store, run = str(tmp_path / "s"), dict(llm_layers=1, max_steps=STEPS)
    run_recipe(corpus, store, ("prealign",), _options(**run))
    asks = [
        ({"image_size": SIZE + 28}, f"image_size {SIZE} → {SIZE + 28}"),
        ({"llm_layers": 2}, "llm_layers 1 → 2"),
        ({"ablations": ("no_fsra",)}, r"ablations \[\] → \['no_fsra'\]"),
    ]
    for changes, told in asks:
        for stages in (("prealign",), ("pretrain",)):  # reused; started from
            with pytest.raises(
                ValueError, match=f"prealign/step-.* another model .*{told}.*new output"
            ):
                run_recipe(corpus, store, stages, _options(**{**run, **changes}))
    assert not (tmp_path / "s" / "stages" / "pretrain").exists()
    again = run_recipe(corpus, store, ("prealign",), _options(**run))
    assert again["stages"][0]["resumed"]


@pytest.mark.slow
def test_a_resumed_run_reports_the_time_of_the_run_that_trained_a_stage(corpus, tmp_path):
    """Rerunning a finished stage does not train it again, and training.json keeps the seconds
    of the run that trained it (not this run's start-up)."""
    args = _train_cli("--corpus", str(corpus), "--output", str(tmp_path / "s"), "--workers", "0")
    saved = tmp_path / "s" / "model" / TRAINING_FILE
    assert _cli(args).returncode == 0
    first = json.loads(saved.read_text())["stages"][0]
    again = _cli(args)
    assert again.returncode == 0, again.stdout + again.stderr
    second = json.loads(saved.read_text())["stages"][0]
    assert second["seconds"] == first["seconds"] and second["losses"] == first["losses"]
    assert (first["resumed"], second["resumed"]) == (False, True)
    assert "prealign: already trained" in again.stdout
    (tmp_path / "s" / "stages" / "prealign" / "summary.json").unlink()  # a store from before
    assert _cli(args).returncode == 0
    third = json.loads(saved.read_text())["stages"][0]
    assert (third["seconds"], third["resumed"], third["losses"]) == (None, True, first["losses"])
