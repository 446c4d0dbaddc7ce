"""The job lease: one driver at a time runs a job.

``jobs/<job_id>/lease.json`` names its holder (host, pid, a random token), when it was acquired and
its last heartbeat. It is created with put_if_absent; the holder renews it every
``expires_after / 4`` seconds and marks it released when it stops (also on failure); a driver
that stops before the job was planned (invalid inputs) deletes it, leaving nothing behind. Another
driver refuses with :class:`JobLocked` while the lease is live. A lease is taken over, with a
compare-and-swap so that two drivers never both win it, when it is released, has had no heartbeat
for ``expires_after`` seconds (its driver crashed or lost the store), or was left on this host by
a process that is gone (a killed driver, rerun on the same machine) or by this process (its
release failed). Heartbeats are compared with the clock of the driver that reads them: drivers'
clocks must agree within a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from ..storage.base import Store
from .failures import JobLocked
from .layout import lease_key, ledger_key

LEASE_SECONDS = 120.0  # a lease without a heartbeat for this long is taken over
log = logging.getLogger(__name__)
_HELD: set[str] = set()  # tokens of the leases this process holds now


@dataclass(frozen=True)
class LeaseRecord:
    """What ``lease.json`` holds."""

    host: str
    pid: int
    token: str  # unique per acquisition
    acquired_at: float
    heartbeat_at: float
    expires_after: float
    released_at: float | None = None

    def live(self, now: float) -> bool:
        """Not released, heartbeat recent, and not left by a gone process of this host (or
        by this process)."""
        if self.released_at is not None or now >= self.heartbeat_at + self.expires_after:
            return False
        if self.host != socket.gethostname():
            return True
        return self.token in _HELD if self.pid == os.getpid() else _pid_exists(self.pid)

    def holder(self) -> str:
        return f"{self.host} pid {self.pid}"

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord | None:
        """The record, or None if ``data`` is not one (treated as an expired lease)."""
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can check
    return True


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class JobLease:
    """A context manager holding ``job_id``'s lease, renewed by a heartbeat thread.

    ``__enter__`` raises :class:`JobLocked` if another driver holds a live lease. Call
    :meth:`check` between units of work: it raises JobLocked once the lease was lost (not renewed
    for ``expires_after`` seconds, then taken over).
    """

    def __init__(self, store: Store, job_id: str, expires_after: float = LEASE_SECONDS) -> None:
        if expires_after <= 0:
            raise ValueError(f"expires_after must be > 0, got {expires_after}")
        self.store, self.job_id, self.expires_after = store, job_id, expires_after
        self.key = lease_key(job_id)
        self.record: LeaseRecord | None = None
        self._version = ""
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> JobLease:
        self.acquire()
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lease-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()

    def acquire(self) -> None:
        """Take the lease: create it, or replace a released or expired one; else JobLocked."""
        now = time.time()
        mine = LeaseRecord(
            host=socket.gethostname(),
            pid=os.getpid(),
            token=uuid.uuid4().hex,
            acquired_at=now,
            heartbeat_at=now,
            expires_after=self.expires_after,
        )
        _HELD.add(mine.token)  # before it is visible: a thread of this process must see it held
        try:
            self._version = self._take(mine, now)
        except BaseException:
            _HELD.discard(mine.token)
            raise
        self.record = mine

    def _take(self, mine: LeaseRecord, now: float, waited: bool = False) -> str:
        """Write ``mine`` as the lease; its version, or JobLocked.

        A live lease whose heartbeat is older than half its expiry (two renewals missed: its
        driver is most likely gone, e.g. with a lost head pod) is waited out once rather than
        refused, so a resubmission on a new machine resumes by itself."""
        if self.store.put_if_absent(self.key, mine.encode()):
            return self.store.get_versioned(self.key).version
        try:
            current = self.store.get_versioned(self.key)
        except KeyError:  # deleted meanwhile: start over
            return self._take(mine, now, waited)
        held = LeaseRecord.decode(current.data)
        if held is not None and held.live(now):
            silent = now - held.heartbeat_at
            if not waited and silent > held.expires_after / 2:
                pause = max(0.0, held.heartbeat_at + held.expires_after - now) + 1.0
                log.warning(
                    "job %s: %s's lease has had no heartbeat for %.0f s; waiting %.0f s for it "
                    "to expire",
                    self.job_id, held.holder(), silent, pause,
                )  # fmt: skip
                time.sleep(pause)
                return self._take(mine, time.time(), waited=True)
            raise JobLocked(
                f"job {self.job_id} is being run by {held.holder()} since "
                f"{_when(held.acquired_at)} (last heartbeat {now - held.heartbeat_at:.0f} s ago); "
                f"wait for it to finish, or rerun once its lease expires "
                f"({held.expires_after:.0f} s without a heartbeat)"
            )
        version = self.store.put_if_version(self.key, mine.encode(), current.version)
        if version is None:
            raise JobLocked(f"job {self.job_id}: another driver took its lease just now")
        if held is None or held.released_at is None:
            shown = "an unreadable lease" if held is None else f"{held.holder()}'s lease"
            log.warning("job %s: took over %s (its driver is gone)", self.job_id, shown)
        return version

    def _renew(self, record: LeaseRecord) -> bool:
        """Write ``record`` over our own lease; False if it is no longer ours."""
        version = self.store.put_if_version(self.key, record.encode(), self._version)
        if version is None:
            return False
        self._version, self.record = version, record
        return True

    def _heartbeat(self) -> None:
        every = self.expires_after / 4
        while not self._stop.wait(every):
            assert self.record is not None
            now = time.time()
            try:
                if not self._renew(replace(self.record, heartbeat_at=now)):
                    self._lost = "another driver took over its lease"
                    return
            except Exception as exc:  # the store is down: retry until the lease would expire
                log.warning("job %s: lease heartbeat failed: %s", self.job_id, exc)
                if now >= self.record.heartbeat_at + self.expires_after:
                    self._lost = f"its lease expired (no heartbeat stored: {exc})"
                    return

    def check(self) -> None:
        """Raise JobLocked if the lease was lost since it was taken."""
        if self._lost:
            raise JobLocked(f"job {self.job_id} stopped: {self._lost}")

    def release(self) -> None:
        """Mark the lease released if it is still ours, or delete it if the job has no ledger
        (a failed release just lets it expire)."""
        if self.record is None:
            return
        try:
            if self._lost:
                return  # not ours any more
            if self.store.exists(ledger_key(self.job_id)):
                self._renew(replace(self.record, released_at=time.time()))
            else:
                self.store.delete(self.key)
        except Exception as exc:
            log.warning("job %s: could not release its lease: %s", self.job_id, exc)
        finally:
            _HELD.discard(self.record.token)
            self.record = None
