"""Resize and pad frames onto the square input exactly like the reference processor (spec §4.2)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .geometry import Geometry

PAD_RGB = (122, 116, 104)  # int(255 * CLIP mean) per channel


def letterbox(frames: list[np.ndarray], geom: Geometry) -> np.ndarray:
    """PIL-bicubic resize each (H, W, 3) uint8 frame and paste it on the pad colour.

    Returns (T, S, S, 3) uint8 with S = ``geom.size``.
    """
    out = np.empty((len(frames), geom.size, geom.size, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        image = Image.fromarray(frame).resize(geom.resize, Image.Resampling.BICUBIC)
        if not geom.is_square:
            canvas = Image.new("RGB", (geom.size, geom.size), PAD_RGB)
            canvas.paste(image, geom.offset)
            image = canvas
        out[t] = np.asarray(image)
    return out
