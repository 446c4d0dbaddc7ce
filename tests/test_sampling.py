"""Frame positions per spec §4.1."""

import itertools

import numpy as np
import pytest

from videopanda_cluster.video.sampling import sample_positions


@pytest.mark.parametrize(
    ("n", "fps", "expected"),
    [
        (300, 30, [0, 30, 60, 90, 150, 180, 210, 270]),
        (150, 30, list(range(0, 148, 21))),
        (40, 10, list(range(0, 36, 5))),
        (5, 10, [0, 1, 2, 3, 4]),
    ],
)
def test_spec_examples(n, fps, expected):
    assert sample_positions(n, fps) == expected


def test_guards_for_reference_crashes():
    assert sample_positions(1, 30) == [0]  # N == 1 divides by zero in the reference
    assert sample_positions(20, 0.3) == sample_positions(20, 1.0)  # fps < 0.5: stride 0
    assert sample_positions(3, 0.1) == [0, 1, 2]


def test_grid_of_exactly_eight_is_taken_as_is():
    assert sample_positions(240, 30) == list(range(0, 240, 30))


@pytest.mark.parametrize("n", [2, 7, 8, 9, 15, 16, 17, 64, 239, 241, 1000, 54_321])
@pytest.mark.parametrize("fps", [0.4, 1, 7.5, 12.5, 23.976, 25, 29.97, 30, 60, 120])
def test_rules_hold_everywhere(n, fps):
    pos = sample_positions(n, fps)
    stride = max(1, round(fps))
    grid = list(range(0, n, stride))
    assert pos[0] == 0 and all(0 <= p < n for p in pos)
    assert all(a < b for a, b in itertools.pairwise(pos))
    if len(grid) >= 8:
        assert len(pos) == 8 and set(pos) <= set(grid) and pos[-1] == grid[-1]
    else:
        assert len(pos) == min(8, n)
        steps = set(np.diff(pos).tolist())
        assert len(steps) == 1  # one even stride over the video


def test_linspace_truncates_toward_zero():
    # 10 grid points -> linspace(0, 9, 8) = 0, 1.29, 2.57, 3.86, 5.14, ... : truncation picks 3, 5
    assert sample_positions(10, 1)[3:5] == [3, 5]


def test_rejects_empty_video():
    with pytest.raises(ValueError):
        sample_positions(0, 30)
