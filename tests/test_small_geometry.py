"""Geometry and STAB token counts at input sizes other than the reference 448 (112, 168, 224).

The rule is the reference's applied at teacher scale S/2 (grid S/28 cells of 14 px), then ×2;
the tables below are worked out by hand from spec §4.2 at that scale.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tests.model_helpers import masked_clip, randomize_
from videopanda_cluster.model.config import VideoPandaConfig
from videopanda_cluster.model.stab import STAB
from videopanda_cluster.video.extract import PreprocessOptions, Provenance
from videopanda_cluster.video.geometry import (
    PADDED_FRAME_TOKENS,
    compute_geometry,
    frame_tokens,
    padded_frame_grid,
    padded_frame_tokens,
)
from videopanda_cluster.video.load import load_video
from videopanda_cluster.video.normalize import to_model_input

# input size, source W×H -> valid box (x0, y0, x1, y1), token grid (h, w), tokens/frame
SMALL_TABLE = [
    # 224: teacher scale 112, 8 cells; v = ceil(112·short/long/14)
    (224, (500, 500), (0, 0, 224, 224), (8, 8), 73),  # square, v = 8
    (224, (480, 470), (0, 0, 224, 224), (8, 8), 73),  # near-square: 7.83 -> 8 fills the input
    (224, (640, 480), (0, 28, 224, 196), (6, 8), 55),  # 4:3, v = 6.0, pre 28
    (224, (1280, 720), (0, 28, 224, 168), (5, 8), 46),  # 16:9, v = ceil(4.5) = 5, pre 28
    (224, (340, 256), (0, 0, 224, 196), (7, 8), 64),  # v = ceil(6.02) = 7: pad 0 top, 28 below
    (224, (240, 320), (28, 0, 196, 224), (8, 6), 57),  # 3:4 portrait
    (224, (720, 1280), (28, 0, 168, 224), (8, 5), 49),  # 9:16 portrait
    # 112: teacher scale 56, 4 cells; v = ceil(56·short/long/14)
    (112, (500, 500), (0, 0, 112, 112), (4, 4), 21),
    (112, (470, 480), (0, 0, 112, 112), (4, 4), 21),  # near-square portrait: 3.92 -> 4
    (112, (640, 480), (0, 0, 112, 84), (3, 4), 16),  # v = 3.0, pre 0
    (112, (1920, 1080), (0, 0, 112, 84), (3, 4), 16),  # v = ceil(2.25) = 3
    (112, (2560, 720), (0, 28, 112, 84), (2, 4), 11),  # 32:9, v = ceil(1.125) = 2, pre 28
    (112, (720, 1280), (0, 0, 84, 112), (4, 3), 17),
    # 168: teacher scale 84, 6 cells
    (168, (1280, 720), (0, 28, 168, 140), (4, 6), 29),  # v = ceil(3.375) = 4, pre 28
]


@pytest.mark.parametrize(("size", "source", "box", "grid", "tokens"), SMALL_TABLE)
def test_small_geometry_table(size, source, box, grid, tokens):
    g = compute_geometry(*source, size=size)
    assert (g.size, g.valid_box, g.token_grid, g.tokens_per_frame) == (size, box, grid, tokens)
    x0, y0, x1, y1 = box
    assert g.resize == (x1 - x0, y1 - y0) and g.offset == (x0, y0)
    assert g.is_square == (box == (0, 0, size, size))


def _reference_448(width: int, height: int) -> tuple:
    """The reference rule written literally (spec §4.2): at 224 with patch 14, then ×2."""
    landscape = width > height
    v = math.ceil(((224 * height) / width) / 14 if landscape else ((224 * width) / height) / 14)
    pre, valid = ((16 - v) // 2) * 14 * 2, v * 14 * 2
    if landscape:
        return (448, valid), (0, pre), (0, pre, 448, pre + valid), (v, 16)
    return (valid, 448), (pre, 0), (pre, 0, pre + valid, 448), (16, v)


def test_448_is_the_reference_rule_exactly():
    sizes = [1, 2, 3, 7, 16, 97, 144, 176, 199, 200, 224, 240, 256, 333, 448, 449, 480, 719, 720]
    sizes += [1079, 1080, 1280, 1919, 1920, 4000, 4001]
    for w in sizes:
        for h in sizes:
            g = compute_geometry(w, h)
            assert (g.resize, g.offset, g.valid_box, g.token_grid) == _reference_448(w, h)
    assert PADDED_FRAME_TOKENS == padded_frame_tokens(448) == 73


@pytest.mark.parametrize("size", [112, 168, 224, 448])
@pytest.mark.parametrize(("w", "h"), [(16, 3000), (97, 120), (640, 480), (720, 1280), (4000, 16)])
def test_bands_are_token_aligned_at_every_size(size, w, h):
    g = compute_geometry(w, h, size)
    x0, y0, x1, y1 = g.valid_box
    assert all(v % 28 == 0 for v in g.valid_box) and max(x1, y1) == size
    assert (x1 - x0, y1 - y0) == (g.token_grid[1] * 28, g.token_grid[0] * 28)
    short = min(x1 - x0, y1 - y0)
    assert short - 28 < size * min(w, h) / max(w, h) <= short + 1e-9


def test_padded_frame_tokens_follow_the_grid():
    assert [padded_frame_grid(s) for s in (112, 168, 224, 448)] == [(2, 2), (3, 3), (4, 4), (8, 8)]
    assert [padded_frame_tokens(s) for s in (112, 224, 448)] == [7, 21, 73]
    assert padded_frame_tokens(448, split_tokens=False) == 1 + 8 * 8
    assert frame_tokens((9, 16)) == 154 and frame_tokens((9, 16), split_tokens=False) == 145


@pytest.mark.parametrize("size", [0, 100, 200, 672 + 14])
def test_sizes_off_the_28_px_grid_are_rejected(size):
    with pytest.raises(ValueError, match="multiple of 28"):
        compute_geometry(640, 480, size)
    with pytest.raises(ValueError, match="multiple of 28"):
        PreprocessOptions(size=size)


def test_model_input_and_provenance_at_224(corpus):
    video = load_video(corpus / "qcif_176x144_5f_10fps.mp4", PreprocessOptions(size=224))
    x, prov = video.pixels, video.provenance
    assert x.shape == (8, 4, 224, 224)
    # 176x144 at 224: v = ceil(6.55) = 7, pre 0 -> rows 0..195 valid, 196..223 padding
    assert torch.all(x[:5, 3, :196] == 1) and torch.all(x[:5, 3, 196:] == 0)
    assert torch.count_nonzero(x[5:]) == 0
    assert (prov.valid_box, prov.token_grid, prov.input_size) == ([0, 0, 224, 196], [7, 8], 224)
    assert prov.visual_tokens == 5 * 64 + 3 * 21  # padded frames: 4×4 grid at 224


def test_provenance_defaults_to_the_reference_size():
    fields = {f.name for f in dataclasses.fields(Provenance) if f.name != "input_size"}
    prov = Provenance(**{**dict.fromkeys(fields, 0), "sampled_indices": [0], "padded_frames": 7})
    prov.tokens_per_frame = 10
    assert prov.visual_tokens == 10 + 7 * 73


# -- the model side ---------------------------------------------------------------------------


def _stab(size: int) -> STAB:
    config = dataclasses.replace(VideoPandaConfig.tiny(), image_size=size)
    return randomize_(STAB(config), seed=4).double().eval()


@pytest.fixture(scope="module", params=[112, 224])
def small_stab(request) -> STAB:
    return _stab(request.param)


def test_stab_token_counts_match_the_geometry(small_stab):
    size = small_stab.config.image_size
    rows = [r for r in SMALL_TABLE if r[0] == size]
    clips = torch.cat([masked_clip(r[2], frames=4, size=size, seed=n) for n, r in enumerate(rows)])
    clips[-1, 2:] = 0  # two appended all-zero frames
    with torch.no_grad():
        out, grids = small_stab(clips)
    expected = [(r[3], r[4]) for r in rows for _ in range(4)]
    expected[-2:] = [(padded_frame_grid(size), padded_frame_tokens(size))] * 2
    assert [(g, t.shape[0]) for g, t in zip(grids, out, strict=True)] == expected
    assert all(t.shape[1] == 64 for t in out)
    assert small_stab.config.padded_frame_grid == padded_frame_grid(size)


def test_padded_frame_uses_the_top_left_quarter_of_the_patch_grid():
    stab = _stab(224)
    x = masked_clip(None, frames=1)[:, :, :, :224, :224]  # one fully padded frame (T = 1)
    x[..., :3, :, :] = torch.randn(1, 1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        out, grids = stab(x)
        y = x.clone()
        y[0, 0, :3, 112:, :] = 3.0  # patches 8..15: outside the 8×8-patch crop
        out_y, _ = stab(y)
    assert grids == [(4, 4)] and out[0].shape[0] == 21
    torch.testing.assert_close(out_y[0], out[0], rtol=0, atol=0)


def test_model_rejects_inputs_of_another_size():
    stab = _stab(224)
    with pytest.raises(ValueError, match=r"built for 224x224 input got 448x448.*size=224"):
        stab(masked_clip((0, 0, 448, 448), frames=4))
    config = VideoPandaConfig.small()
    config.check_input_size(PreprocessOptions(size=224).size)
    with pytest.raises(ValueError, match="PreprocessOptions\\(size=224\\)"):
        config.check_input_size(PreprocessOptions().size)


def test_small_preset_runs_end_to_end_at_224():
    from videopanda_cluster.model.info import model_info
    from videopanda_cluster.model.modeling import VideoPanda

    config = VideoPandaConfig.preset("small")
    assert (config.image_size, config.stab_width, config.llm["num_hidden_layers"]) == (224, 128, 4)
    frames = np.zeros((3, 224, 224, 3), np.uint8)
    pixels = to_model_input(frames, compute_geometry(1280, 720, 224))  # (8, 4, 224, 224)
    model = VideoPanda(config, with_llm=False).eval()
    tokens = model.encode_video(pixels)
    assert tokens.shape == (3 * 46 + 5 * 21, 256)
    info = model_info(config)
    assert info["tokens_per_video"] == 8 * 73 and info["image_size"] == 224
    assert info["llm"] < 30_000_000 and info["stab"] < 2_000_000
    with pytest.raises(ValueError, match="multiple of"):
        VideoPandaConfig.small(image_size=100)
