"""Open a video with PyAV, classify failures, and index its frames in presentation order.

The frame count and frame timestamps come from the demuxed packets of the video stream (no
decoding), because container metadata can be missing (Matroska/WebM) or wrong (a truncated MP4
still declares its full length). Frame ``i`` is the frame with the i-th smallest timestamp, the
same numbering a full sequential decode produces.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO

import av
import av.logging

from .errors import Reason, VideoDecodeError

VideoSource = str | os.PathLike | BinaryIO

# The reference decoder (decord with its FFmpeg) applies the display rotation of MP4/MOV files only;
# a Matroska/WebM rotation tag is recorded but not applied, for parity.
ROTATING_FORMATS = frozenset({"mov", "mp4"})

# FFmpeg's own log lines are silenced: every failure surfaces as a VideoDecodeError instead.
av.logging.set_level(None)

# ISO base media (MP4/MOV/3GP) top-level box types that may open a file.
_ISO_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"})

# Leading bytes of containers we recognise; a file that starts like one of these but cannot be
# opened is reported as truncated rather than as "not a video".
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (4, b"skip"),
    (0, b"\x1a\x45\xdf\xa3"),  # EBML: Matroska / WebM
    (0, b"RIFF"),
    (0, b"OggS"),
    (0, b"FLV"),
    (0, b"YUV4MPEG2"),
    (0, b"\x00\x00\x01\xba"),
)


@dataclass(frozen=True)
class DecodeLimits:
    """Guards against hostile headers and stuck decodes."""

    max_side: int = 16384  # largest accepted width or height
    max_pixels: int = 8192 * 8192  # largest accepted width × height
    max_frames: int = 10_000_000  # largest accepted frame count (about 4 days at 30 fps)
    # Frames up to this many pixels (4096×2160, DCI 4K) are converted to RGB at full size, exactly
    # as the reference; larger ones go through FFmpeg's scaler straight to about this many pixels,
    # so each kept frame costs at most ``exact_pixels`` × 3 bytes whatever the source size.
    exact_pixels: int = 4096 * 2160

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) a decoded ``width``×``height`` frame is converted to."""
        if width * height <= self.exact_pixels:
            return width, height
        scale = math.sqrt(self.exact_pixels / (width * height))
        return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


@dataclass(frozen=True)
class VideoInfo:
    """What the container and its packets say about the first video stream."""

    num_frames: int
    fps: float
    duration: float  # seconds: presentation span of the frames plus one frame interval
    width: int
    height: int
    codec: str
    container: str
    upright: bool  # turn frames by their display rotation (MP4/MOV only, as the reference decoder)
    time_base: Fraction
    frame_pts: tuple[int, ...] = field(repr=False)  # presentation order, stream time base
    keyframe_pts: tuple[int, ...] = field(repr=False)  # sorted

    def seconds(self, index: int) -> float:
        """Presentation time of frame ``index`` relative to the first frame, in seconds."""
        return float((self.frame_pts[index] - self.frame_pts[0]) * self.time_base)


class Deadline:
    """A wall-clock budget checked between packets and frames."""

    def __init__(self, seconds: float | None) -> None:
        self._end = None if seconds is None else time.monotonic() + seconds
        self.seconds = seconds

    def check(self) -> None:
        if self._end is not None and time.monotonic() > self._end:
            raise VideoDecodeError(Reason.TIMEOUT, f"decode exceeded {self.seconds:g} s")


def _sniff(source: VideoSource, start: int) -> bytes:
    """The first bytes of the source, from ``start`` for a file object."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return fh.read(16)
    source.seek(start)
    return source.read(16)


def check_file(path: str | os.PathLike) -> None:
    """Raise unless ``path`` is a non-empty regular file (symlinks followed).

    A permission error is a fault of the environment, not of the video: it propagates as
    :class:`PermissionError`.
    """
    try:
        info = os.stat(path)
    except PermissionError:
        raise PermissionError(errno.EACCES, "permission denied", os.fspath(path)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VideoDecodeError(Reason.NOT_A_FILE, f"symlink loop: {path}") from None
        raise VideoDecodeError(Reason.NOT_FOUND, f"no such file: {path}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise VideoDecodeError(Reason.NOT_A_FILE, f"{kind}: {path}")
    if info.st_size == 0:
        raise VideoDecodeError(Reason.EMPTY, f"file is empty: {path}")


def _check_present(source: VideoSource) -> None:
    if isinstance(source, (str, os.PathLike)):
        check_file(source)
        return
    if not (hasattr(source, "read") and hasattr(source, "seek")):
        raise TypeError(f"expected a path or a seekable binary file object, got {type(source)!r}")
    pos = source.tell()
    end = source.seek(0, os.SEEK_END)
    source.seek(pos)
    if end == 0:
        raise VideoDecodeError(Reason.EMPTY, "stream is empty")


def _iso_cut_short(source: VideoSource, start: int) -> bool:
    """True when an ISO base media file (MP4/MOV) has a top-level box running past its end."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, os.PathLike)):
            fh: BinaryIO = stack.enter_context(open(source, "rb"))
        else:
            fh = source
        try:
            return _boxes_cut_short(fh, start)
        except struct.error:  # a short read: not a box structure we can follow
            return False


def _boxes_cut_short(fh: BinaryIO, start: int) -> bool:
    end = fh.seek(0, os.SEEK_END)
    pos = start
    for _ in range(10_000):
        if pos + 8 > end:
            return pos != end
        fh.seek(pos)
        size, kind = struct.unpack(">I4s", fh.read(8))
        if pos == start and kind not in _ISO_BOXES:
            return False  # not ISO base media
        if size == 1:
            size = struct.unpack(">Q", fh.read(8))[0]
        elif size == 0:
            return False  # the last box runs to the end of the file
        if size < 8:
            return False  # not a box structure we can follow
        pos += size
    return False


def _signature(source: VideoSource, start: int) -> bool:
    """Whether the source starts like a container we know."""
    head = _sniff(source, start)
    return any(head[off : off + len(sig)] == sig for off, sig in _SIGNATURES)


@contextlib.contextmanager
def open_container(
    source: VideoSource, log: list | None = None
) -> Iterator[av.container.InputContainer]:
    """Open ``source`` for reading; failures become :class:`VideoDecodeError`.

    A file object is read from its current position. FFmpeg's error messages while opening are
    appended to ``log`` when given.
    """
    _check_present(source)
    start = 0 if isinstance(source, (str, os.PathLike)) else source.tell()
    try:
        with _capture(log):
            container = av.open(source, mode="r", metadata_errors="ignore")
    except PermissionError:
        raise PermissionError(errno.EACCES, "permission denied", str(source)) from None
    except (av.error.InvalidDataError, av.error.EOFError) as exc:
        if _signature(source, start):
            raise VideoDecodeError(
                Reason.TRUNCATED, f"container header found but the file is incomplete: {exc}"
            ) from None
        raise VideoDecodeError(
            Reason.NOT_A_VIDEO, f"no video container recognised: {exc}"
        ) from None
    except av.error.FFmpegError as exc:
        if _iso_cut_short(source, start):
            raise VideoDecodeError(Reason.TRUNCATED, f"the file is cut short: {exc}") from None
        raise VideoDecodeError(Reason.DECODE_FAILED, f"cannot open the container: {exc}") from None
    try:
        yield container
    finally:
        container.close()


@contextlib.contextmanager
def _capture(log: list | None) -> Iterator[None]:
    """Collect FFmpeg's error messages into ``log`` (its logging is otherwise off)."""
    if log is None:
        yield
        return
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(True) as captured:
            yield
    finally:
        av.logging.set_level(None)
        log.extend(message for _, _, message in captured)


@contextlib.contextmanager
def open_video(
    source: VideoSource, limits: DecodeLimits
) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """Open ``source`` and pick its video stream (:func:`open_container`, :func:`video_stream`).

    A file object is read from its current position. An MP4/MOV whose boxes run past the end of
    the file is ``truncated``, whatever FFmpeg made of the part it could read (no stream, an
    unknown codec).
    """
    start = 0 if isinstance(source, (str, os.PathLike)) else source.tell()
    log: list[str] = []
    with open_container(source, log) as container:
        try:
            stream = video_stream(container, limits, _header_size(log))
        except VideoDecodeError as exc:
            cut = exc.reason in (Reason.NO_VIDEO_STREAM, Reason.UNSUPPORTED_CODEC)
            if cut and _iso_cut_short(source, start):
                raise VideoDecodeError(
                    Reason.TRUNCATED, f"the file is cut short ({exc.message})"
                ) from None
            raise
        yield container, stream


_SIZE_IN_LOG = re.compile(r"(\d+)\s*x\s*(\d+)")


def _header_size(log: list[str]) -> tuple[int, int] | None:
    """The frame size FFmpeg refused while reading the headers, from its error messages."""
    for message in log:
        if match := _SIZE_IN_LOG.search(message):
            width, height = int(match[1]), int(match[2])
            if width > 0 and height > 0:
                return width, height
    return None


def video_stream(
    container: av.container.InputContainer,
    limits: DecodeLimits,
    header_size: tuple[int, int] | None = None,
) -> av.VideoStream:
    """The first real video stream (cover art is skipped), checked for a decoder and sane size.

    ``header_size`` is the size the headers declare, reported when FFmpeg refused it (0x0).
    """
    streams = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not streams:
        kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoDecodeError(
            Reason.NO_VIDEO_STREAM, f"no video stream (streams: {', '.join(kinds)})"
        )
    stream = streams[0]
    ctx = stream.codec_context
    codec_name = ctx.name if ctx is not None else "unknown"
    try:
        av.codec.Codec(codec_name, "r")
    except Exception:
        raise VideoDecodeError(
            Reason.UNSUPPORTED_CODEC, f"no decoder for codec {codec_name!r} in this FFmpeg build"
        ) from None
    width, height = ctx.width, ctx.height
    if width <= 0 or height <= 0:
        if header_size is not None:
            width, height = header_size
            raise VideoDecodeError(
                Reason.BAD_DIMENSIONS,
                f"frame size {width}x{height} declared in the headers is beyond what the "
                f"decoder accepts (limits: side {limits.max_side}, pixels {limits.max_pixels})",
            )
        raise VideoDecodeError(
            Reason.BAD_DIMENSIONS, "the headers declare no usable frame size (decoder reports 0x0)"
        )
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise VideoDecodeError(
            Reason.BAD_DIMENSIONS,
            f"frame size {width}x{height} exceeds the limits "
            f"(side {limits.max_side}, pixels {limits.max_pixels})",
        )
    # frame threading keeps one frame per thread in flight: for frames beyond the exact size,
    # slice threading only, to bound the decoder's memory
    stream.thread_type = "AUTO" if width * height <= limits.exact_pixels else "SLICE"
    return stream


def _frame_rate(stream: av.VideoStream, frame_pts: list[int], tb: Fraction) -> float:
    """Average frame rate as the reference reads it (avg_frame_rate), with fallbacks."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and rate > 0:
            return float(rate)
    span = float((frame_pts[-1] - frame_pts[0]) * tb)
    return (len(frame_pts) - 1) / span if span > 0 else 1.0


def index_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    limits: DecodeLimits,
    deadline: Deadline,
) -> VideoInfo:
    """Demux (without decoding) the stream's packets to count and time-stamp its frames."""
    pts: list[int] = []
    keys: list[int] = []
    demux_error: Exception | None = None
    missing_ts = False
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue  # flush packets, and packets an edit list tells the decoder to drop
            deadline.check()
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:
                missing_ts = True
                break
            pts.append(ts)
            if packet.is_keyframe:
                keys.append(ts)
            if len(pts) > limits.max_frames:
                raise VideoDecodeError(
                    Reason.BAD_DIMENSIONS, f"more than {limits.max_frames} frames"
                )
    except av.error.FFmpegError as exc:
        demux_error = exc
    if missing_ts:
        raise VideoDecodeError(Reason.DECODE_FAILED, "packets carry no timestamps")
    declared = stream.frames
    if demux_error is not None or (declared > 0 and len(pts) < declared):
        raise VideoDecodeError(
            Reason.TRUNCATED,
            f"stream ends early: {len(pts)} of {declared or '?'} frames present"
            + (f" ({demux_error})" if demux_error else ""),
        )
    if not pts:
        raise VideoDecodeError(Reason.NO_FRAMES, "the video stream holds no frames")
    pts.sort()
    tb = stream.time_base or Fraction(1, 1)
    fps = _frame_rate(stream, pts, tb)
    duration = float((pts[-1] - pts[0]) * tb) + 1.0 / fps
    expected = _declared_duration(container, stream)
    if expected is not None and duration < expected - max(1.0, 0.05 * expected):
        raise VideoDecodeError(
            Reason.TRUNCATED,
            f"frames cover {duration:.2f} s of the declared {expected:.2f} s",
        )
    return VideoInfo(
        num_frames=len(pts),
        fps=fps,
        duration=duration,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        codec=stream.codec_context.name,
        container=container.format.name,
        upright=bool(ROTATING_FORMATS & set(container.format.name.split(","))),
        time_base=tb,
        frame_pts=tuple(pts),
        keyframe_pts=tuple(sorted(keys)) or (pts[0],),
    )


def _declared_duration(
    container: av.container.InputContainer, stream: av.VideoStream
) -> float | None:
    """The video stream's duration as its headers declare it, in seconds, when knowable."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # Matroska per-track statistics tag
    if tag:
        with contextlib.suppress(ValueError):
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
    if len(container.streams) == 1 and container.duration:
        return container.duration / av.time_base
    return None
