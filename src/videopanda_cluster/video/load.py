"""From a video file to the model's (8, 4, 448, 448) input tensor plus provenance."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from typing import Literal

import av
import numpy as np
import torch

from .decode import read_frames
from .geometry import Geometry, compute_geometry
from .isolation import IsolatedRunner
from .preprocess import letterbox, to_model_input
from .probe import DecodeLimits, Deadline, VideoSource, index_frames, open_container, video_stream
from .sampling import sample_positions

FlipMode = Literal["off", "reference"]


def decoder_version() -> str:
    """Name and version of the decoder, recorded in every provenance."""
    major, minor, micro = av.library_versions["libavcodec"]
    return f"pyav-{av.__version__}/libavcodec-{major}.{minor}.{micro}"


@dataclass(frozen=True)
class PreprocessOptions:
    """How a video becomes model input.

    ``flip="off"`` (default) is deterministic. ``flip="reference"`` reproduces the reference eval's
    random horizontal flip (p = 0.5, all frames together, mask not flipped), with the coin drawn
    from ``flip_seed`` (unseeded when None, as the reference).
    """

    num_frames: int = 8
    size: int = 448
    flip: FlipMode = "off"
    flip_seed: int | None = None
    timeout: float | None = 60.0  # seconds per video; None disables
    isolate: bool = True  # decode paths in a killable child process
    limits: DecodeLimits = field(default_factory=DecodeLimits)

    def __post_init__(self) -> None:
        if self.flip not in ("off", "reference"):
            raise ValueError(f"flip must be 'off' or 'reference', got {self.flip!r}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")


@dataclass
class Provenance:
    """Where a model input came from; every result row carries it."""

    num_frames: int
    fps: float
    duration: float
    sampled_indices: list[int]
    sampled_pts: list[float]
    source_size: list[int]  # [W, H] of the decoded frames (rotation tag not applied)
    valid_box: list[int]  # [x0, y0, x1, y1] at input scale
    token_grid: list[int]  # [h, w] after STAB's LSD
    tokens_per_frame: int
    padded_frames: int
    flipped: bool
    rotation: int
    codec: str
    container: str
    decoder: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Extracted:
    """Sampled frames after resize and pad (uint8), before normalisation."""

    frames: np.ndarray  # (T, S, S, 3) uint8
    geometry: Geometry
    provenance: Provenance


def extract(source: VideoSource, options: PreprocessOptions) -> Extracted:
    """Probe, sample, seek-decode and letterbox; runs in the isolated worker for paths."""
    deadline = Deadline(options.timeout)
    with open_container(source) as container:
        stream = video_stream(container, options.limits)
        info = index_frames(container, stream, options.limits, deadline)
        indices = sample_positions(info.num_frames, info.fps, options.num_frames)
        decoded = read_frames(container, stream, info, indices, deadline)
    height, width = decoded.frames[0].shape[:2]  # the reference uses the first frame's size
    geom = compute_geometry(width, height, options.size)
    provenance = Provenance(
        num_frames=info.num_frames,
        fps=info.fps,
        duration=info.duration,
        sampled_indices=indices,
        sampled_pts=[info.seconds(i) for i in indices],
        source_size=[width, height],
        valid_box=list(geom.valid_box),
        token_grid=list(geom.token_grid),
        tokens_per_frame=geom.tokens_per_frame,
        padded_frames=options.num_frames - len(indices),
        flipped=False,
        rotation=decoded.rotation,
        codec=info.codec,
        container=info.container,
        decoder=decoder_version(),
    )
    return Extracted(letterbox(decoded.frames, geom), geom, provenance)


@dataclass
class VideoInput:
    """Model input (num_frames, 4, S, S) float32 and its provenance."""

    pixels: torch.Tensor
    provenance: Provenance


_default_runner: IsolatedRunner | None = None


def _runner() -> IsolatedRunner:
    global _default_runner
    if _default_runner is None:
        _default_runner = IsolatedRunner()
    return _default_runner


def load_video(
    source: VideoSource,
    options: PreprocessOptions | None = None,
    runner: IsolatedRunner | None = None,
) -> VideoInput:
    """Turn a path or seekable binary file object into model input, or raise VideoDecodeError.

    Paths are decoded in a killable child process (``options.isolate``) that is stopped after
    ``options.timeout`` seconds. File objects are decoded in-process, where the timeout is
    checked between packets and frames.
    """
    options = options or PreprocessOptions()
    if options.isolate and isinstance(source, (str, os.PathLike)):
        extracted = (runner or _runner()).call(
            extract, os.fspath(source), options, timeout=options.timeout
        )
    else:
        extracted = extract(source, options)
    flip = options.flip == "reference" and random.Random(options.flip_seed).random() < 0.5
    extracted.provenance.flipped = flip
    pixels = to_model_input(extracted.frames, extracted.geometry, options.num_frames, flip)
    return VideoInput(pixels, extracted.provenance)
