"""Typed decode errors with stable reason codes."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Stable reason codes; they appear in JSON output and result rows, so never rename one."""

    NOT_FOUND = "not_found"  # the path or blob does not exist
    EMPTY = "empty_file"  # zero bytes
    NOT_A_VIDEO = "not_a_video"  # no container format recognised (e.g. a text file named .mp4)
    TRUNCATED = "truncated"  # a recognised container whose data ends early
    NO_VIDEO_STREAM = "no_video_stream"  # e.g. audio-only, or only cover art
    UNSUPPORTED_CODEC = "unsupported_codec"  # no decoder for the stream's codec in this build
    BAD_DIMENSIONS = "bad_dimensions"  # zero, negative or absurd width/height in the header
    NO_FRAMES = "no_frames"  # a video stream from which no frame could be decoded
    DECODE_FAILED = "decode_failed"  # the decoder failed on data it should handle
    TIMEOUT = "timeout"  # the decode overran its deadline and was stopped
    CRASHED = "decoder_crashed"  # the isolated decode process died
    NOT_A_FILE = "not_a_file"  # a directory, FIFO, device, socket or symlink loop
    SOURCE_UNREADABLE = "source_unreadable"  # the input could not be opened or read (bad URI...)
    TOO_FEW_FRAMES = "too_few_frames"  # fewer frames than the model's sampling rule takes
    # Faults of a job's input rather than of the video file (one enum for every row error code)
    QUESTION_TOO_LONG = "question_too_long"  # the prompt and the answer exceed the model's context
    NO_QUESTION = "no_question"  # a qa job's video with no question: nothing to answer


class VideoDecodeError(Exception):
    """A video that cannot become model input; ``reason`` is a stable :class:`Reason` code."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = Reason(reason)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.reason.value, "message": self.message}

    def __reduce__(self):  # keep the reason across process boundaries (pickling)
        return (VideoDecodeError, (self.reason, self.message))


def is_environment_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is a fault of the environment while reading an input, not of the video:
    a store outage or refusal, a permission or a disk error (the one rule is
    :func:`videopanda_cluster.jobs.failures.environment_fault`). Such a fault is never a
    result: it leaves the decode as an exception, so the video stays uncommitted and the job
    can be resumed.
    """
    from ..jobs.failures import environment_fault

    return environment_fault(exc) is not None


def portable_fault(exc: BaseException) -> BaseException:
    """``exc`` when it survives pickling (to cross a process boundary), else a plain copy."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        pass
    if isinstance(exc, OSError):
        return type(exc)(exc.errno, exc.strerror or str(exc), exc.filename)
    from ..storage.base import StoreUnavailable

    return StoreUnavailable(f"{type(exc).__name__}: {exc}")
