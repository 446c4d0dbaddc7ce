"""Spatio-Temporal Alignment Block (STAB), the encoder-free video tower (spec §2).

Parameter names equal the released checkpoint's keys below ``model.video_tower.``.

    pixels (B, T, 4, H, W)           B clips of T frames; channel 3 is the validity mask
    -> patch embedding               P: (B·T, C, gh, gw)
    -> LSTE (T > 1)                  X2 = X1 + dpe(X1), X1 = X + lmhra1(X), per clip
    -> GSTRA (T > 1)                 G: (B, C), one video-level token per clip
    -> dense skip (T > 1)            P = X2 + P
    -> crop to the valid patches     (C, H', W') per frame
    -> LSD                           S: (h·w, C), 2×2 windows, query = pooled window
    -> FSRA                          c: (C,), shared learned query over S
    -> rows + split tokens           (h·(w+1), C)
    -> context fusion (T > 1)        ctx = proj(α·c + (1−α)·G[clip]), α = sigmoid(balance)
    => per frame (1 + h·(w+1), C)    [ctx, row 0, split, row 1, split, ...]

H = W = ``config.image_size`` (448 released; any multiple of 28), so gh = gw = H/14. The ablation
switches of the config remove blocks (their parameters are not created); see VideoPandaConfig.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import VideoPandaConfig

PADDED_FRAME_CROP = 16  # at 448 a fully padded frame keeps its top-left 16×16 patches (spec §8 #7)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LocalMHRA(nn.Module):
    """LSTE temporal branch: BN3d → 1×1×1 down → depthwise temporal (3,1,1) conv → 1×1×1 up."""

    def __init__(self, width: int, reduction: float = 1.5) -> None:
        super().__init__()
        reduced = int(width // reduction)
        self.pos_embed = nn.Sequential(
            nn.BatchNorm3d(width),
            nn.Conv3d(width, reduced, kernel_size=1),
            nn.Conv3d(reduced, reduced, kernel_size=(3, 1, 1), padding=(1, 0, 0), groups=reduced),
            nn.Conv3d(reduced, width, kernel_size=1),
        )
        up = cast(nn.Conv3d, self.pos_embed[3])
        assert up.bias is not None  # bias=True
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, h, w) -> same
        return self.pos_embed(x)


class GSTRA(nn.Module):
    """One pre-LN transformer block whose single query attends to all tokens of a clip.

    Multi-head attention uses ``attn``'s packed projections and the usual 1/sqrt(head_dim) scale,
    then a 4× QuickGELU MLP.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.5):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)  # parameters only; maths in forward
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.ln_3 = nn.LayerNorm(width)
        hidden = round(mlp_ratio * width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, hidden),
                gelu=QuickGELU(),
                dropout=nn.Dropout(dropout),
                c_proj=nn.Linear(hidden, width),
            )
        )
        for layer in (self.attn.out_proj, cast(nn.Linear, self.mlp.c_proj)):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # query (B, 1, C), tokens (B, L, C) -> (B, 1, C)
        x = query + self._attention(self.ln_1(query), self.ln_3(tokens))
        return x + self.mlp(self.ln_2(x))

    def _attention(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        width, heads = x.shape[-1], self.attn.num_heads
        w_q, w_k, w_v = self.attn.in_proj_weight.split(width)
        b_q, b_k, b_v = self.attn.in_proj_bias.split(width)
        q = F.linear(x, w_q, b_q).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, h, 1, d)
        k = F.linear(y, w_k, b_k).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, h, L, d)
        v = F.linear(y, w_v, b_v).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, h, L, d)
        affinity = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        out = (affinity @ v).transpose(1, 2).flatten(2)  # (B, 1, C)
        return self.attn.out_proj(out)


class QueryAttention(nn.Module):
    """Queries attend to keys; logits scaled by 1/sqrt(C) (full width, not head dim); residual
    to the raw query: ``query + proj(attention)``. No biases in q and kv."""

    def __init__(self, width: int, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.scale = width**-0.5
        self.q = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width, bias=False))
        self.kv = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width, bias=False))
        self.proj = nn.Linear(width, width)

    def attend(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # query (..., Q, C), keys (..., N, C) -> (..., Q, C)
        q = self.q(query).unflatten(-1, (self.heads, -1))  # (..., Q, h, d)
        k, v = self.kv(keys).unflatten(-1, (2, self.heads, -1)).unbind(-3)  # (..., N, h, d)
        logits = torch.einsum("...qhd,...nhd->...hqn", q * self.scale, k)
        out = torch.einsum("...hqn,...nhd->...qhd", logits.softmax(dim=-1), v)
        return query + self.proj(out.flatten(-2))


def window_average(x: torch.Tensor, window: int) -> torch.Tensor:
    """(G, C, H, W) → (G, h·w, C): mean of each window×window cell, row-major (cell order)."""
    return F.avg_pool2d(x, kernel_size=window, stride=window).flatten(2).transpose(1, 2)


class LSD(QueryAttention):
    """Local spatial downsampling: each s×s window becomes one token (query = the pooled window)."""

    def __init__(self, width: int, window: int = 2, heads: int = 8) -> None:
        super().__init__(width, heads)
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (G, C, H, W) -> (G, h·w, C)
        s = self.window
        g, c, height, width = x.shape
        h, w = height // s, width // s
        x = x[:, :, : h * s, : w * s]
        pooled = window_average(x, s)  # (G, h·w, C)
        windows = x.reshape(g, c, h, s, w, s).permute(0, 2, 4, 3, 5, 1).reshape(g, h * w, s * s, c)
        return self.attend(pooled.unsqueeze(2), windows).squeeze(2)


class FSRA(QueryAttention):
    """Frame-wise spatial relation aggregator: one shared learned query over a frame's tokens."""

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # query (C,), tokens (G, N, C) -> (G, C)
        q = query.expand(tokens.shape[0], 1, -1)
        return self.attend(q, tokens)[:, 0]


class STAB(nn.Module):
    """The video tower: clips to per-frame token sequences (before the projector)."""

    def __init__(self, config: VideoPandaConfig) -> None:
        super().__init__()
        self.config = config
        width = config.stab_width
        self.patch_stride = config.patch_stride
        self.window = config.conv_stride
        self.padded_crop = config.image_size // config.patch_stride // 2  # 16 patches at 448
        self.patch_embedding = nn.Conv2d(
            3, width, kernel_size=config.patch_stride, stride=config.patch_stride, bias=False
        )
        # Blocks removed by an ablation switch are None: no parameters, no checkpoint keys.
        # Registration order (= checkpoint key order) is that of the full model.
        fsra, gstra, lste = not config.no_fsra, not config.no_gstra, not config.no_lste
        self.class_embedding = nn.Parameter(torch.randn(width)) if fsra else None
        self.split_embedding = None
        if not config.no_split_tokens:
            self.split_embedding = nn.Parameter(torch.randn(width))
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, width)) if gstra else None
        self.lmhra1 = self.lmhra2 = self.dpe = None
        if lste:
            self.lmhra1 = LocalMHRA(width, config.dw_reduction)
            # Unused by the forward pass (as in the reference); kept so the released checkpoint
            # loads strictly. Its BN stats stay at mean 0 / var 1, an integrity check.
            self.lmhra2 = LocalMHRA(width, config.dw_reduction)
            self.dpe = nn.Conv3d(width, width, kernel_size=3, padding=1, groups=width)
            assert self.dpe.bias is not None  # bias=True
            nn.init.zeros_(self.dpe.bias)
        self.dec = self.proj = None
        if gstra:
            self.dec = GSTRA(width, config.gstra_heads, config.mlp_ratio, config.dropout)
            self.proj = nn.Sequential(
                nn.LayerNorm(width), nn.Dropout(config.dropout), nn.Linear(width, width)
            )
        self.balance = nn.Parameter(torch.zeros(width)) if fsra and gstra else None
        self.local_attention = None
        if not config.lsd_avgpool:
            self.local_attention = LSD(width, config.conv_stride, config.stab_heads)
        self.global_attention = FSRA(width, config.stab_heads) if fsra else None

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def forward(
        self, pixels: torch.Tensor, group_frames: bool = True
    ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """(B, T, 4, S, S) → per frame (1 + h·(w+1), C) tokens and (h, w), clip-major order.

        S must be ``config.image_size``. Frames whose crops share a size go through LSD/FSRA
        together (``group_frames``); without it every frame runs alone (same numbers, slower).
        """
        b, t = pixels.shape[:2]
        self.config.check_input_size(*pixels.shape[-2:])
        x = pixels.flatten(0, 1).to(self.dtype)  # (B·T, 4, S, S)
        patches = self.patch_embedding(x[:, :3])  # (B·T, C, gh, gw)
        masks = F.avg_pool2d(x[:, 3:], self.patch_stride, self.patch_stride)[:, 0]  # (B·T, gh, gw)
        patches, clip_tokens = self._temporal(patches, b, t)

        boxes = [_crop_box(m, self.padded_crop) for m in masks.cpu()]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, box in enumerate(boxes):
            key = tuple(_crop(patches[i], box).shape[1:]) if group_frames else (i,)
            groups.setdefault(key, []).append(i)

        out: list[torch.Tensor | None] = [None] * len(boxes)
        grids: list[tuple[int, int]] = [(0, 0)] * len(boxes)
        for frames in groups.values():
            crops = torch.stack([_crop(patches[i], boxes[i]) for i in frames])
            idx = torch.tensor(frames, device=patches.device)
            tokens, grid = self._frame_tokens(crops, clip_tokens, idx // t)
            for j, i in enumerate(frames):
                out[i], grids[i] = tokens[j], grid
        return out, grids  # type: ignore[return-value]

    def _temporal(
        self, patches: torch.Tensor, b: int, t: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LSTE + dense skip and GSTRA, per clip of T > 1 frames: (B·T, C, gh, gw) → same, and
        the clip tokens (B, C) (None for single frames or without GSTRA)."""
        if t == 1:
            return patches, None
        v = patches.unflatten(0, (b, t)).transpose(1, 2)  # (B, C, T, gh, gw)
        if self.lmhra1 is not None:
            assert self.dpe is not None  # LSTE creates lmhra1 and dpe together
            v = v + self.lmhra1(v)  # LSTE, temporal conv zero-padded at clip edges
            v = v + self.dpe(v)
        clip_tokens = None
        if self.dec is not None:
            assert self.temporal_cls_token is not None  # GSTRA creates dec and the query together
            tokens = v.flatten(2).transpose(1, 2)  # (B, T·gh·gw, C), t-major
            query = self.temporal_cls_token.expand(b, 1, -1)
            clip_tokens = self.dec(query, tokens)[:, 0]  # GSTRA: (B, C)
        if self.lmhra1 is not None:
            patches = v.transpose(1, 2).flatten(0, 1) + patches  # dense skip
        return patches, clip_tokens

    def _frame_tokens(
        self, crops: torch.Tensor, clip_tokens: torch.Tensor | None, clip_index: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """LSD, FSRA, split-token rows and context fusion for G crops of one size."""
        g, c, height, width = crops.shape
        h, w = height // self.window, width // self.window
        if self.local_attention is None:
            spatial = window_average(crops, self.window)  # ablation: (G, h·w, C)
        else:
            spatial = self.local_attention(crops)  # (G, h·w, C)
        rows = spatial.view(g, h, w, c)
        if self.split_embedding is not None:
            split = self.split_embedding.to(self.dtype).expand(g, h, 1, c)
            rows = torch.cat([rows, split], dim=2)  # (G, h, w+1, C)
        rows = rows.flatten(1, 2)  # (G, h·(w+1), C)
        context = self._context(spatial, clip_tokens, clip_index)
        if context is None:
            return rows, (h, w)
        return torch.cat([context.unsqueeze(1), rows], dim=1), (h, w)

    def _context(
        self, spatial: torch.Tensor, clip_tokens: torch.Tensor | None, clip_index: torch.Tensor
    ) -> torch.Tensor | None:
        """(G, h·w, C) → (G, C): proj(α·FSRA + (1−α)·GSTRA); the FSRA token alone when there is
        no clip token (T = 1, no_gstra), proj(GSTRA) under no_fsra, None when neither exists."""
        frame = None
        if self.global_attention is not None:
            assert self.class_embedding is not None  # FSRA creates both
            frame = self.global_attention(self.class_embedding.to(self.dtype), spatial)  # (G, C)
        if clip_tokens is None:
            return frame
        clip = clip_tokens[clip_index]  # (G, C)
        assert self.proj is not None  # clip tokens come from GSTRA, which creates proj
        if frame is None:
            return self.proj(clip)
        assert self.balance is not None  # FSRA and GSTRA both present
        alpha = torch.sigmoid(self.balance)
        return self.proj(alpha * frame + (1 - alpha) * clip)


def _crop_box(mask: torch.Tensor, padded: int = PADDED_FRAME_CROP) -> tuple[int, int, int, int]:
    """(h1, w1, h2, w2), end-exclusive: from the first to the last nonzero patch in row-major
    order (the reference's rule); the top-left ``padded``×``padded`` for a fully padded frame."""
    nonzero = torch.nonzero(mask.flatten())
    if nonzero.numel() == 0:
        return 0, 0, padded, padded
    cols = mask.shape[1]
    h1, w1 = divmod(int(nonzero[0]), cols)
    h2, w2 = divmod(int(nonzero[-1]), cols)
    return h1, w1, h2 + 1, w2 + 1


def _crop(patches: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    h1, w1, h2, w2 = box
    return patches[:, h1:h2, w1:w2]
