"""The paper's ablation switches (VideoPandaConfig.no_gstra, …): each removes exactly its block."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.model_helpers import box_for, masked_clip, randomize_
from videopanda_cluster.model.config import ABLATIONS, VideoPandaConfig
from videopanda_cluster.model.stab import STAB, window_average

# top-level STAB parameter names each switch removes
REMOVED = {
    "no_gstra": {"temporal_cls_token", "dec", "proj", "balance"},
    "no_lste": {"lmhra1", "lmhra2", "dpe"},
    "no_fsra": {"class_embedding", "global_attention", "balance"},
    "no_split_tokens": {"split_embedding"},
    "lsd_avgpool": {"local_attention"},
}
# spec §2.2: the released checkpoint's keys under model.video_tower., in state-dict order
FULL_NAMES = [
    "class_embedding", "split_embedding", "temporal_cls_token", "balance", "patch_embedding",
    "lmhra1", "lmhra2", "dpe", "dec", "proj", "local_attention", "global_attention",
]  # fmt: skip


def _top(names) -> list[str]:
    return list(dict.fromkeys(n.split(".")[0] for n in names))


@pytest.fixture(scope="module")
def full() -> STAB:
    return randomize_(STAB(VideoPandaConfig.tiny()), seed=11).double().eval()


def _ablated(full: STAB, *switches: str) -> tuple[STAB, list[str]]:
    """An ablated STAB with the full model's weights where shared; returns the unused keys."""
    config = dataclasses.replace(full.config, **dict.fromkeys(switches, True))
    stab = STAB(config).double().eval()
    missing, unexpected = stab.load_state_dict(full.state_dict(), strict=False)
    assert missing == []
    return stab, unexpected


def _run(stab, x):
    with torch.no_grad():
        return stab(x)


def _clips():
    x = masked_clip(box_for(640, 480), batch=2, frames=4, seed=6)
    x[1, 3] = 0  # an appended all-zero frame
    return x


def test_full_model_keeps_the_checkpoint_keys(full):
    assert _top(full.state_dict()) == FULL_NAMES
    assert VideoPandaConfig().ablations == [] and VideoPandaConfig().context_tokens == 1


@pytest.mark.parametrize("switch", ABLATIONS)
def test_each_switch_removes_its_parameters_and_changes_the_output(full, switch):
    stab, unexpected = _ablated(full, switch)
    assert set(_top(unexpected)) == REMOVED[switch]
    assert _top(stab.state_dict()) == [n for n in FULL_NAMES if n not in REMOVED[switch]]
    x = _clips()
    base, base_grids = _run(full, x)
    out, grids = _run(stab, x)
    assert grids == base_grids == [(12, 16)] * 7 + [(8, 8)]
    assert [t.shape[0] for t in out] == [stab.config.frame_tokens(g) for g in grids]
    assert all(t.shape[1] == 64 for t in out)
    assert any(
        a.shape != b.shape or not torch.allclose(a, b) for a, b in zip(out, base, strict=True)
    )


def _split(tokens: torch.Tensor, grid: tuple[int, int], columns: int):
    """(1 + h·columns, C) → context (C,), rows (h, columns, C)."""
    return tokens[0], tokens[1:].view(grid[0], columns, -1)


def test_no_split_tokens_drops_only_the_split_column(full):
    stab, _ = _ablated(full, "no_split_tokens")
    x = _clips()
    for a, b, g in zip(_run(stab, x)[0], *_run(full, x), strict=True):
        ctx_a, rows_a = _split(a, g, g[1])
        ctx_b, rows_b = _split(b, g, g[1] + 1)
        torch.testing.assert_close(ctx_a, ctx_b, rtol=0, atol=0)
        torch.testing.assert_close(rows_a, rows_b[:, :-1], rtol=0, atol=0)


@pytest.mark.parametrize("switch", ["no_gstra", "no_fsra"])
def test_context_ablations_change_only_the_context_token(full, switch):
    stab, _ = _ablated(full, switch)
    x = _clips()
    out, _ = _run(stab, x)
    base, _ = _run(full, x)
    for a, b in zip(out, base, strict=True):
        torch.testing.assert_close(a[1:], b[1:], rtol=0, atol=0)
        assert not torch.allclose(a[0], b[0])


def test_no_gstra_context_is_the_fsra_token_and_no_fsra_context_is_proj_of_gstra(full):
    x = _clips()
    no_gstra, _ = _ablated(full, "no_gstra")
    seen = []
    hook = full.global_attention.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        out, _ = _run(no_gstra, x)  # shares full.global_attention's weights, not the module
        _run(full, x)
    finally:
        hook.remove()
    fsra = torch.cat(seen)  # (8, C): groups (12, 16) = frames 0-6 and (8, 8) = frame 7
    torch.testing.assert_close(torch.stack([t[0] for t in out]), fsra)

    no_fsra, _ = _ablated(full, "no_fsra")
    out, _ = _run(no_fsra, x)
    with torch.no_grad():
        clip_tokens = _run_gstra(full, x)  # (2, C)
        for i, t in enumerate(out):
            torch.testing.assert_close(t[0], full.proj(clip_tokens[i // 4]))


def _run_gstra(stab: STAB, x: torch.Tensor) -> torch.Tensor:
    patches = stab.patch_embedding(x.flatten(0, 1)[:, :3])
    return stab._temporal(patches, x.shape[0], x.shape[1])[1]


def test_without_fsra_and_gstra_frames_have_no_context_token(full):
    stab, _ = _ablated(full, "no_fsra", "no_gstra")
    assert stab.config.context_tokens == 0
    out, grids = _run(stab, _clips())
    assert [t.shape[0] for t in out] == [h * (w + 1) for h, w in grids]
    assert stab.config.frame_tokens((12, 16)) == 12 * 17


def test_no_lste_feeds_raw_patches_to_gstra_and_lsd(full):
    stab, _ = _ablated(full, "no_lste")
    x = _clips()
    seen = []
    hook = stab.local_attention.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    try:
        _run(stab, x)
    finally:
        hook.remove()
    raw = stab.patch_embedding(x.flatten(0, 1)[:, :3])  # (8, C, 32, 32)
    torch.testing.assert_close(seen[0], raw[:7, :, 4:28])  # no dense skip: not 2·raw
    with torch.no_grad():
        tokens = raw.unflatten(0, (2, 4)).flatten(3).permute(0, 1, 3, 2).flatten(1, 2)
        expected = full.dec(full.temporal_cls_token.expand(2, 1, -1), tokens)[:, 0]
    torch.testing.assert_close(_run_gstra(stab, x), expected)


def test_lsd_avgpool_rows_are_window_means(full):
    stab, _ = _ablated(full, "lsd_avgpool")
    x = masked_clip(box_for(1280, 720), batch=2, frames=1, seed=3)  # T = 1: no temporal path
    out, grids = _run(stab, x)
    h, w = grids[0]
    crops = stab.patch_embedding(x[:, 0, :3])[:, :, 6:24]  # patch rows 6..23 (pixels 84..335)
    pooled = window_average(crops, 2).view(2, h, w, 64)
    for i in range(2):
        torch.testing.assert_close(out[i][1:].view(h, w + 1, 64)[:, :w], pooled[i])


def test_all_switches_together_still_give_a_valid_layout(full):
    stab, _ = _ablated(full, *ABLATIONS)
    assert _top(stab.state_dict()) == ["patch_embedding"]
    out, grids = _run(stab, _clips())
    assert [t.shape[0] for t in out] == [h * w for h, w in grids]


def test_config_json_round_trips_the_switches():
    for switches in [(), ("no_lste",), ABLATIONS]:
        config = dataclasses.replace(VideoPandaConfig.tiny(), **dict.fromkeys(switches, True))
        data = config.to_json_dict()
        assert {k: data["videopanda"][k] for k in ABLATIONS} == {
            k: k in switches for k in ABLATIONS
        }
        back = VideoPandaConfig.from_json_dict(data)
        assert back == config and back.ablations == list(switches)
    old = VideoPandaConfig.tiny().to_json_dict()
    for k in ABLATIONS:  # configs written before the switches existed load as the full model
        del old["videopanda"][k]
    assert VideoPandaConfig.from_json_dict(old).ablations == []


def test_model_info_counts_the_ablated_model():
    from videopanda_cluster.model.info import model_info

    full = model_info(VideoPandaConfig.tiny())
    info = model_info(
        dataclasses.replace(VideoPandaConfig.tiny(), no_lste=True, no_split_tokens=True)
    )
    assert info["stab"] == info["stab_active"] < full["stab_active"]
    assert info["tokens_per_video"] == 8 * (1 + 16 * 16) and full["tokens_per_video"] == 2184
