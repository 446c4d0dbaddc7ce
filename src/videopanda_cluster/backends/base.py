"""The interface between the pipeline and a video-LLM: what the stage workers and the library
call, whatever the model (one module per model family beside this one).

A backend says how its frames are sampled and sized (our decoder does the decoding), turns a
batch of decoded videos into visual features (what the feature cache keeps, keyed by
:meth:`VideoBackend.feature_identity`), and answers questions about features, batched, through
its one answer path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..model.config import AttentionImpl
    from ..model.generation import GenerationOptions, PromptTooLong
    from ..video.geometry import Geometry
    from ..video.sampling import FrameSpec


class UnsupportedModel(ValueError):
    """A checkpoint folder that no backend recognises; ``str(exc)`` is one line."""


@dataclass(frozen=True)
class DecodedVideo:
    """One video as the decoder hands it over: sampled frames, their placement, and whether the
    reference flip mirrors it."""

    frames: np.ndarray  # (T, S, S, 3) uint8 letterboxed; (T, H, W, 3) as decoded if spec.size None
    geometry: Geometry | None  # the letterbox's placement; None for frames as decoded
    flipped: bool = False

    def as_decoded(self) -> np.ndarray:
        """Frames as decoded (no letterbox), mirrored left-right when the flip says so: what a
        backend that resizes frames itself starts from. ValueError for letterboxed frames."""
        if self.geometry is not None:
            raise ValueError("this backend takes frames as decoded (FrameSpec.size None)")
        if not self.flipped:
            return self.frames
        import numpy as np

        return np.ascontiguousarray(self.frames[:, :, ::-1])


class VideoBackend(ABC):
    """A video-LLM as the pipeline sees it."""

    kind: ClassVar[str]  # the registry's name, recorded in every row

    @classmethod
    @abstractmethod
    def load(
        cls,
        folder: str | Path,
        device: str | None = None,
        with_llm: bool = True,
        attention: AttentionImpl | None = None,
    ) -> VideoBackend:
        """The model of ``folder`` on ``device``; without its LLM (``with_llm`` False) for an
        encoder; ``attention`` the LLM's attention implementation where the model has a choice."""

    @classmethod
    @abstractmethod
    def frame_spec(cls, folder: str | Path, num_frames: int | None = None) -> FrameSpec:
        """Which frames the decoder samples and at what size, read from the folder's JSON files
        alone (the driver plans with it before any model loads); ``num_frames`` overrides the
        folder's count where the model allows it (else ValueError, one line)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """What the answers depend on besides the weights' bytes and the frames (backend code
        version, processor settings), recorded with the backend in every result row."""

    @property
    @abstractmethod
    def num_frames(self) -> int:
        """Frames the decoder samples per video."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side of the square frames the decoder letterboxes to."""

    @abstractmethod
    def feature_identity(self) -> str:
        """What, besides the video and its preprocessing, the features depend on (the weights of
        the visual path); part of every feature-cache key, so backends never share entries."""

    @abstractmethod
    def encode(self, videos: Sequence[DecodedVideo]) -> list[list[torch.Tensor]]:
        """Per video, its visual features (on the CPU, one tensor per frame)."""

    @abstractmethod
    def answer(
        self,
        features: Sequence[Sequence[torch.Tensor]],
        questions: Sequence[Sequence[str]],
        options: GenerationOptions,
    ) -> list[list[str | PromptTooLong]]:
        """Per video, one answer per question; a question too long for the context gets its
        :class:`PromptTooLong` instead."""

    def visual_tokens(self, features: Sequence[torch.Tensor]) -> int:
        """Tokens one video's features hand to the LLM, recorded in its rows when the decode
        could not tell (frames as decoded); by default the rows of its per-frame features."""
        return sum(int(f.shape[0]) for f in features)

    @abstractmethod
    def prompt_text(self, question: str, features: Sequence[torch.Tensor]) -> str:
        """The prompt a question is asked with, as recorded in its result row."""

    def describe(self) -> dict[str, Any]:
        """Provenance of the backend for result rows and run records."""
        return {"backend": self.kind}
