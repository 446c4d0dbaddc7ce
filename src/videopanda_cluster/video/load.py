"""From a video file to the model's (8, 4, 448, 448) input tensor plus provenance."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .extract import PreprocessOptions, Provenance, extract_video, flip_coin
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
    ``options.timeout`` seconds; see :func:`extract_video`. A seeded reference flip hashes the
    source's bytes (the pipeline's content hash) for the video's coin.
    """
    options = options or PreprocessOptions()
    if options.size is None or options.num_frames is None:
        raise ValueError("Video-Panda's input needs letterboxed frames (size) and a frame count")
    extracted = extract_video(source, options, runner)  # bad input fails here, as unflipped
    seeded = options.flip == "reference" and options.flip_seed is not None
    flipped = flip_coin(options, content_hash(source) if seeded else None)
    extracted.provenance.flipped = flipped
    assert extracted.geometry is not None  # letterboxed: options.size is set
    pixels = to_model_input(extracted.frames, extracted.geometry, options.num_frames, flipped)
    return VideoInput(pixels, extracted.provenance)


def content_hash(source: VideoSource) -> str:
    """sha256 of a path's or a stream's bytes (the stream is left where it was)."""
    from ..cluster.fingerprint import stream_sha256

    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return stream_sha256(fh)
    start = source.tell()
    try:
        return stream_sha256(source)
    finally:
        source.seek(start)
