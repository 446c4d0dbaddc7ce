"""From a video file to the model's (8, 4, 448, 448) input tensor plus provenance."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .extract import PreprocessOptions, Provenance, extract_video
from .isolation import IsolatedRunner
from .normalize import to_model_input
from .probe import VideoSource


@dataclass
class VideoInput:
    """Model input (num_frames, 4, S, S) float32 and its provenance."""

    pixels: torch.Tensor
    provenance: Provenance


def load_video(
    source: VideoSource,
    options: PreprocessOptions | None = None,
    runner: IsolatedRunner | None = None,
) -> VideoInput:
    """Turn a path or seekable binary file object into model input, or raise VideoDecodeError.

    Paths are decoded in a killable child process (``options.isolate``) that is stopped after
    ``options.timeout`` seconds; see :func:`extract_video`.
    """
    options = options or PreprocessOptions()
    extracted = extract_video(source, options, runner)
    flip = options.flip == "reference" and random.Random(options.flip_seed).random() < 0.5
    extracted.provenance.flipped = flip
    pixels = to_model_input(extracted.frames, extracted.geometry, options.num_frames, flip)
    return VideoInput(pixels, extracted.provenance)
