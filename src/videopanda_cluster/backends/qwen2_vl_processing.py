"""Qwen2-VL's video preprocessing as ``transformers``' ``Qwen2VLVideoProcessor`` applies it (the
video processor of ``qwen2_vl`` and ``qwen2_5_vl`` folders alike), in torch without torchvision:
frame sampling settings, ``smart_resize``, bicubic resize, rescale + normalise, the temporal
padding and the patch flattening to ``pixel_values_videos`` with its ``video_grid_thw``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from ..video.sampling import FrameSpec
from .processing import PROCESSOR_DEFAULTS, VideoProcessing, resize

# frames taken when the folder's processor does not sample (do_sample_frames false: transformers
# then processes every frame it is given, so the count is ours to choose; --num-frames sets it)
DEFAULT_NUM_FRAMES = 8


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The frame size Qwen2-VL resizes to: both sides multiples of ``factor`` (patch x merge),
    the area within [min_pixels, max_pixels], the aspect ratio kept as closely as that allows."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio above 200: {height}x{width}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


QWEN2_VL_VIDEO_PROCESSOR = "Qwen2VLVideoProcessor"


def _setting(name: str) -> property:
    """A read-only integer setting kept in ``extra`` (the processor's own keys)."""
    return property(lambda self: int(self.extra[name]))


class QwenVideoProcessing(VideoProcessing):
    """The settings of a folder's ``Qwen2VLVideoProcessor`` (its class defaults in
    :data:`~.processing.PROCESSOR_DEFAULTS`) and what they do to a video: ``size``'s edges are
    pixel areas; its patch and frame settings are among the config's other keys."""

    @classmethod
    def from_dict(
        cls, config: Mapping[str, Any], processor_class: str = QWEN2_VL_VIDEO_PROCESSOR
    ) -> Self:
        """As ``Qwen2VLVideoProcessor.__init__`` reads it: ``size`` (shortest_edge/longest_edge,
        both or neither) with ``min_pixels``/``max_pixels`` over its edges where those are set."""
        values = dict(config)
        size = dict(values.get("size") or PROCESSOR_DEFAULTS[processor_class]["size"])
        for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if values.pop(key, None) is not None:
                size[edge] = config[key]
        if "shortest_edge" not in size or "longest_edge" not in size:
            raise ValueError(f"size must have shortest_edge and longest_edge, got {sorted(size)}")
        return super().from_dict({**values, "size": size}, processor_class)

    @classmethod
    def from_folder(cls, folder: str | Path, default_class: str = QWEN2_VL_VIDEO_PROCESSOR) -> Self:
        return super().from_folder(folder, default_class)

    @property
    def min_pixels(self) -> int:
        return int((self.size or {})["shortest_edge"])

    @property
    def max_pixels(self) -> int:
        return int((self.size or {})["longest_edge"])

    # the patch and frame settings, among the config's other keys
    patch_size = _setting("patch_size")
    temporal_patch_size = _setting("temporal_patch_size")
    merge_size = _setting("merge_size")
    min_frames = _setting("min_frames")
    max_frames = _setting("max_frames")

    def frame_spec(self, num_frames: int | None = None) -> FrameSpec:
        """Which frames to decode: the processor's own sampling when ``do_sample_frames`` (its
        ``num_frames``, else ``fps`` within [min_frames, max_frames], rounded to the temporal
        patch), else :data:`DEFAULT_NUM_FRAMES` spread evenly; ``num_frames`` overrides the count
        (with sampling, as passing ``num_frames`` to the processor does). Frames come as decoded;
        the backend resizes them."""
        patch = self.temporal_patch_size
        if not self.do_sample_frames:
            return FrameSpec(num_frames=num_frames or DEFAULT_NUM_FRAMES, rule="uniform", size=None)
        count, fps = (num_frames, None) if num_frames is not None else (self.num_frames, self.fps)
        if count is not None and fps is not None:
            raise ValueError(
                "the video processor config sets both num_frames and fps (transformers refuses it)"
            )
        if count is None and fps is None:  # transformers would take every frame of the video
            count = DEFAULT_NUM_FRAMES
        if count is not None and round(count / patch) * patch < 1:
            raise ValueError(
                f"num_frames={count} rounds to no frame (Qwen2-VL samples multiples of {patch})"
            )
        return FrameSpec(
            num_frames=count,
            fps=fps,
            rule="qwen2_vl",
            temporal_patch_size=patch,
            min_frames=self.min_frames,
            max_frames=self.max_frames,
            size=None,
        )

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The size frames of ``height`` x ``width`` are resized to."""
        if not self.do_resize:
            return height, width
        factor = self.patch_size * self.merge_size
        return smart_resize(height, width, factor, self.min_pixels, self.max_pixels)

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``video_grid_thw`` of a video of ``frames`` frames of ``height`` x ``width``."""
        h, w = self.target_size(height, width)
        t = -(-frames // self.temporal_patch_size)
        return t, h // self.patch_size, w // self.patch_size

    def patches(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One video's ``(T, H, W, 3)`` uint8 frames -> its ``pixel_values_videos`` rows
        ``(grid_t * grid_h * grid_w, 3 * temporal_patch * patch * patch)`` (float32) and
        ``video_grid_thw``."""
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
        height, width = video.shape[-2:]
        h, w = self.target_size(height, width)
        if self.do_resize:
            if self.resample is None:
                raise ValueError(f"{self.processor_class}: do_resize without resample")
            video = resize(video, (h, w), self.resample)
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        if h % (p * m) or w % (p * m):
            raise ValueError(f"frames of {h}x{w} do not split into {p * m}-pixel merged patches")
        video = self.rescale_normalize(video)
        if video.shape[0] % tp:  # the last frame repeated up to a whole temporal patch
            video = torch.cat([video, video[-1:].repeat(tp - video.shape[0] % tp, 1, 1, 1)])
        grid = (video.shape[0] // tp, h // p, w // p)
        gt, gh, gw = grid
        channels = video.shape[1]
        patches = video.view(gt, tp, channels, gh // m, m, p, gw // m, m, p)
        patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return patches.reshape(gt * gh * gw, channels * tp * p * p), grid
