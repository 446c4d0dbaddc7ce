"""Frame positions exactly as the reference eval scripts choose them (spec §4.1)."""

from __future__ import annotations

import numpy as np


def sample_positions(num_frames: int, fps: float, num_samples: int = 8) -> list[int]:
    """Return the frame indices the reference reads from a video of ``num_frames`` at ``fps``.

    A 1-fps grid ``range(0, N, round(fps))`` is thinned to ``num_samples`` with a truncating
    linspace; a grid shorter than ``num_samples`` is replaced by an even stride over the whole
    video (or all N frames when N < num_samples). Two reference crashes are guarded: fps < 0.5
    (stride 0) uses stride 1, and N == 1 (division by zero) gives ``[0]``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    stride = max(1, round(fps / 1))  # Python round(): ties to even, as the reference
    grid = range(0, num_frames, stride)
    if len(grid) > num_samples:
        picks = np.linspace(0, len(grid) - 1, num_samples, dtype=int)
        return [grid[int(k)] for k in picks]
    if len(grid) == num_samples:
        return list(grid)
    m = num_samples if num_frames >= num_samples else num_frames
    if m == 1:
        return [0]
    step = max(1, (num_frames - 1) // (m - 1))
    return list(range(0, step * (m - 1) + 1, step))
