"""Run decodes in a child process that can be killed, so a stuck or crashing decode is contained."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .errors import Reason, VideoDecodeError


def _serve(conn: Connection) -> None:
    """Child loop: run each (function, args) request and send back ("ok", value) or ("err", exc)."""
    from . import load  # noqa: F401  (import the decoder stack before reporting ready)

    conn.send("ready")
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", fn(*args))
        except VideoDecodeError as exc:
            reply = ("err", exc)
        except Exception as exc:  # anything else is a decoder failure, reported as data
            reply = ("err", VideoDecodeError(Reason.DECODE_FAILED, f"{type(exc).__name__}: {exc}"))
        conn.send(reply)


class IsolatedRunner:
    """A persistent worker process; a call that overruns ``timeout`` seconds kills and replaces it."""

    START_TIMEOUT = 60.0  # seconds for a new worker to import its modules; not part of a call

    def __init__(self, timeout: float | None = 60.0) -> None:
        self.timeout = timeout
        self._ctx = mp.get_context("spawn")
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def _start(self) -> Connection:
        if self._proc is None or not self._proc.is_alive():
            parent, child = self._ctx.Pipe()
            self._proc = self._ctx.Process(target=_serve, args=(child,), daemon=True)
            self._proc.start()
            child.close()
            if not parent.poll(self.START_TIMEOUT) or parent.recv() != "ready":
                self._proc.kill()
                raise RuntimeError("the decode worker process did not start")
            self._conn = parent
        assert self._conn is not None
        return self._conn

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` in the worker; ``fn`` must be importable (module level)."""
        limit = self.timeout if timeout is None else timeout
        with self._lock:
            conn = self._start()
            conn.send((fn, args))
            if not conn.poll(limit):
                self._kill()
                raise VideoDecodeError(Reason.TIMEOUT, f"decode exceeded {limit:g} s and was stopped")
            try:
                status, value = conn.recv()
            except (EOFError, OSError):
                code = self._proc.exitcode if self._proc else None
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
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
