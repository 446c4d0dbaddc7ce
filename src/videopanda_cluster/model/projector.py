"""Video projector from STAB width to LLM width (spec §1.4)."""

from __future__ import annotations

from torch import nn


def build_projector(kind: str, in_width: int, out_width: int) -> nn.Module:
    """``mlp2x_gelu``: Linear → exact (erf) GELU → Linear, row-wise; ``linear``: one Linear."""
    if kind == "mlp2x_gelu":
        return nn.Sequential(
            nn.Linear(in_width, out_width), nn.GELU(), nn.Linear(out_width, out_width)
        )
    if kind == "linear":
        return nn.Linear(in_width, out_width)
    raise ValueError(f"unknown projector type {kind!r}")
