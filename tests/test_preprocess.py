"""Resize, pad, mask, normalisation and frame padding per spec §4.2–4.3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from videopanda_cluster.video.extract import PreprocessOptions, extract, flip_coin
from videopanda_cluster.video.geometry import compute_geometry
from videopanda_cluster.video.letterbox import PAD_RGB, letterbox
from videopanda_cluster.video.load import load_video
from videopanda_cluster.video.normalize import CLIP_MEAN, CLIP_STD, to_model_input

IN_PROCESS = PreprocessOptions(isolate=False)


def test_pad_value_and_padded_frames_per_spec(corpus):
    x = load_video(corpus / "qcif_176x144_5f_10fps.mp4", IN_PROCESS).pixels
    assert x.shape == (8, 4, 448, 448) and x.dtype == torch.float32
    # 176x144 -> valid rows 28..419; pad pixels normalise to (-0.011254, -0.011196, -0.001333)
    pad = x[0, :3, 0, 0]
    assert pad.tolist() == pytest.approx([-0.011254, -0.011196, -0.001333], abs=1e-6)
    assert torch.all(x[:5, 3, 28:420] == 1) and torch.all(x[:5, 3, :28] == 0)
    assert torch.all(x[:5, 3, 420:] == 0)
    assert torch.count_nonzero(x[5:]) == 0  # fewer than 8 frames: all-zero frames appended


def test_tensor_is_pil_bicubic_then_clip_normalised(corpus):
    """Recompute the input for one frame by hand from the decoded frame."""
    path = corpus / "portrait_240x320_60f_30fps.webm"
    options = PreprocessOptions(isolate=False, num_frames=8)
    ext = extract(path, options)
    x = load_video(path, options).pixels
    from tests.test_decode import _full_decode

    frame = _full_decode(path)[ext.provenance.sampled_indices[3]]
    g = compute_geometry(240, 320)
    canvas = Image.new("RGB", (448, 448), PAD_RGB)
    canvas.paste(Image.fromarray(frame).resize(g.resize, Image.BICUBIC), g.offset)
    ref = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255.0
    ref = (ref - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(x[3, :3], ref, rtol=0, atol=1e-6)
    assert torch.all(x[3, 3, :, 56:392] == 1) and torch.all(x[3, 3, :, :56] == 0)


def test_square_input_has_full_mask_and_no_pad(corpus):
    x = load_video(corpus / "square_500x500_300f_30fps.mp4", IN_PROCESS).pixels
    assert torch.all(x[:, 3] == 1)


def test_letterbox_places_content_on_the_valid_band():
    frame = np.full((90, 160, 3), 200, np.uint8)  # 16:9 -> rows 84..335
    g = compute_geometry(160, 90)
    out = letterbox([frame], g)[0]
    assert (out[84:336] == 200).all()
    assert (out[:84] == PAD_RGB).all() and (out[336:] == PAD_RGB).all()


def test_flip_is_off_by_default_and_reproducible_when_seeded(corpus):
    path = corpus / "hd_1280x720_90f_30fps.mp4"
    plain = load_video(path, IN_PROCESS)
    assert not plain.provenance.flipped
    again = load_video(path, IN_PROCESS)
    assert torch.equal(plain.pixels, again.pixels)
    flips = {}
    for seed in range(6):
        opts = PreprocessOptions(isolate=False, flip="reference", flip_seed=seed)
        a, b = load_video(path, opts), load_video(path, opts)
        assert torch.equal(a.pixels, b.pixels) and a.provenance.flipped == b.provenance.flipped
        flips[seed] = a
    flipped = [v for v in flips.values() if v.provenance.flipped]
    assert flipped and len(flipped) < len(flips)  # the coin lands both ways over seeds
    f = flipped[0].pixels
    assert torch.equal(f[:, :3], plain.pixels[:, :3].flip(-1))  # all frames, RGB only
    assert torch.equal(f[:, 3], plain.pixels[:, 3])  # the mask is not flipped (reference)


def test_the_flip_coin_is_per_video_when_seeded_and_fresh_when_not():
    hashes = [f"{n:064x}" for n in range(16)]
    seeded = PreprocessOptions(flip="reference", flip_seed=3)
    coins = [flip_coin(seeded, h) for h in hashes]
    assert set(coins) == {True, False}  # one seed, a coin per video
    assert coins == [flip_coin(seeded, h) for h in hashes]  # the same again
    other = PreprocessOptions(flip="reference", flip_seed=4)
    assert coins != [flip_coin(other, h) for h in hashes]
    assert not any(flip_coin(PreprocessOptions(flip_seed=3), h) for h in hashes)  # flip off
    unseeded = PreprocessOptions(flip="reference")
    assert {flip_coin(unseeded) for _ in range(64)} == {True, False}  # random, as the reference
    with pytest.raises(ValueError, match="content hash"):
        flip_coin(seeded)


def test_rejects_bad_options():
    with pytest.raises(ValueError):
        PreprocessOptions(flip="sometimes")
    g = compute_geometry(64, 64)
    with pytest.raises(ValueError):
        to_model_input(np.zeros((9, 448, 448, 3), np.uint8), g, num_frames=8)
