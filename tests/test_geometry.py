"""Resize/pad geometry and token grids per spec §2.6 and §4.2."""

import pytest

from videopanda_cluster.video.geometry import compute_geometry

# spec §2.6: source W×H -> valid region at 448 (x0, y0, x1, y1), token grid (h, w), tokens/frame
SPEC_TABLE = [
    ((500, 500), (0, 0, 448, 448), (16, 16), 273),
    ((320, 240), (0, 56, 448, 392), (12, 16), 205),
    ((640, 480), (0, 56, 448, 392), (12, 16), 205),
    ((340, 256), (0, 28, 448, 392), (13, 16), 222),
    ((250, 200), (0, 28, 448, 392), (13, 16), 222),
    ((176, 144), (0, 28, 448, 420), (14, 16), 239),
    ((1280, 720), (0, 84, 448, 336), (9, 16), 154),
    ((1920, 1080), (0, 84, 448, 336), (9, 16), 154),
    ((240, 320), (56, 0, 392, 448), (16, 12), 209),
    ((720, 1280), (84, 0, 336, 448), (16, 9), 161),
]


@pytest.mark.parametrize(("size", "box", "grid", "tokens"), SPEC_TABLE)
def test_spec_table(size, box, grid, tokens):
    g = compute_geometry(*size)
    assert g.valid_box == box
    assert g.token_grid == grid
    assert g.tokens_per_frame == tokens
    x0, y0, x1, y1 = box
    assert g.resize == (x1 - x0, y1 - y0)
    assert g.offset == (x0, y0)


def test_square_and_near_square_fill_the_input():
    for size in [(500, 500), (480, 470), (470, 480)]:
        g = compute_geometry(*size)
        assert g.is_square and g.valid_box == (0, 0, 448, 448) and g.token_grid == (16, 16)


def test_asymmetric_portrait_padding():
    g = compute_geometry(256, 340)  # pad 28 left / 56 right (spec §8 #8)
    assert g.valid_box == (28, 0, 392, 448) and g.token_grid == (16, 13)


@pytest.mark.parametrize("w", [16, 97, 176, 333, 640, 1280, 4000])
@pytest.mark.parametrize("h", [16, 120, 144, 481, 720, 1280, 3000])
def test_bands_are_patch_aligned_and_follow_aspect(w, h):
    g = compute_geometry(w, h)
    x0, y0, x1, y1 = g.valid_box
    assert all(v % 28 == 0 for v in g.valid_box)
    assert (x1 - x0, y1 - y0) == (g.token_grid[1] * 28, g.token_grid[0] * 28)
    short = min(x1 - x0, y1 - y0)
    # the short side is the aspect-scaled long side rounded up to a whole 28-px cell
    assert short - 28 < 448 * min(w, h) / max(w, h) <= short + 1e-9
