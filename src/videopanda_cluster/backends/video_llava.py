"""Video-LLaVA (``VideoLlavaForConditionalGeneration``) as a backend: per frame, the video
tower's hidden states of the chosen layer, projected (docs/backends.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .hf import TransformersVideoBackend


class VideoLlavaBackend(TransformersVideoBackend):
    kind = "video_llava"
    model_class = "VideoLlavaForConditionalGeneration"
    processor_class = "VideoLlavaVideoProcessor"

    def video_features(self, pixels: torch.Tensor) -> torch.Tensor:
        features, frames = self.model.model.get_video_features(pixel_values_videos=pixels)
        return features.reshape(pixels.shape[0], frames, *features.shape[1:])

    def as_model_features(self, videos: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(videos × frames, tokens, D) and the frame count, as ``get_video_features``."""
        return torch.cat(list(videos)), videos[0].shape[0]
