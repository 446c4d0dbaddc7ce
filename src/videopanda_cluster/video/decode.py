"""Read chosen frames by seeking to the nearest keyframe instead of decoding the whole file."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import av
import numpy as np

from .errors import Reason, VideoDecodeError
from .probe import Deadline, VideoInfo


@dataclass
class DecodedFrames:
    """RGB frames (H, W, 3) uint8 in the requested order and their display rotation tag."""

    frames: list[np.ndarray]
    rotation: int  # degrees counter-clockwise, from the display matrix (0 if none)
    rotated: bool  # whether the frames were turned upright by it


def _rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation from the frame's display matrix, in degrees."""
    try:
        return round(frame.rotation) % 360
    except (AttributeError, TypeError, ValueError):
        return 0


def _rgb(frame: av.VideoFrame, upright: bool) -> np.ndarray:
    """RGB24 pixels, turned by the display rotation when ``upright`` (as the reference decoder)."""
    pixels = frame.to_ndarray(format="rgb24")
    quarter_turns = round(_rotation(frame) / 90) % 4 if upright else 0
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns)) if quarter_turns else pixels


def read_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    info: VideoInfo,
    indices: list[int],
    deadline: Deadline,
) -> DecodedFrames:
    """Decode the frames at ``indices`` (presentation order), seeking between distant ones.

    Before each target the decoder seeks to the last keyframe at or before it, unless it is
    already positioned before the target with no keyframe in between (then decoding on is
    cheaper). Frames are matched by timestamp. If seeking misbehaves (the container lands past
    the target), the whole stream is decoded sequentially instead.
    """
    if any(not 0 <= i < info.num_frames for i in indices):
        raise ValueError(f"indices {indices} out of range for {info.num_frames} frames")
    wanted = sorted(set(indices))
    try:
        found = _seek_and_decode(container, stream, info, wanted, deadline)
    except _SeekMissed:
        found = _sequential(container, stream, info, wanted, deadline)
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(Reason.DECODE_FAILED, f"decoder error: {exc}") from None
    rotation = _rotation(found[wanted[0]])
    frames = [_rgb(found[i], info.upright) for i in indices]
    return DecodedFrames(frames, rotation, info.upright and rotation != 0)


class _SeekMissed(Exception):
    """Seeking did not land at or before the wanted frame."""


def _seek_and_decode(container, stream, info, wanted, deadline) -> dict[int, av.VideoFrame]:
    found: dict[int, av.VideoFrame] = {}
    frames = None  # the live decode iterator
    last_pts: int | None = None
    for index in wanted:
        target = info.frame_pts[index]
        k = bisect.bisect_right(info.keyframe_pts, target) - 1
        key = info.keyframe_pts[max(k, 0)]
        if frames is None or last_pts is None or last_pts >= target or key > last_pts:
            container.seek(key, stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
            last_pts = None
        for frame in frames:
            deadline.check()
            if frame.pts is None:
                raise _SeekMissed
            if last_pts is None and frame.pts > target:
                raise _SeekMissed  # landed past the target
            last_pts = frame.pts
            if frame.pts >= target:
                break
        else:
            raise _SeekMissed  # stream ended before the target
        if last_pts != target:
            raise _SeekMissed
        found[index] = frame
    return found


def _sequential(container, stream, info, wanted, deadline) -> dict[int, av.VideoFrame]:
    """Decode from the first frame, numbering frames in output order."""
    try:
        container.seek(info.keyframe_pts[0], stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(Reason.DECODE_FAILED, f"cannot rewind the stream: {exc}") from None
    todo = set(wanted)
    found: dict[int, av.VideoFrame] = {}
    for position, frame in enumerate(container.decode(stream)):
        deadline.check()
        if position in todo:
            found[position] = frame
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
