"""The scene warm-up: per-cell labels from the scene, a visual-only fit, once per recipe store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.synth_helpers import letterboxed_corpus
from videopanda_cluster.model.modeling import VideoPanda
from videopanda_cluster.storage import LocalStore
from videopanda_cluster.train import data, recipe
from videopanda_cluster.train.config import RecipeConfig
from videopanda_cluster.train.scene_teacher import (
    CHANNELS,
    MOTIONS,
    SceneTeacherOptions,
    scene_features,
)
from videopanda_cluster.train.synth import SynthOptions, load_metadata, make_video, video_path
from videopanda_cluster.train.warmup import (
    GROUPS,
    PAIRS,
    CellHeads,
    WarmupConfig,
    _cell_tokens,
    cell_labels,
    load_clips,
    pair_sets,
    warm_up,
)
from videopanda_cluster.video.errors import VideoDecodeError
from videopanda_cluster.video.normalize import to_model_input
from videopanda_cluster.video.samples import SHAPES
from videopanda_cluster.video.sampling import sample_positions


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # letterboxed at 112 px, so the label grid must follow the valid cells
    return letterboxed_corpus(tmp_path_factory.mktemp("synth"), seed=8, videos=14)


@pytest.fixture(scope="module")
def init(corpus, tmp_path_factory):
    """A new small model saved like the recipe's; loading it gives frozen parameters."""
    return recipe.init_small_model(corpus, tmp_path_factory.mktemp("init"), 112, llm_layers=1)


def _model(folder) -> VideoPanda:
    return VideoPanda.from_pretrained(folder, device="cpu", dtype=torch.float32)


def test_cell_labels_pick_the_largest_cover_or_none():
    cover = torch.zeros(3, len(CHANNELS))
    cover[0, CHANNELS.index("kind:diamond")] = 0.6
    cover[0, CHANNELS.index("kind:circle")] = 0.3
    cover[0, CHANNELS.index("colour:blue")] = 0.9
    cover[0, CHANNELS.index("motion:up")] = 0.9
    cover[1, CHANNELS.index("kind:square")] = 0.1  # below min_cover
    labels = cell_labels(cover, min_cover=0.2)
    none = {group: len(channels) for group, channels in GROUPS.items()}
    assert labels["kind"].tolist() == [SHAPES.index("diamond"), none["kind"], none["kind"]]
    assert labels["colour"].tolist()[0] == CHANNELS.index("colour:blue") - GROUPS["colour"][0]
    assert labels["motion"].tolist() == [MOTIONS.index("up"), none["motion"], none["motion"]]
    blue = CHANNELS.index("colour:blue") - GROUPS["colour"][0]
    assert labels["pair"].tolist() == [SHAPES.index("diamond") * 4 + blue, PAIRS, PAIRS]


def test_pair_sets_and_the_pooled_head():
    """A frame's pair set holds each (kind, colour) of its cells once; the "pairs" head reads
    one mean token per frame, the cell heads every token."""
    frames = [
        {"pair": torch.tensor([PAIRS, 5, 5, 9])},
        {"pair": torch.tensor([PAIRS, PAIRS])},
        {"pair": torch.tensor([0])},
    ]
    sets = pair_sets(frames)
    assert sets.shape == (3, PAIRS)
    assert sets.sum(1).tolist() == [2, 0, 1] and sets[0, 5] == sets[0, 9] == sets[2, 0] == 1
    heads = CellHeads(8, ("kind", "pairs"))
    tokens = [torch.randn(4, 8), torch.randn(2, 8), torch.randn(1, 8)]
    out = heads(tokens)
    assert out["kind"].shape == (7, 5) and out["pairs"].shape == (3, PAIRS)
    mean = heads.heads["pairs"](tokens[1].mean(0))
    torch.testing.assert_close(out["pairs"][1], mean)


def test_warmup_config_rejects_unknown_groups_and_schedules():
    assert WarmupConfig().groups == ("kind", "motion")
    with pytest.raises(ValueError, match="groups must be among"):
        WarmupConfig(groups=("size",))
    with pytest.raises(ValueError, match="schedule must be"):
        WarmupConfig(schedule="step")
    with pytest.raises(ValueError, match="at least 1"):
        WarmupConfig(steps=0)
    with pytest.raises(ValueError, match="precision must be one of bf16, fp32"):
        WarmupConfig(precision="half")


def test_a_bf16_warm_up_autocasts_its_passes(corpus, init):
    """bf16 changes the arithmetic (the losses differ a little), not the fp32 weights."""
    losses = {}
    for precision in ("fp32", "bf16"):
        model = _model(init)
        cfg = WarmupConfig(steps=3, batch=2, precision=precision)
        losses[precision] = warm_up(model, corpus, cfg)["losses"]
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses["fp32"] != losses["bf16"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_labels_follow_the_scene_and_the_token_grid(corpus, init):
    model = _model(init)
    clips = load_clips(corpus, model, WarmupConfig())
    videos = [v for v, split in load_metadata(corpus) if split == "train"]
    assert len(clips) == len(videos)
    none = {group: len(channels) for group, channels in GROUPS.items()}
    for clip, video in zip(clips, videos, strict=True):
        pixels = to_model_input(clip.frames, clip.geometry, 8)[None]
        with torch.no_grad():
            tokens = _cell_tokens(model, pixels)
        assert [t.shape[0] for t in tokens] == [f["kind"].numel() for f in clip.labels]
        assert tokens[0].shape[0] < 16  # letterboxed: padding rows have no token
        kinds = {SHAPES[i] for f in clip.labels for i in f["kind"].tolist() if i < none["kind"]}
        assert kinds <= {s.kind for s in video.shapes}
        assert video.shapes[0].kind in kinds
        motions = {MOTIONS[i] for f in clip.labels for i in f["motion"].tolist() if i < 5}
        assert video.shapes[0].motion in motions
        assert motions <= {video.shapes[0].motion, "still"}


def test_an_unreadable_video_stops_the_labelling_with_its_decode_error(corpus, init, tmp_path):
    """The decode that runs ahead of the labelling raises a broken file's error as before."""
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    videos = [v for v, split in load_metadata(broken) if split == "train"]
    (broken / video_path(videos[1].name)).write_bytes(b"not a video")
    with pytest.raises(VideoDecodeError):
        load_clips(broken, _model(init), WarmupConfig())


@pytest.mark.slow
def test_warm_up_fits_the_visual_path_only_and_is_deterministic(corpus, init):
    cfg = WarmupConfig(steps=40, batch=4, seed=3, groups=(*GROUPS, "pairs"))  # every head
    first, second = _model(init), _model(init)
    assert not any(p.requires_grad for p in first.parameters())
    llm_before = {k: v.clone() for k, v in first.llm.state_dict().items()}
    stab_before = first.video_tower.patch_embedding.weight.clone()
    summary = warm_up(first, corpus, cfg)
    warm_up(second, corpus, cfg)
    assert all(torch.equal(v, first.llm.state_dict()[k]) for k, v in llm_before.items())
    assert not torch.equal(stab_before, first.video_tower.patch_embedding.weight)
    assert not any(p.requires_grad for p in first.parameters())  # flags restored
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    losses = summary["losses"]
    assert len(losses) == 40 and sum(losses[-10:]) < 0.8 * sum(losses[:10])
    assert set(summary["cell_accuracy_last_tenth"]) == {*GROUPS, "pairs"}
    assert summary["videos"] == len([1 for _, s in load_metadata(corpus) if s == "train"])


@pytest.mark.slow
def test_the_recipe_warms_up_once_and_resumes_from_it(corpus, tmp_path, monkeypatch):
    run = dict(max_steps=1, image_size=112, global_batch=2, micro_batch=1, threads=1)
    run.update(llm_layers=1, hparams="reference", workers=0)
    warmup = WarmupConfig(steps=3, batch=2)
    out = tmp_path / "out"
    first = recipe.run_recipe(corpus, str(out), ("prealign",), RecipeConfig(**run, warmup=warmup))
    assert first["warmup"]["config"]["steps"] == 3 and "losses" not in first["warmup"]
    assert first["stages"][0]["started_from"] == "scene warm-up of random init (seed 0)"
    weights = (out / "model" / "model.safetensors").read_bytes()
    fresh = _model(recipe.init_small_model(corpus, tmp_path / "fresh", 112, llm_layers=1))
    warm = _model(out / "warmup")
    assert not torch.equal(
        fresh.video_tower.patch_embedding.weight, warm.video_tower.patch_embedding.weight
    )
    pairs = zip(fresh.llm.parameters(), warm.llm.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    # a run killed after the warm-up: the rerun starts stage 1 from the stored warm model
    shutil.rmtree(out / "stages")
    shutil.rmtree(out / "model")

    def fail(*args, **kwargs):
        raise AssertionError("the warm-up ran again")

    monkeypatch.setattr(recipe, "warm_up", fail)
    again = recipe.run_recipe(corpus, str(out), ("prealign",), RecipeConfig(**run, warmup=warmup))
    assert again["warmup"] == first["warmup"]
    assert (out / "model" / "model.safetensors").read_bytes() == weights
    # a rerun asking for another warm-up (other labels: a store of an earlier version) is refused
    # rather than started from the stored one
    other = RecipeConfig(**run, warmup=replace(warmup, peak_share=None))
    with pytest.raises(ValueError, match=r"warm-up .*other settings .*peak_share"):
        recipe.run_recipe(corpus, str(out), ("prealign",), other)
    # ...and so is one asking for another model (the stage is gone: only the warm-up is held)
    shutil.rmtree(out / "stages")
    deeper = RecipeConfig(**{**run, "llm_layers": 2}, warmup=warmup)
    with pytest.raises(ValueError, match=r"store's warmup .*another model .*llm_layers 1 → 2"):
        recipe.run_recipe(corpus, str(out), ("prealign",), deeper)
    plain = recipe.run_recipe(corpus, str(tmp_path / "plain"), ("prealign",), RecipeConfig(**run))
    assert plain["warmup"] is None
    assert not LocalStore(tmp_path / "plain").exists("warmup/warmup.json")


@pytest.mark.slow
def test_the_cli_takes_warmup_steps(corpus, tmp_path):
    cli = [sys.executable, "-m", "videopanda_cluster.cli", "train", "--corpus", str(corpus)]
    args = ["--workers", "0", "--stage", "prealign", "--max-steps", "1", "--llm-layers", "1"]
    args += ["--global-batch", "2", "--micro-batch", "2"]
    done = subprocess.run(
        [
            *cli,
            "--output",
            str(tmp_path / "o"),
            *args,
            "--warmup-steps",
            "2",
            "--precision",
            "bf16",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    training = json.loads((tmp_path / "o" / "model" / "training.json").read_text())
    assert training["warmup"]["config"]["steps"] == 2
    assert training["warmup"]["config"]["precision"] == "bf16"  # the stages' precision too
    assert [s["config"]["precision"] for s in training["stages"]] == ["bf16"]
    assert "warm-up step 2/2" in done.stdout


def test_a_recipe_in_one_process_decodes_each_video_once(corpus, tmp_path, monkeypatch):
    """The warm-up and every in-process stage share one decode cache (``FrameCache``)."""
    decoded: list[str] = []
    real = data.decode_video

    def counting(path, *args, **kwargs):
        decoded.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_video", counting)
    stages: list[str] = []
    real_stage = recipe.train_stage

    def counting_stage(model, dataset, cfg, *args, **kwargs):
        stages.append(cfg.name)
        return real_stage(model, dataset, cfg, *args, **kwargs)

    monkeypatch.setattr(recipe, "train_stage", counting_stage)
    run = dict(max_steps=2, image_size=112, global_batch=2, micro_batch=2, threads=1)
    run.update(llm_layers=1, hparams="reference", workers=0, warmup=WarmupConfig(steps=1, batch=2))
    recipe.run_recipe(corpus, str(tmp_path / "out"), ("prealign", "pretrain"), RecipeConfig(**run))
    train = {v.name for v, split in load_metadata(corpus) if split == "train"}
    assert len(train) > 4 and {Path(p).stem for p in decoded} == train
    assert len(decoded) == len(train)  # the warm-up decoded them; both stages reused that
    assert stages == ["prealign", "pretrain"]  # each stage trained once


def test_cell_labels_give_a_small_shape_its_own_cells():
    """A shape smaller than ``min_cover`` of any cell (a default-radius shape in a wide frame)
    still labels the cells that hold most of it; cells with a far smaller share stay "none",
    and ``peak_share=None`` keeps the plain threshold."""
    cover = torch.zeros(4, len(CHANNELS))
    square, left = CHANNELS.index("kind:square"), CHANNELS.index("motion:left")
    cover[:3, square] = torch.tensor([0.12, 0.07, 0.02])  # one small square over three cells
    cover[:3, left] = cover[:3, square]
    cover[3, CHANNELS.index("kind:circle")] = 0.9  # a large circle elsewhere in the frame
    none = {group: len(channels) for group, channels in GROUPS.items()}
    labels = cell_labels(cover, min_cover=0.2, peak_share=0.5)
    sq, circle = SHAPES.index("square"), SHAPES.index("circle")
    assert labels["kind"].tolist() == [sq, sq, none["kind"], circle]
    assert labels["motion"].tolist()[:3] == [MOTIONS.index("left")] * 2 + [none["motion"]]
    plain = cell_labels(cover, min_cover=0.2, peak_share=None)
    assert plain["kind"].tolist() == [none["kind"]] * 3 + [circle]


def test_every_shape_of_a_wide_frame_has_a_labelled_cell():
    """In 640x272 clips at `videopanda synth`'s default radii and the recipe's 168 px input,
    the plain 0.2 threshold leaves most shapes without a cell of their kind (the warm-up then
    teaches "none" for them); the default ``WarmupConfig`` labels nearly every one."""
    options = SceneTeacherOptions(
        image_size=168, kind_weight=1.0, motion_weight=1.0, background_weight=1.0
    )
    cfg = WarmupConfig()
    found = {cfg.peak_share: 0, None: 0}
    shapes = 0
    for index in range(30):
        video = make_video(f"v{index}", 3, index, SynthOptions(width=640, height=272))
        cover = scene_features(video, options).tokens
        frames = sample_positions(video.options.frames, float(video.options.fps), 8)
        for t, frame in enumerate(frames):
            visible = [SHAPES.index(s.kind) for s in video.shapes if frame >= s.appear]
            shapes += len(visible)
            for share in found:
                kinds = cell_labels(cover[t], cfg.min_cover, share)["kind"].tolist()
                found[share] += sum(kind in kinds for kind in visible)
    assert shapes > 300
    assert found[None] < 0.6 * shapes
    assert found[cfg.peak_share] > 0.97 * shapes
