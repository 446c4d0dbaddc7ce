"""The scene teacher: ground-truth cover per sampled frame and STAB cell, stored for distilling."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from tests.synth_helpers import letterboxed_corpus
from videopanda_cluster.storage import LocalStore
from videopanda_cluster.train.distill import StoredTeacher
from videopanda_cluster.train.scene_teacher import (
    CHANNELS,
    SceneTeacherOptions,
    scene_features,
    write_scene_teacher,
)
from videopanda_cluster.train.synth import load_metadata
from videopanda_cluster.video.extract import PreprocessOptions, extract_video
from videopanda_cluster.video.geometry import compute_geometry

OPTIONS = SceneTeacherOptions(image_size=112, kind_weight=3.0, motion_weight=3.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return letterboxed_corpus(tmp_path_factory.mktemp("synth"), seed=5, videos=12)


def _channel(name: str) -> int:
    return CHANNELS.index(name)


def test_cover_per_cell_adds_up_and_names_what_is_there(corpus):
    for video, _ in load_metadata(corpus):
        tokens = scene_features(video, OPTIONS).tokens
        assert tokens.shape == (8, 16, len(CHANNELS)) and len(CHANNELS) % 8 == 0
        kinds = tokens[..., :4].sum(-1) / OPTIONS.kind_weight
        background = tokens[..., _channel("background")] / OPTIONS.background_weight
        valid = tokens.abs().sum(-1) > 0  # letterbox padding cells are all zero
        # inside the frame every pixel is one shape or background (shapes never overlap)
        assert torch.allclose((kinds + background)[valid].clamp(max=1), (kinds + background)[valid])
        assert (kinds + background)[valid].min() > 0
        assert tokens[..., _channel("pad")].abs().sum() == 0
        present = {s.kind for s in video.shapes}
        for k, kind in enumerate(("circle", "square", "diamond", "triangle")):
            assert (tokens[..., k].sum() > 0) == (kind in present), (video.name, kind)


def test_motion_channel_follows_the_moving_shape(corpus):
    for video, _ in load_metadata(corpus):
        main = video.shapes[0]
        motion = scene_features(video, OPTIONS).tokens[..., _channel(f"motion:{main.motion}")]
        grid = motion.view(8, 4, 4)
        cols = torch.arange(4.0).view(1, 1, 4)
        rows = torch.arange(4.0).view(1, 4, 1)
        mass = grid.sum((1, 2))
        x = (grid * cols).sum((1, 2)) / mass
        y = (grid * rows).sum((1, 2)) / mass
        moved = {
            "left": x[0] - x[-1],
            "right": x[-1] - x[0],
            "up": y[0] - y[-1],
            "down": y[-1] - y[0],
        }
        assert moved[main.motion] > 0.5, (video.name, main.motion, moved)
        for other in ("left", "right", "up", "down"):
            if other != main.motion:
                assert tokens_of(video, other).sum() == 0


def tokens_of(video, motion: str) -> torch.Tensor:
    return scene_features(video, OPTIONS).tokens[..., _channel(f"motion:{motion}")]


def test_frames_are_the_ones_the_decoder_samples(corpus):
    """The teacher's frame k is the decoder's sampled frame k: a shape that appears late is
    absent from exactly the sampled frames before its first frame."""
    for video, _ in load_metadata(corpus):
        info = extract_video(corpus / "videos" / f"{video.name}.mp4", PreprocessOptions())
        tokens = scene_features(video, OPTIONS).tokens
        for shape in video.shapes[1:]:
            if shape.appear:
                shown = tokens[..., _channel("late")].sum(-1) > 0
                expected = [i >= shape.appear for i in info.provenance.sampled_indices]
                assert shown.tolist() == expected, video.name


def test_letterboxed_corpus_leaves_padding_cells_empty(corpus):
    """128x96 frames are letterboxed (spec §4.2): cell rows outside the valid box are empty."""
    video = load_metadata(corpus)[0][0]
    for size in (112, 224):
        tokens = scene_features(video, SceneTeacherOptions(image_size=size)).tokens
        n = size // 28
        assert tokens.shape == (8, n * n, len(CHANNELS))
        _, y0, _, y1 = compute_geometry(128, 96, size).valid_box
        outside = [r * 28 >= y1 or (r + 1) * 28 <= y0 for r in range(n)]
        assert any(outside) and not all(outside)
        empty = (tokens.view(8, n, n, -1).abs().sum(-1) == 0).all(-1).all(0)  # per cell row
        assert empty.tolist() == outside, size


@pytest.mark.slow
def test_written_features_are_read_by_the_stored_teacher_and_the_cli(corpus, tmp_path):
    store = LocalStore(tmp_path / "store")
    count = write_scene_teacher(corpus, store, "scene", OPTIONS)
    train = [v for v, split in load_metadata(corpus) if split == "train"]
    assert count == len(train)
    info = json.loads(store.get("scene/teacher.json"))
    assert info["dim"] == len(CHANNELS) and info["channels"] == list(CHANNELS)
    teacher = StoredTeacher(store, "scene")
    assert teacher.dim == len(CHANNELS)

    class Sample:
        id = train[0].name
        pixels = torch.zeros(8, 4, 112, 112)

    (features,) = teacher([Sample()])
    assert torch.equal(features.tokens, scene_features(train[0], OPTIONS).tokens)
    cli = [sys.executable, "-m", "videopanda_cluster.cli", "synth-teacher"]
    done = subprocess.run(
        [*cli, str(corpus), "--output", str(tmp_path / "cli")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli" / "teacher" / "teacher.json").is_file()
    bad = subprocess.run(
        [*cli, str(tmp_path / "nope"), "--output", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "metadata.json" in bad.stdout
    bad = subprocess.run(
        [*cli, str(corpus), "--output", str(tmp_path / "x"), "--image-size", "100"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "multiple of 28" in bad.stdout


def test_the_recipe_distils_against_the_scene_teacher(corpus, tmp_path):
    """Two prealign steps with the scene teacher: the loss is CE plus a positive distillation
    term, so the first loss is larger than the same run's without it."""
    from videopanda_cluster.train.config import RecipeConfig
    from videopanda_cluster.train.recipe import run_recipe

    teacher = LocalStore(tmp_path / "teacher")
    write_scene_teacher(corpus, teacher, "scene", OPTIONS)
    run = RecipeConfig(
        workers=0, max_steps=2, image_size=112, global_batch=2, micro_batch=1, threads=1,
        llm_layers=2, hparams="reference",
    )  # fmt: skip
    plain = run_recipe(corpus, str(tmp_path / "a"), ("prealign",), run)
    distilled = run_recipe(
        corpus,
        str(tmp_path / "b"),
        ("prealign",),
        replace(run, distill_weight=1.0, teacher_store=teacher.url, teacher_prefix="scene"),
    )
    first = [t["stages"][0]["first_loss"] for t in (plain, distilled)]
    assert first[1] > first[0]
    assert distilled["stages"][0]["config"]["distill_weight"] == 1.0
