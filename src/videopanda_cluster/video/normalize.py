"""Mask channel, CLIP normalisation and frame-count padding of the reference (spec §4.2–4.3)."""

from __future__ import annotations

import numpy as np
import torch

from .geometry import Geometry

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def valid_mask(geom: Geometry) -> torch.Tensor:
    """(S, S) float32: 1 on the valid band, 0 on the pad bands."""
    mask = torch.zeros(geom.size, geom.size, dtype=torch.float32)
    x0, y0, x1, y1 = geom.valid_box
    mask[y0:y1, x0:x1] = 1.0
    return mask


def to_model_input(
    letterboxed: np.ndarray, geom: Geometry, num_frames: int = 8, flip: bool = False
) -> torch.Tensor:
    """(T, S, S, 3) uint8 → (num_frames, 4, S, S) float32: CLIP-normalised RGB plus the mask.

    Missing frames (T < num_frames) are appended as all-zero tensors, mask included. ``flip``
    mirrors the RGB of all frames together and, like the reference, leaves the mask unflipped.
    """
    count = letterboxed.shape[0]
    if count > num_frames:
        raise ValueError(f"{count} frames given, at most {num_frames} expected")
    rgb = torch.from_numpy(np.ascontiguousarray(letterboxed)).permute(3, 0, 1, 2)  # (3, T, S, S)
    rgb = rgb / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None, None]
    rgb = (rgb - mean) / std
    if flip:
        rgb = rgb.flip(-1)
    out = torch.zeros(num_frames, 4, geom.size, geom.size, dtype=torch.float32)
    out[:count, :3] = rgb.permute(1, 0, 2, 3)
    out[:count, 3] = valid_mask(geom)
    return out
