"""Probe, sample, seek-decode and letterbox one video: the part that runs in the decode worker.

No torch here, so the isolated worker process starts quickly.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Literal

import av
import numpy as np

from .decode import read_frames
from .geometry import REFERENCE_SIZE, Geometry, compute_geometry, grid_cells, padded_frame_tokens
from .isolation import IsolatedRunner
from .letterbox import letterbox
from .probe import Deadline, DecodeLimits, VideoSource, index_frames, open_video
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
    random horizontal flip (p = 0.5, all frames together, mask not flipped), one coin per video
    (:func:`flip_coin`): drawn from ``flip_seed`` and the video's content hash, or unseeded when
    None, as the reference. ``size`` is the square input side,
    a multiple of 28 (448 for the released model); it must equal the model's ``image_size``.
    """

    num_frames: int = 8
    size: int = REFERENCE_SIZE
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
        grid_cells(self.size)  # raises unless a positive multiple of 28


def flip_coin(options: PreprocessOptions, content_hash: str | None = None) -> bool:
    """Whether to mirror this video (spec §4.3): never with ``flip="off"``; with
    ``flip="reference"`` heads with p = 0.5, a fresh random draw when unseeded, else a function
    of ``flip_seed`` and the video's ``content_hash`` (sha256 of its bytes), so every run and
    the feature cache agree while each video gets its own coin."""
    if options.flip != "reference":
        return False
    if options.flip_seed is None:
        return random.SystemRandom().random() < 0.5  # no state shared by forked decoders
    if not content_hash:
        raise ValueError("a seeded reference flip needs the video's content hash")
    digest = hashlib.sha256(f"flip|{options.flip_seed}|{content_hash}".encode()).digest()
    return digest[0] < 128


@dataclass
class Provenance:
    """Where a model input came from; every result row carries it."""

    num_frames: int
    fps: float
    duration: float
    sampled_indices: list[int]
    sampled_pts: list[float]
    source_size: list[int]  # real [W, H] of the decoded frames (after rotation, when applied)
    valid_box: list[int]  # [x0, y0, x1, y1] at input scale
    token_grid: list[int]  # [h, w] after STAB's LSD
    tokens_per_frame: int  # 1 + h·(w+1), the full model's layout (see geometry.frame_tokens)
    padded_frames: int
    flipped: bool  # RGB mirrored by the reference flip (the mask never is)
    rotation: int  # display rotation tag in degrees
    rotated: bool  # whether frames were turned by it (MP4/MOV, as the reference decoder)
    codec: str
    container: str
    decoder: str
    input_size: int = REFERENCE_SIZE  # side S of the square model input

    @property
    def visual_tokens(self) -> int:
        """Tokens the whole clip gives the full model's LLM, padded frames included."""
        real = len(self.sampled_indices) * self.tokens_per_frame
        return real + self.padded_frames * padded_frame_tokens(self.input_size)

    def to_dict(self) -> dict:
        return {**asdict(self), "visual_tokens": self.visual_tokens}


@dataclass
class Extracted:
    """Sampled frames after resize and pad (uint8), before normalisation."""

    frames: np.ndarray  # (T, S, S, 3) uint8
    geometry: Geometry
    provenance: Provenance


def extract(
    source: VideoSource, options: PreprocessOptions, deadline: Deadline | None = None
) -> Extracted:
    """Probe, sample, seek-decode and letterbox; runs in the isolated worker for paths.

    ``deadline`` (default: ``options.timeout`` from now) is checked between packets and frames.
    """
    deadline = deadline or Deadline(options.timeout)
    start = None if isinstance(source, (str, os.PathLike)) else source.tell()

    def restart():
        if start is not None:
            source.seek(start)
        return open_video(source, options.limits)

    with open_video(source, options.limits) as (container, stream):
        info = index_frames(container, stream, options.limits, deadline)
        indices = sample_positions(info.num_frames, info.fps, options.num_frames)
        decoded = read_frames(container, stream, info, indices, deadline, restart, options.limits)
    width, height = decoded.source_size  # the reference uses the first frame's size
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
        rotated=decoded.rotated,
        codec=info.codec,
        container=info.container,
        decoder=decoder_version(),
        input_size=options.size,
    )
    return Extracted(letterbox(decoded.frames, geom), geom, provenance)


_default_runner: IsolatedRunner | None = None


def default_runner() -> IsolatedRunner:
    """This process's shared decode worker (started on first use)."""
    global _default_runner
    if _default_runner is None:
        _default_runner = IsolatedRunner()
    return _default_runner


def extract_video(
    source: VideoSource, options: PreprocessOptions, runner: IsolatedRunner | None = None
) -> Extracted:
    """:func:`extract`, in the killable worker for paths when ``options.isolate`` is set.

    File objects are decoded in-process, where the timeout is checked between packets and frames
    (a read that blocks forever inside FFmpeg cannot be interrupted there).
    """
    if options.isolate and isinstance(source, (str, os.PathLike)):
        runner = runner or default_runner()
        return runner.call(extract, os.fspath(source), options, timeout=options.timeout)
    return extract(source, options)
