"""Resize/pad geometry and token grid of the reference "anypixel" preprocessing (spec §2.6, §4.2).

The reference computes the geometry at teacher scale (224 px, patch 14, a 16-cell grid) and doubles
it to its 448-px input. For any input size S (a multiple of 28) we apply the same rule at teacher
scale S/2: a grid of S/28 cells of 14 px, then ×2, so one cell is one STAB token (2×2 patches of
14 px after LSD). At S = 448 every number is the reference's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PATCH = 14  # teacher patch size (= STAB patch stride)
RATIO = 2  # input scale / teacher scale (= LSD window)
CELL = PATCH * RATIO  # 28 input pixels per token cell
REFERENCE_SIZE = 448
BASE_SIZE = REFERENCE_SIZE // RATIO  # 224, the reference's teacher scale
GRID = BASE_SIZE // PATCH  # 16 cells on the long side at 448


def grid_cells(size: int = REFERENCE_SIZE) -> int:
    """Token cells on the long side for input ``size`` (16 at 448); raises unless size % 28 == 0."""
    if size <= 0 or size % CELL:
        raise ValueError(f"input size must be a positive multiple of {CELL}, got {size}")
    return size // CELL


def frame_tokens(grid: tuple[int, int], split_tokens: bool = True) -> int:
    """Tokens of one frame with token grid (h, w): CTX + h rows of w tokens, each row closed by
    a split token unless ``split_tokens`` is off: 1 + h·(w+1), or 1 + h·w."""
    h, w = grid
    return 1 + h * (w + int(split_tokens))


def padded_frame_grid(size: int = REFERENCE_SIZE) -> tuple[int, int]:
    """(h, w) of an all-zero (appended) frame: STAB keeps the top-left quarter of its patch grid,
    16×16 patches of 32×32 at 448 (spec §8 #7), so (g/2, g/2) tokens with g = size/28."""
    half = grid_cells(size) // 2
    return half, half


def padded_frame_tokens(size: int = REFERENCE_SIZE, split_tokens: bool = True) -> int:
    """Tokens of an all-zero frame: 73 at 448, 21 at 224, 7 at 112 (with split tokens)."""
    return frame_tokens(padded_frame_grid(size), split_tokens)


PADDED_FRAME_TOKENS = padded_frame_tokens()  # 1 + 8·(8+1) = 73 at the reference 448


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
        return frame_tokens(self.token_grid)

    @property
    def padded_frame_tokens(self) -> int:
        """Tokens of an all-zero frame appended at this input size (73 at 448)."""
        return padded_frame_tokens(self.size)


def compute_geometry(width: int, height: int, size: int = REFERENCE_SIZE) -> Geometry:
    """Reference geometry for a ``width``×``height`` source (first frame) at input ``size``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"source size must be positive, got {width}x{height}")
    grid = grid_cells(size)
    base = size // RATIO  # teacher scale
    landscape = width > height
    # Same float expression and evaluation order as the reference: ((224*H)/W)/14 at 448.
    if landscape:
        v = math.ceil(base * height / width / PATCH)
    else:
        v = math.ceil(base * width / height / PATCH)
    pre = ((grid - v) // 2) * PATCH * RATIO
    valid = v * PATCH * RATIO
    if landscape:
        resize = (size, valid)
        offset = (0, pre)
        box = (0, pre, size, pre + valid)
        token_grid = (v, grid)
    else:
        resize = (valid, size)
        offset = (pre, 0)
        box = (pre, 0, pre + valid, size)
        token_grid = (grid, v)
    return Geometry((width, height), size, resize, offset, box, token_grid)
