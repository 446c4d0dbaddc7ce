"""STAB behaviour derived from the spec's formulas (§2), on a narrow STAB (C = 64) in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.model_helpers import box_for, masked_clip, randomize_
from tests.test_geometry import SPEC_TABLE
from videopanda_cluster.model.config import VideoPandaConfig
from videopanda_cluster.model.stab import STAB

FULL = (0, 0, 448, 448)


@pytest.fixture(scope="module")
def stab() -> STAB:
    model = STAB(VideoPandaConfig.tiny())
    return randomize_(model, seed=3).double().eval()


def _run(stab, x):
    with torch.no_grad():
        return stab(x)


@pytest.mark.parametrize(("size", "box", "grid", "tokens"), SPEC_TABLE)
def test_token_grid_and_count_per_aspect_ratio(stab, size, box, grid, tokens):
    out, grids = _run(stab, masked_clip(box_for(*size), frames=4))
    assert grids == [grid] * 4
    assert [t.shape for t in out] == [(tokens, 64)] * 4


def test_fully_padded_frames_give_73_tokens_from_the_top_left(stab):
    x = masked_clip((0, 56, 448, 392), frames=4)
    x[0, 2:] = 0  # frames 2-3 fully padded (RGB and mask 0), as appended short-video frames
    out, grids = _run(stab, x)
    assert grids == [(12, 16), (12, 16), (8, 8), (8, 8)]
    assert [t.shape[0] for t in out] == [205, 205, 73, 73]
    # their tokens come from patches 0..15 only: changing far-away patches of frame 3 leaves
    # its row tokens (not its context token, which sees the whole clip via GSTRA) unchanged
    y = x.clone()
    y[0, 3, :3, 20 * 14 :, 20 * 14 :] = 5.0  # patches >= 20 (dpe reaches one patch only)
    out_y, _ = _run(stab, y)
    torch.testing.assert_close(out_y[3][1:], out[3][1:], rtol=0, atol=0)
    assert not torch.allclose(out_y[3][0], out[3][0])


def _reference_query_attention(module, query, keys, scale):
    """Spec §2.3 S4.2/S4.3 written out per head."""
    width, heads = query.shape[-1], module.heads
    q = module.q(query)
    k, v = module.kv(keys).split(width, dim=-1)
    outs = []
    for h in range(heads):
        sl = slice(h * width // heads, (h + 1) * width // heads)
        logits = (q[..., sl] @ k[..., sl].transpose(-2, -1)) * scale
        outs.append(logits.softmax(-1) @ v[..., sl])
    return query + module.proj(torch.cat(outs, dim=-1))


def test_lsd_is_pooled_query_over_each_window_with_full_width_scale(stab):
    crops = torch.randn(3, 64, 8, 6, dtype=torch.float64)
    out = stab.local_attention(crops)  # (3, 4*3, 64)
    pooled = F.avg_pool2d(crops, 2, 2).flatten(2).transpose(1, 2)  # (3, 12, 64)
    windows = crops.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)  # (3, 64, 4, 3, 4)
    windows = windows.permute(0, 2, 3, 4, 1).reshape(3, 12, 4, 64)
    lsd = stab.local_attention
    expected = _reference_query_attention(lsd, pooled.unsqueeze(2), windows, 64**-0.5)
    torch.testing.assert_close(out, expected.squeeze(2))
    wrong = _reference_query_attention(lsd, pooled.unsqueeze(2), windows, (64 // 8) ** -0.5)
    assert not torch.allclose(out, wrong.squeeze(2))  # the head-dim scale would differ


def test_fsra_is_one_shared_query_with_full_width_scale(stab):
    tokens = torch.randn(2, 30, 64, dtype=torch.float64)
    out = stab.global_attention(stab.class_embedding, tokens)
    query = stab.class_embedding.expand(2, 1, 64)
    expected = _reference_query_attention(stab.global_attention, query, tokens, 64**-0.5)
    torch.testing.assert_close(out, expected[:, 0])


def test_gstra_attention_is_standard_multihead_attention(stab):
    """GSTRA uses 1/sqrt(head_dim): identical to torch's MultiheadAttention with its weights."""
    dec = stab.dec
    x = torch.randn(3, 1, 64, dtype=torch.float64)
    y = torch.randn(3, 50, 64, dtype=torch.float64)
    ours = dec._attention(x, y)
    torch_out, _ = dec.attn(x.transpose(0, 1), y.transpose(0, 1), y.transpose(0, 1))
    torch.testing.assert_close(ours, torch_out.transpose(0, 1))
    # the block: pre-LN attention (LN_1 on the query, LN_3 on the tokens), then a QuickGELU MLP
    z1 = x + dec._attention(dec.ln_1(x), dec.ln_3(y))
    hidden = dec.mlp.c_fc(dec.ln_2(z1))
    expected = z1 + dec.mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden))
    torch.testing.assert_close(dec(x, y), expected)


def _capture(module):
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append((args, out)))
    return seen, handle


def test_dense_skip_adds_the_raw_patch_embedding_again(stab):
    x = masked_clip(FULL, batch=2, frames=4)
    seen, handle = _capture(stab.local_attention)
    try:
        _run(stab, x)
    finally:
        handle.remove()
    crops = seen[0][0][0]  # all 8 frames share one crop size: one LSD call
    raw = stab.patch_embedding(x.flatten(0, 1)[:, :3])  # (8, C, 32, 32)
    v = raw.unflatten(0, (2, 4)).transpose(1, 2)
    x1 = v + stab.lmhra1(v)
    x2 = x1 + stab.dpe(x1)
    expected = x2.transpose(1, 2).flatten(0, 1) + raw
    torch.testing.assert_close(crops, expected)
    assert not torch.allclose(crops, x2.transpose(1, 2).flatten(0, 1))


def test_context_token_is_alpha_fusion_of_fsra_and_gstra(stab):
    x = masked_clip(FULL, batch=2, frames=4, seed=5)
    fsra, h1 = _capture(stab.global_attention)
    gstra, h2 = _capture(stab.dec)
    try:
        out, _ = _run(stab, x)
    finally:
        h1.remove()
        h2.remove()
    c = fsra[0][1]  # (8, C)
    g = gstra[0][1][:, 0]  # (2, C): one token per clip
    alpha = torch.sigmoid(stab.balance)
    for i in range(8):
        expected = stab.proj(alpha * c[i] + (1 - alpha) * g[i // 4])
        torch.testing.assert_close(out[i][0], expected)
    assert not torch.allclose(out[0][0], out[4][0])


def test_single_frame_clips_skip_temporal_modelling(stab):
    x = masked_clip(FULL, batch=3, frames=1)
    fsra, handle = _capture(stab.global_attention)
    try:
        out, _ = _run(stab, x)
    finally:
        handle.remove()
    for i in range(3):  # ctx = the FSRA token itself, and rows come from the raw patches
        torch.testing.assert_close(out[i][0], fsra[0][1][i])
    lsd = stab.local_attention(stab.patch_embedding(x[:, 0, :3]))
    torch.testing.assert_close(out[1][1:17], lsd[1, :16])


def test_clips_are_independent_and_frames_within_a_clip_interact(stab):
    x = masked_clip(box_for(640, 480), batch=2, frames=4, seed=9)
    base, _ = _run(stab, x)
    later = x.clone()
    later[1, 0, :3] += 1.0  # frame 4 of the video = first frame of clip 1
    out, _ = _run(stab, later)
    for i in range(4):
        torch.testing.assert_close(out[i], base[i], rtol=0, atol=0)
    assert not torch.allclose(out[4], base[4])
    earlier = x.clone()
    earlier[0, 3, :3] += 1.0  # frame 3: last of clip 0
    out, _ = _run(stab, earlier)
    for i in range(3):  # the temporal path (LSTE conv, GSTRA) carries it to frames 0-2
        assert not torch.allclose(out[i], base[i])
    for i in range(4, 8):
        torch.testing.assert_close(out[i], base[i], rtol=0, atol=0)


def test_split_token_closes_every_row(stab):
    out, grids = _run(stab, masked_clip(box_for(1280, 720), frames=4))
    h, w = grids[0]
    rows = out[0][1:].view(h, w + 1, 64)
    for r in range(h):
        torch.testing.assert_close(rows[r, w], stab.split_embedding)


def test_lmhra2_is_never_used(stab):
    x = masked_clip(FULL, frames=4, seed=2)
    base, _ = _run(stab, x)
    saved = {k: v.clone() for k, v in stab.lmhra2.state_dict().items()}
    try:
        with torch.no_grad():
            for p in stab.lmhra2.parameters():
                p.add_(1.0)
        out, _ = _run(stab, x)
    finally:
        stab.lmhra2.load_state_dict(saved)
    for a, b in zip(out, base, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_grouped_frames_equal_the_per_frame_loop(stab):
    boxes = [box_for(640, 480), FULL, box_for(720, 1280), None]
    clips = torch.cat([masked_clip(b, frames=4, seed=n) for n, b in enumerate(boxes)])
    clips[3, :2] = masked_clip(box_for(640, 480), frames=2, seed=8)[0]  # mixed sizes in a clip
    grouped, g1 = _run(stab, clips)
    with torch.no_grad():
        looped, g2 = stab(clips, group_frames=False)
    assert g1 == g2
    for a, b in zip(grouped, looped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
