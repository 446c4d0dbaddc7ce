"""How a job ends when it cannot finish: typed failures and their documented exit codes.

Each failure prints as one line (what failed, what to do); the table is in docs/pipeline.md.
A failure of the environment (store, credentials, disk, cluster) leaves the ledger resumable:
nothing is committed for the work it interrupted.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the job commands (``caption``, ``qa``, ``features``)."""

    OK = 0  # every shard committed (error rows for bad videos are results, not failures)
    INTERNAL = 1  # an unexpected error: a bug; ``--debug`` shows the traceback
    USAGE = 2  # invalid configuration, inputs or job id; inputs changed under an existing job
    JOB_LOCKED = 3  # another driver holds the job's lease
    STORE_UNAVAILABLE = 4  # input or result store unreachable or throttled after retries
    ACCESS_DENIED = 5  # credentials rejected or expired, or permission missing
    LOCAL_RESOURCE = 6  # local disk full, output not writable
    CLUSTER = 7  # Ray could not start, or workers kept dying
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
