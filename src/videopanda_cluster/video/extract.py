"""Probe, sample, seek-decode and letterbox one video: the part that runs in the decode worker.

Which frames and at what size come from the backend's :class:`~.sampling.FrameSpec`, which
:class:`PreprocessOptions` extends. No torch here, so the isolated worker process starts quickly.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import av
import numpy as np

from .decode import read_frames
from .errors import Reason, VideoDecodeError
from .geometry import REFERENCE_SIZE, Geometry, compute_geometry, grid_cells, padded_frame_tokens
from .isolation import IsolatedRunner
from .letterbox import letterbox
from .probe import Deadline, DecodeLimits, VideoInfo, VideoSource, index_frames, open_video
from .sampling import FrameSpec, TooFewFrames

FlipMode = Literal["off", "reference"]


def decoder_version() -> str:
    """Name and version of the decoder, recorded in every provenance."""
    major, minor, micro = av.library_versions["libavcodec"]
    return f"pyav-{av.__version__}/libavcodec-{major}.{minor}.{micro}"


@dataclass(frozen=True)
class PreprocessOptions(FrameSpec):
    """How a video becomes model input: the backend's :class:`FrameSpec` (which frames, at what
    size; :meth:`of` builds the options from one) plus how the decoder runs.

    ``flip="off"`` (default) is deterministic. ``flip="reference"`` reproduces the reference eval's
    random horizontal flip (p = 0.5, all frames together, mask not flipped), one coin per video
    (:func:`flip_coin`): drawn from ``flip_seed`` and the video's content hash, or unseeded when
    None, as the reference. ``size`` is the square letterbox side, a multiple of 28 (448 for the
    released model; it must equal the model's ``image_size``), or None for frames as decoded.
    """

    flip: FlipMode = "off"
    flip_seed: int | None = None
    timeout: float | None = 60.0  # seconds per video; None disables
    isolate: bool = True  # decode paths in a killable child process
    limits: DecodeLimits = field(default_factory=DecodeLimits)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flip not in ("off", "reference"):
            raise ValueError(f"flip must be 'off' or 'reference', got {self.flip!r}")
        if self.size is not None:
            grid_cells(self.size)  # raises unless a positive multiple of 28

    @classmethod
    def of(cls, spec: FrameSpec, **settings: Any) -> PreprocessOptions:
        """The options that decode as ``spec`` asks, with the decoder ``settings`` (flip,
        timeout, ...)."""
        return cls(**{f.name: getattr(spec, f.name) for f in fields(FrameSpec)}, **settings)


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
    """Where a model input came from; every result row carries it.

    Letterboxed frames (``input_size`` S) record where the video lands in the square
    (``valid_box``), STAB's token grid and the tokens the full model's LLM gets. Frames as
    decoded (``input_size`` None: the backend resizes them itself) have no letterbox, so
    ``valid_box``, ``token_grid`` and ``tokens_per_frame`` are None and ``frame_size`` is the size
    handed over; their visual token count is the encoder's, filled in the row after encoding.
    """

    num_frames: int
    fps: float
    duration: float
    sampled_indices: list[int]
    sampled_pts: list[float]
    source_size: list[int]  # real [W, H] of the decoded frames (after rotation, when applied)
    valid_box: list[int] | None  # [x0, y0, x1, y1] at input scale; None: frames as decoded
    token_grid: list[int] | None  # [h, w] after STAB's LSD; None: frames as decoded
    tokens_per_frame: int | None  # 1 + h·(w+1), the full model's layout (geometry.frame_tokens)
    padded_frames: int
    flipped: bool  # RGB mirrored by the reference flip (the mask never is)
    rotation: int  # display rotation tag in degrees
    rotated: bool  # whether frames were turned by it (MP4/MOV, as the reference decoder)
    codec: str
    container: str
    decoder: str
    input_size: int | None = REFERENCE_SIZE  # side S of the square input; None: as decoded
    # [W, H] of frames handed over as decoded (below source_size only when DecodeLimits'
    # exact_pixels scaled them down); None for letterboxed frames
    frame_size: list[int] | None = None

    @property
    def visual_tokens(self) -> int | None:
        """Tokens the whole clip gives the full model's LLM, padded frames included (None for
        frames as decoded: the encoder knows)."""
        if self.tokens_per_frame is None or self.input_size is None:
            return None
        real = len(self.sampled_indices) * self.tokens_per_frame
        return real + self.padded_frames * padded_frame_tokens(self.input_size)

    def to_dict(self) -> dict:
        return {**asdict(self), "visual_tokens": self.visual_tokens}


@dataclass
class Extracted:
    """Sampled frames, letterboxed (uint8, before normalisation) or as decoded."""

    frames: np.ndarray  # (T, S, S, 3) uint8 letterboxed; (T, H, W, 3) as decoded if size None
    geometry: Geometry | None  # None for frames as decoded
    provenance: Provenance


def sampled_indices(info: VideoInfo, spec: FrameSpec) -> list[int]:
    """The frames ``spec`` takes from the video; a video too short for its rule is a fault of
    the video (``too_few_frames``)."""
    try:
        return spec.positions(info.num_frames, info.fps)
    except TooFewFrames as exc:
        count = "fps-based" if spec.num_frames is None else f"{spec.num_frames}"
        raise VideoDecodeError(
            Reason.TOO_FEW_FRAMES,
            f"the video has {info.num_frames} frames, fewer than the model's sampling "
            f"({spec.rule}, {count} frames) takes: {exc}",
        ) from None


def extract(
    source: VideoSource, options: PreprocessOptions, deadline: Deadline | None = None
) -> Extracted:
    """Probe, sample, seek-decode and letterbox (or keep as decoded, ``options.size`` None);
    runs in the isolated worker for paths.

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
        indices = sampled_indices(info, options)
        decoded = read_frames(container, stream, info, indices, deadline, restart, options.limits)
    width, height = decoded.source_size  # the reference uses the first frame's size
    provenance = Provenance(
        num_frames=info.num_frames,
        fps=info.fps,
        duration=info.duration,
        sampled_indices=indices,
        sampled_pts=[info.seconds(i) for i in indices],
        source_size=[width, height],
        valid_box=None,
        token_grid=None,
        tokens_per_frame=None,
        # letterboxed input is padded to num_frames (Video-Panda); frames as decoded never are
        padded_frames=max(0, (options.num_frames or 0) - len(indices)) if options.size else 0,
        flipped=False,
        rotation=decoded.rotation,
        rotated=decoded.rotated,
        codec=info.codec,
        container=info.container,
        decoder=decoder_version(),
        input_size=options.size,
    )
    if options.size is None:
        frames = _as_decoded(decoded.frames)
        provenance.frame_size = [frames.shape[2], frames.shape[1]]
        return Extracted(frames, None, provenance)
    geom = compute_geometry(width, height, options.size)
    provenance.valid_box = list(geom.valid_box)
    provenance.token_grid = list(geom.token_grid)
    provenance.tokens_per_frame = geom.tokens_per_frame
    return Extracted(letterbox(decoded.frames, geom), geom, provenance)


def _as_decoded(frames: list[np.ndarray]) -> np.ndarray:
    """The frames as one (T, H, W, 3) uint8 array; a video whose frames change size between
    the sampled ones cannot be handed over as one clip."""
    sizes = sorted({f.shape[:2] for f in frames})
    if len(sizes) > 1:
        raise VideoDecodeError(
            Reason.BAD_DIMENSIONS,
            f"the sampled frames differ in size ({', '.join(f'{w}x{h}' for h, w in sizes)}); "
            "frames as decoded need one size",
        )
    return np.stack(frames)


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
