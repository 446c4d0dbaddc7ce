"""LLaVA-NeXT-Video (``LlavaNextVideoForConditionalGeneration``) as a backend: per frame, the
vision tower's patch features, pooled and projected (docs/backends.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .hf import TransformersVideoBackend


class LlavaNextVideoBackend(TransformersVideoBackend):
    kind = "llava_next_video"
    model_class = "LlavaNextVideoForConditionalGeneration"
    processor_class = "LlavaNextVideoVideoProcessor"

    def video_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.model.model.get_video_features(pixels)))

    def as_model_features(self, videos: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One (frames, tokens, D) tensor per video, as ``get_video_features``."""
        return tuple(videos)
