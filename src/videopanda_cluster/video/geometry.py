"""Resize/pad geometry and token grid of the reference "anypixel" preprocessing (spec §2.6, §4.2).

The geometry is computed at teacher scale (224 px, patch 14) and then doubled to 448 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BASE_SIZE = 224  # teacher scale the reference computes the geometry at
PATCH = 14  # teacher patch size
GRID = BASE_SIZE // PATCH  # 16 cells on the long side at teacher scale
PADDED_FRAME_TOKENS = 1 + 8 * (8 + 1)  # an all-zero frame keeps the top-left 8×8 grid (spec §8.7)


@dataclass(frozen=True)
class Geometry:
    """Where a W×H source lands inside the square model input.

    ``resize`` is the (width, height) every frame is resized to; ``offset`` the (x, y) at which it
    is pasted; ``valid_box`` is (x0, y0, x1, y1) of the unpadded region; ``token_grid`` is the
    (h, w) token grid after STAB's LSD for a frame with this mask.
    """

    source_size: tuple[int, int]
    size: int
    resize: tuple[int, int]
    offset: tuple[int, int]
    valid_box: tuple[int, int, int, int]
    token_grid: tuple[int, int]

    @property
    def is_square(self) -> bool:
        """True when the frame fills the whole input (no padding, mask all ones)."""
        return self.resize == (self.size, self.size)

    @property
    def tokens_per_frame(self) -> int:
        """CTX token plus each row of w tokens followed by a split token: 1 + h·(w+1)."""
        h, w = self.token_grid
        return 1 + h * (w + 1)


def compute_geometry(width: int, height: int, size: int = 448) -> Geometry:
    """Reference geometry for a ``width``×``height`` source (first frame) at input ``size``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"source size must be positive, got {width}x{height}")
    if size % BASE_SIZE:
        raise ValueError(f"input size must be a multiple of {BASE_SIZE}, got {size}")
    ratio = size // BASE_SIZE
    landscape = width > height
    # Same float expression and evaluation order as the reference: ((224*H)/W)/14.
    if landscape:
        v = math.ceil(BASE_SIZE * height / width / PATCH)
    else:
        v = math.ceil(BASE_SIZE * width / height / PATCH)
    pre = ((GRID - v) // 2) * PATCH * ratio
    valid = v * PATCH * ratio
    long_side = BASE_SIZE * ratio
    if landscape:
        resize = (long_side, valid)
        offset = (0, pre)
        box = (0, pre, long_side, pre + valid)
        grid = (v, GRID)
    else:
        resize = (valid, long_side)
        offset = (pre, 0)
        box = (pre, 0, pre + valid, long_side)
        grid = (GRID, v)
    return Geometry((width, height), size, resize, offset, box, grid)
