"""Qwen2-VL and Qwen2.5-VL (``transformers``' ``Qwen2VLForConditionalGeneration`` and
``Qwen2_5_VLForConditionalGeneration``) as backends: the answer path is :mod:`.hf`'s; what is
Qwen's own is here.

Features are the model's own ``get_video_features`` output, one tensor per temporal patch (two
frames) shaped ``(grid_h / merge, grid_w / merge, hidden)``, so that ``video_grid_thw`` (which
the model's ``get_rope_index`` takes for the mRoPE positions) is read off the cached features;
the prompt has ``<|video_pad|>`` once per feature vector, as the processor expands it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..video.sampling import FrameSpec
from .base import DecodedVideo
from .hf import TransformersVideoBackend
from .qwen2_vl_processing import QWEN2_VL_VIDEO_PROCESSOR, QwenVideoProcessing


class Qwen2VLBackend(TransformersVideoBackend):
    kind: ClassVar[str] = "qwen2_vl"
    model_class: ClassVar[str] = "Qwen2VLForConditionalGeneration"
    processor_class: ClassVar[str] = QWEN2_VL_VIDEO_PROCESSOR
    processing_type: ClassVar[type[QwenVideoProcessing]] = QwenVideoProcessing
    placeholder: ClassVar[str] = "<|video_pad|>"
    processing: QwenVideoProcessing

    def __init__(
        self, folder: str | Path, model: Any, tokenizer: Any, template: str | None
    ) -> None:
        super().__init__(folder, model, tokenizer, template)
        vision = model.config.vision_config
        self.merge = int(vision.spatial_merge_size)
        if (self.processing.merge_size, self.processing.temporal_patch_size) != (
            self.merge,
            vision.temporal_patch_size,
        ):
            raise ValueError(
                "the video processor's merge/temporal patch sizes differ from the model's"
            )

    @classmethod
    def frame_spec(cls, folder: str | Path, num_frames: int | None = None) -> FrameSpec:
        return QwenVideoProcessing.from_folder(folder).frame_spec(num_frames)

    @property
    def image_size(self) -> int:
        """0: the decoder hands frames over as decoded; the backend resizes them itself."""
        return 0

    @torch.no_grad()
    def encode(self, videos: Sequence[DecodedVideo]) -> list[list[torch.Tensor]]:
        """Per video, ``get_video_features`` split per temporal patch, (h', w', hidden) each;
        all videos in one call, whatever their sizes (the grid tells them apart)."""
        if not videos:
            return []
        model = self.model
        pixels, grids = [], []
        for video in videos:
            values, grid = self.processing.patches(video.as_decoded())
            pixels.append(values)
            grids.append(grid)
        grid_thw = torch.tensor(grids, device=model.device)
        pixel_values = torch.cat(pixels).to(model.device, model.dtype)
        embeds = model.model.get_video_features(pixel_values, grid_thw)
        out = []
        for tokens, (t, h, w) in zip(embeds, grids, strict=True):
            shaped = tokens.reshape(t, h // self.merge, w // self.merge, -1).to("cpu")
            out.append(list(shaped.unbind(0)))
        return out

    def grid(self, features: Sequence[torch.Tensor] | torch.Tensor) -> tuple[int, int, int]:
        """``video_grid_thw`` of a video's cached features (a list, or them stacked)."""
        h, w = features[0].shape[:2]
        return len(features), h * self.merge, w * self.merge

    def as_model_features(self, videos: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One (tokens, D) tensor per video, as ``get_video_features``."""
        return tuple(v.flatten(0, -2) for v in videos)

    def model_inputs(self, videos: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"video_grid_thw": torch.tensor([self.grid(v) for v in videos])}


class Qwen2_5_VLBackend(Qwen2VLBackend):
    """Qwen2.5-VL: as Qwen2-VL, with ``second_per_grid_ts`` for its time-aligned mRoPE as the
    processor sets it when called without ``fps``: temporal_patch_size / 2.0 seconds."""

    kind: ClassVar[str] = "qwen2_5_vl"
    model_class: ClassVar[str] = "Qwen2_5_VLForConditionalGeneration"
    PROCESSOR_FPS: ClassVar[float] = 2.0  # Qwen2_5_VLProcessor.__call__'s default fps

    def model_inputs(self, videos: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        seconds = self.processing.temporal_patch_size / self.PROCESSOR_FPS
        return {
            **super().model_inputs(videos),
            "second_per_grid_ts": torch.tensor([seconds] * len(videos)),
        }
