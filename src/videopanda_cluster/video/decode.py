"""Read chosen frames by seeking to the nearest keyframe instead of decoding the whole file."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

import av
import numpy as np

from .errors import Reason, VideoDecodeError
from .probe import Deadline, DecodeLimits, VideoInfo

Restart = Callable[[], AbstractContextManager[tuple[av.container.InputContainer, av.VideoStream]]]


@dataclass
class DecodedFrames:
    """RGB frames (H, W, 3) uint8 in the requested order and their display rotation tag.

    Frames larger than ``DecodeLimits.exact_pixels`` come at a reduced size (FFmpeg's scaler);
    ``source_size`` is the real [W, H] of the first frame, after rotation when applied.
    """

    frames: list[np.ndarray]
    rotation: int  # degrees counter-clockwise, from the display matrix (0 if none)
    rotated: bool  # whether the frames were turned upright by it
    source_size: tuple[int, int]


@dataclass
class _Picture:
    """One wanted frame, converted as soon as it is decoded (no decoder buffer is kept)."""

    pixels: np.ndarray  # RGB, as stored (not turned)
    rotation: int
    size: tuple[int, int]  # real (width, height) as stored


def _rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation from the frame's display matrix, in degrees."""
    try:
        return round(frame.rotation) % 360
    except (AttributeError, TypeError, ValueError):
        return 0


def _turn(pixels: np.ndarray, rotation: int, upright: bool) -> np.ndarray:
    """Turned by the display rotation when ``upright`` (as the reference decoder)."""
    quarter_turns = round(rotation / 90) % 4 if upright else 0
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns)) if quarter_turns else pixels


def _rgb(frame: av.VideoFrame, upright: bool) -> np.ndarray:
    """Full-size RGB24 pixels, turned upright when ``upright``."""
    return _turn(frame.to_ndarray(format="rgb24"), _rotation(frame), upright)


def _picture(frame: av.VideoFrame, limits: DecodeLimits) -> _Picture:
    """RGB24 at full size up to ``limits.exact_pixels``, else scaled down by FFmpeg directly."""
    size = (frame.width, frame.height)
    width, height = limits.frame_size(*size)
    if (width, height) == size:
        pixels = frame.to_ndarray(format="rgb24")
    else:
        pixels = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    return _Picture(pixels, _rotation(frame), size)


def read_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    info: VideoInfo,
    indices: list[int],
    deadline: Deadline,
    restart: Restart,
    limits: DecodeLimits,
) -> DecodedFrames:
    """Decode the frames at ``indices`` (presentation order), seeking between distant ones.

    Before each target the decoder seeks to the last keyframe at or before it, unless it is
    already positioned before the target with no keyframe in between (then decoding on is
    cheaper). Every seek is verified: the first frame decoded after it must not lie past the
    target (else earlier keyframes are tried), and the target's timestamp must be met exactly.
    When seeking cannot be trusted, ``restart()`` opens the source afresh and one sequential pass
    from its true beginning numbers the frames instead.
    """
    if any(not 0 <= i < info.num_frames for i in indices):
        raise ValueError(f"indices {indices} out of range for {info.num_frames} frames")
    wanted = sorted(set(indices))
    try:
        try:
            found = _seek_and_decode(container, stream, info, wanted, deadline, limits, restart)
        except _SeekMissed:
            with restart() as (again, again_stream):
                found = _sequential(again, again_stream, wanted, deadline, limits)
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(Reason.DECODE_FAILED, f"decoder error: {exc}") from None
    first = found[wanted[0]]
    frames = [_turn(found[i].pixels, found[i].rotation, info.upright) for i in indices]
    turned = info.upright and round(first.rotation / 90) % 2 == 1
    width, height = first.size
    return DecodedFrames(
        frames,
        first.rotation,
        info.upright and first.rotation != 0,
        (height, width) if turned else (width, height),
    )


class _SeekMissed(Exception):
    """Seeking did not land at or before the wanted frame."""


def _seek(container, stream, keys, k, target, deadline):
    """Seek to keyframe ``k`` (then k-1, k-2, k-4, ... 0 while it lands past ``target``).

    Returns the decode iterator and its first frame, at or before the target. Some demuxers
    (MPEG-TS, MPEG-PS) land on the keyframe after the requested timestamp.
    """
    tried: set[int] = set()
    step = 0
    while True:
        k = max(k, 0)
        if k in tried:
            raise _SeekMissed
        tried.add(k)
        container.seek(keys[k], stream=stream, backward=True, any_frame=False)
        frames = container.decode(stream)
        first = next(frames, None)
        deadline.check()
        if first is not None and first.pts is not None and first.pts <= target:
            return frames, first
        k -= max(1, step)
        step = max(1, 2 * step)


def _seek_and_decode(
    container, stream, info, wanted, deadline, limits, restart
) -> dict[int, _Picture]:
    """Frames matched by timestamp; when even the first keyframe cannot be reached by seeking,
    the source is opened afresh once and decoding goes on from its true beginning."""
    found: dict[int, _Picture] = {}
    keys = info.keyframe_pts
    frames = None  # the live decode iterator
    last_pts: int | None = None
    restarted = False
    with ExitStack() as fresh:
        for index in wanted:
            target = info.frame_pts[index]
            k = max(bisect.bisect_right(keys, target) - 1, 0)
            if frames is None or last_pts is None or last_pts >= target or keys[k] > last_pts:
                try:
                    frames, frame = _seek(container, stream, keys, k, target, deadline)
                except _SeekMissed:
                    if restarted:  # the fresh open misbehaves too: give up seeking
                        raise
                    container, stream = fresh.enter_context(restart())
                    restarted = True
                    frames = container.decode(stream)
                    frame = next(frames, None)
            else:
                frame = next(frames, None)
            while frame is not None and frame.pts is not None and frame.pts < target:
                deadline.check()
                frame = next(frames, None)
            if frame is None or frame.pts != target:
                raise _SeekMissed  # the stream ended, a timestamp is missing, or target skipped
            last_pts = frame.pts
            found[index] = _picture(frame, limits)
    return found


def _sequential(container, stream, wanted, deadline, limits) -> dict[int, _Picture]:
    """Decode a freshly opened stream from its first frame, numbering frames in output order."""
    todo = set(wanted)
    found: dict[int, _Picture] = {}
    for position, frame in enumerate(container.decode(stream)):
        deadline.check()
        if position in todo:
            found[position] = _picture(frame, limits)
            todo.discard(position)
            if not todo:
                return found
    raise VideoDecodeError(
        Reason.TRUNCATED if found else Reason.NO_FRAMES,
        f"decoded fewer frames than indexed; missing positions {sorted(todo)[:8]}",
    )


def decode_all(
    container: av.container.InputContainer, stream: av.VideoStream, upright: bool
) -> list[np.ndarray]:
    """Every frame of the stream in output order (for verification and baselines only)."""
    return [_rgb(frame, upright) for frame in container.decode(stream)]
