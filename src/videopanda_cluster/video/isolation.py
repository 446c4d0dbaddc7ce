"""Run decodes in a child process that can be killed, so a stuck or crashing decode is contained.

The child is a fresh interpreter (``python -m videopanda_cluster.video.isolation``) talking over
two pipes, so it never re-imports the caller's main module (safe from scripts, REPLs and Ray
workers alike).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .errors import Reason, VideoDecodeError, is_environment_fault, portable_fault


def _serve(inbox: Connection, outbox: Connection) -> None:
    """Child loop: run each (function, args) request and send back ("ok", value) or ("err", exc).

    Faults of the environment (:func:`~.errors.is_environment_fault`) come back as themselves; any
    other exception becomes a ``decode_failed`` :class:`VideoDecodeError`.
    """
    from . import extract  # noqa: F401  (import the decoder stack before reporting ready)

    outbox.send("ready")
    while True:
        try:
            fn, args = inbox.recv()
        except EOFError:
            return
        try:
            reply = ("ok", fn(*args))
        except VideoDecodeError as exc:
            reply = ("err", exc)
        except Exception as exc:
            if is_environment_fault(exc):  # not data: the caller sees the same exception
                reply = ("err", portable_fault(exc))
            else:  # anything else is a decoder failure, reported as data
                error = VideoDecodeError(Reason.DECODE_FAILED, f"{type(exc).__name__}: {exc}")
                reply = ("err", error)
        outbox.send(reply)


class IsolatedRunner:
    """A persistent worker process; a call overrunning ``timeout`` seconds kills and replaces it."""

    START_TIMEOUT = 60.0  # seconds for a new worker to import its modules; not part of a call

    def __init__(self, timeout: float | None = 60.0) -> None:
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None
        self._inbox: Connection | None = None  # what we read from the child
        self._outbox: Connection | None = None  # what we write to the child
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """Process id of the live worker, or None when none is running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Start the worker process now (else the first call starts it)."""
        with self._lock:
            self._start()

    def _start(self) -> tuple[Connection, Connection]:
        if self._proc is None or self._proc.poll() is not None:
            self._kill()
            to_child_r, to_child_w = os.pipe()
            from_child_r, from_child_w = os.pipe()
            src = str(Path(__file__).resolve().parents[2])  # so an uninstalled checkout works too
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                env=env,
                stdin=subprocess.DEVNULL,
            )
            os.close(to_child_r)
            os.close(from_child_w)
            self._outbox = Connection(to_child_w, readable=False)
            self._inbox = Connection(from_child_r, writable=False)
            try:
                ready = self._inbox.poll(self.START_TIMEOUT) and self._inbox.recv() == "ready"
            except (EOFError, OSError):
                ready = False
            if not ready:
                self._kill()
                raise RuntimeError("the decode worker process did not start")
        assert self._inbox is not None and self._outbox is not None
        return self._inbox, self._outbox

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` in the worker; ``fn`` must be importable (module level)."""
        limit = self.timeout if timeout is None else timeout
        with self._lock:
            inbox, outbox = self._start()
            try:
                outbox.send((fn, args))
                if not inbox.poll(limit):
                    self._kill()
                    raise VideoDecodeError(
                        Reason.TIMEOUT, f"decode exceeded {limit:g} s and was stopped"
                    )
                status, value = inbox.recv()
            except (EOFError, OSError):
                code = self._proc.poll() if self._proc else None
                self._kill()
                raise VideoDecodeError(
                    Reason.CRASHED, f"decode process died (exit code {code})"
                ) from None
        if status == "err":
            raise value
        return value

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
        for conn in (self._inbox, self._outbox):
            if conn is not None:
                conn.close()
        self._proc = self._inbox = self._outbox = None

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()


if __name__ == "__main__":
    _serve(
        Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    )
