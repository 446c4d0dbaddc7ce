"""Helpers for model tests: randomised weights (no zero-inits hiding branches) and inputs."""

from __future__ import annotations

import torch
from torch import nn

from videopanda_cluster.video.geometry import compute_geometry


def randomize_(module: nn.Module, seed: int = 0, llm_std: float = 0.02) -> nn.Module:
    """Spec §9.1 weights: ≥2-D ~ N(0, 0.02), 1-D ~ N(0, 0.5) (+1 for norm weights), BN running
    mean ~ N(0, 0.1) and var ~ U(0.5, 1.5). Parameters under ``llm.`` use ``llm_std``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = llm_std if name.startswith("llm.") else 0.02
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
                if name.endswith("weight"):  # LayerNorm / BatchNorm / RMSNorm scales
                    p.add_(1.0)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return module


def masked_clip(
    mask_box: tuple[int, int, int, int] | None,
    batch: int = 1,
    frames: int = 4,
    size: int = 448,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """(batch, frames, 4, size, size) random RGB, mask 1 inside (x0, y0, x1, y1), 0 outside
    (all 0 when ``mask_box`` is None)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, 4, size, size, generator=gen, dtype=dtype)
    x[:, :, 3] = 0
    if mask_box is not None:
        x0, y0, x1, y1 = mask_box
        x[:, :, 3, y0:y1, x0:x1] = 1
    return x


def box_for(width: int, height: int) -> tuple[int, int, int, int]:
    """The valid box the reference preprocessing gives a width×height source."""
    return compute_geometry(width, height).valid_box
