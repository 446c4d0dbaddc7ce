"""Frame positions: exactly as the reference eval scripts choose them (spec §4.1), and as
``transformers``' video processors choose them for the other backends (docs/backends.md)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


def uniform_positions(total: int, count: int) -> list[int]:
    """``transformers``' ``BaseVideoProcessor.sample_frames`` for ``count`` frames of ``total``:
    ``torch.arange(0, total, total / count).int()``, reproduced without torch (the positions are
    computed in double precision, rounded to float32 and truncated, as torch's CPU arange)."""
    if total < 1:
        raise ValueError(f"need at least one frame, got {total}")
    if count < 1:  # a rate-based count that rounds to nothing: the video is too short for it
        raise TooFewFrames(f"the sampling takes no frame of a video of {total}")
    if count > total:
        raise TooFewFrames(f"{count} frames asked of a video of {total}")
    step = total / count
    length = math.ceil(total / step)
    return [int(np.float32(i * step)) for i in range(length)]


def qwen2_vl_count(total: int, fps: float, spec: FrameSpec) -> int:
    """Frames ``Qwen2VLVideoProcessor.sample_frames`` takes: ``num_frames`` rounded to the
    temporal patch, or ``fps`` per second within [min_frames, max_frames], floored to it."""
    patch = spec.temporal_patch_size
    if spec.num_frames is not None:
        return round(spec.num_frames / patch) * patch
    if spec.fps is None or fps <= 0:
        raise ValueError("fps sampling needs the video's frame rate")
    cap = math.floor(min(spec.max_frames or total, total) / patch) * patch
    count = min(min(max(total / fps * spec.fps, spec.min_frames), cap), total)
    return math.floor(count / patch) * patch


class TooFewFrames(ValueError):
    """The video has fewer frames than the model's sampling asks for (a fault of the video)."""


@dataclass(frozen=True)
class FrameSpec:
    """What a backend asks of the decoder: which frames (``rule``, a key of :data:`SAMPLERS`,
    with its parameters) and at what size (``size``: the square letterbox side of Video-Panda's
    preprocessing; None: the frames as decoded, which the backend resizes itself)."""

    num_frames: int | None = 8  # None: from ``fps`` (rules that allow it)
    rule: str = "reference"
    fps: float | None = None  # frames per second of video to take instead of num_frames
    temporal_patch_size: int = 1  # "qwen2_vl": the count is a multiple of it
    min_frames: int = 1
    max_frames: int | None = None
    size: int | None = 448

    def __post_init__(self) -> None:
        if self.rule not in SAMPLERS:
            raise ValueError(f"unknown sampling rule {self.rule!r}; known: {', '.join(SAMPLERS)}")
        if self.num_frames is None and self.fps is None:
            raise ValueError("a FrameSpec needs num_frames or fps")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")

    def positions(self, total: int, fps: float) -> list[int]:
        """The frame indices to decode from a video of ``total`` frames at ``fps``."""
        return SAMPLERS[self.rule](total, fps, self)


def _uniform(total: int, fps: float, spec: FrameSpec) -> list[int]:
    count = spec.num_frames if spec.num_frames is not None else int(total / fps * (spec.fps or 0))
    return uniform_positions(total, count)


# rule -> (frames in the video, its fps, spec) -> indices to decode
SAMPLERS: dict[str, Callable[[int, float, FrameSpec], list[int]]] = {
    "reference": lambda total, fps, spec: sample_positions(total, fps, spec.num_frames or 8),
    "uniform": _uniform,
    "qwen2_vl": lambda total, fps, spec: uniform_positions(total, qwen2_vl_count(total, fps, spec)),
}
