"""Video-Panda (this project's model, spec §1-§5) as a backend: STAB tokens per frame as the
features, projector + Llama through :meth:`VideoPanda.answer_frames` as the answer path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..model.config import VideoPandaConfig
from ..model.modeling import VideoPanda
from ..model.prompt import build_prompt
from ..video.sampling import FrameSpec
from .base import DecodedVideo, VideoBackend

if TYPE_CHECKING:
    from ..model.config import AttentionImpl
    from ..model.generation import GenerationOptions, PromptTooLong


class VideoPandaBackend(VideoBackend):
    kind = "videopanda"

    def __init__(self, model: VideoPanda) -> None:
        self.model = model

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: str | None = None,
        with_llm: bool = True,
        attention: AttentionImpl | None = None,
    ) -> VideoPandaBackend:
        model = VideoPanda.from_pretrained(folder, device=device, with_llm=with_llm)
        if attention is not None:
            model.set_attention(attention)
        return cls(model)

    @classmethod
    def frame_spec(cls, folder: str | Path, num_frames: int | None = None) -> FrameSpec:
        """The reference's sampling (spec §4.1) and letterbox at the model's ``image_size``; the
        frame count is the model's (STAB's temporal layout is fixed by its config)."""
        config = VideoPandaConfig.from_pretrained(folder)
        if num_frames is not None and num_frames != config.num_frames:
            raise ValueError(
                f"Video-Panda takes {config.num_frames} frames per video, not {num_frames}"
            )
        return FrameSpec(num_frames=config.num_frames, rule="reference", size=config.image_size)

    def fingerprint(self) -> str:
        """The preprocessing and answer path are this package's code: its version."""
        from .. import __version__

        return f"videopanda/{__version__}"

    @property
    def num_frames(self) -> int:
        return self.model.config.num_frames

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def feature_identity(self) -> str:
        from ..cluster.fingerprint import module_hash

        return module_hash(self.model.video_tower)  # as before backends: old caches still hit

    @torch.no_grad()
    def encode(self, videos: Sequence[DecodedVideo]) -> list[list[torch.Tensor]]:
        """STAB tokens per frame; all clips of all videos in one STAB call."""
        from ..video.normalize import to_model_input

        n = self.num_frames
        inputs = []
        for v in videos:
            if v.geometry is None:
                raise ValueError("Video-Panda needs letterboxed frames (FrameSpec.size)")
            inputs.append(to_model_input(v.frames, v.geometry, n, v.flipped))
        pixels = torch.stack(inputs)
        chunk = self.model.config.chunk_size
        clips = pixels.reshape(-1, chunk, *pixels.shape[2:]).to(self.model.device)
        frames, _ = self.model.video_tower(clips)
        return [[f.to("cpu") for f in frames[j * n : (j + 1) * n]] for j in range(len(videos))]

    @torch.no_grad()
    def answer(
        self,
        features: Sequence[Sequence[torch.Tensor]],
        questions: Sequence[Sequence[str]],
        options: GenerationOptions,
    ) -> list[list[str | PromptTooLong]]:
        model = self.model
        frames = [
            [model.video_projector(f.to(model.device, model.dtype)) for f in video]
            for video in features
        ]
        return model.answer_frames(frames, questions, options)

    def prompt_text(self, question: str, features: Sequence[torch.Tensor]) -> str:
        return build_prompt(question, len(features))
