"""How a job ends when it cannot finish: typed failures and their documented exit codes.

Each failure prints as one line (what failed, what to do); the table is in docs/pipeline.md.
A failure of the environment (store, credentials, disk, cluster) leaves the ledger resumable:
nothing is committed for the work it interrupted.
"""

from __future__ import annotations

import errno
import re
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the job commands (``caption``, ``qa``, ``features``) and of
    ``eval`` (docs/eval.md)."""

    OK = 0  # every shard committed (error rows for bad videos are results, not failures)
    INTERNAL = 1  # an unexpected error: a bug; ``--debug`` shows the traceback
    USAGE = 2  # invalid configuration, inputs or job id; inputs changed under an existing job
    JOB_LOCKED = 3  # another driver holds the job's lease
    STORE_UNAVAILABLE = 4  # input or result store unreachable or throttled after retries
    ACCESS_DENIED = 5  # credentials rejected or expired, or permission missing
    LOCAL_RESOURCE = 6  # local disk full, output not writable
    CLUSTER = 7  # Ray could not start, or workers kept dying
    JUDGE_FAILURES = 8  # eval judge: some verdicts failed after retries (a rerun asks only those)
    INTERRUPTED = 130  # SIGINT/SIGTERM: stopped cleanly


class JobError(Exception):
    """A job that cannot go on; ``str(exc)`` is the one line shown to the user."""

    exit_code: ExitCode = ExitCode.INTERNAL


class JobFailed(JobError):
    """The environment stopped the job (store down, cluster lost); a rerun resumes it."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.STORE_UNAVAILABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        return (type(self), (str(self), self.exit_code))


class UsageError(JobError):
    """The job as asked cannot run: fix the command, config or inputs."""

    exit_code = ExitCode.USAGE


class JobLocked(JobError):
    """Another driver holds the job's lease."""

    exit_code = ExitCode.JOB_LOCKED


class Interrupted(JobError):
    """Stopped by SIGINT/SIGTERM; the ledger is resumable."""

    exit_code = ExitCode.INTERRUPTED


# Local errno values that are faults of the machine, not of the data.
_LOCAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SECRETS = re.compile(r"(?i)\b(sig|AccountKey|SharedAccessSignature)=[^&;\s'\"]*")
MAX_LINE = 400


def root_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task raised (``RayTaskError.cause``), else ``exc`` itself."""
    for _ in range(8):  # RayTaskError keeps the task's exception in ``cause``
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    return exc


def environment_fault(exc: BaseException, where: str = "result store") -> JobFailed | None:
    """The :class:`JobFailed` for a fault of the environment (``where`` names what failed: the
    input store, the result store), or None if ``exc`` is something else."""
    from ..storage.base import StoreAccessDenied, StoreUnavailable

    cause = root_cause(exc)
    if isinstance(cause, JobFailed):
        return cause
    if isinstance(cause, StoreAccessDenied):
        return JobFailed(
            f"{where} refused access: {one_line(cause)}; fix the credentials or permissions "
            "and rerun to resume",
            ExitCode.ACCESS_DENIED,
        )
    if isinstance(cause, StoreUnavailable):
        return JobFailed(f"{where} unreachable: {one_line(cause)}; rerun to resume")
    if isinstance(cause, OSError) and cause.errno in _LOCAL_ERRNOS:
        return JobFailed(
            f"{where} not usable: {one_line(cause)}; free space or fix permissions and rerun "
            "to resume",
            ExitCode.LOCAL_RESOURCE,
        )
    return None


def one_line(exc: BaseException | str) -> str:
    """The first line of a message, without ANSI colours or secrets, at most MAX_LINE chars."""
    text = exc if isinstance(exc, str) else str(exc) or type(exc).__name__
    text = _SECRETS.sub(r"\1=***", _ANSI.sub("", text)).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def describe(exc: BaseException) -> tuple[ExitCode, str]:
    """(exit code, one line) for any exception that ends a job command."""
    if isinstance(exc, Interrupted):
        return exc.exit_code, one_line(exc)
    if isinstance(exc, JobError):
        prefix = "error" if exc.exit_code == ExitCode.USAGE else "job failed"
        return exc.exit_code, f"{prefix}: {one_line(exc)}"
    fault = environment_fault(exc)
    if fault is not None:
        return fault.exit_code, f"job failed: {one_line(fault)}"
    if isinstance(exc, ValueError):  # invalid configuration, inputs, job ids
        return ExitCode.USAGE, f"error: {one_line(exc)}"
    if type(exc).__module__.startswith("ray."):
        return ExitCode.CLUSTER, (
            f"job failed: the Ray cluster failed ({type(exc).__name__}: {one_line(exc)}); "
            "rerun to resume"
        )
    return ExitCode.INTERNAL, (
        f"internal error: {type(exc).__name__}: {one_line(exc)}; rerun with --debug for the "
        "traceback"
    )
