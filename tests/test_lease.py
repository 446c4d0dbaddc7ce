"""The job lease on the local store and on a real Azurite: refusal, heartbeat, takeover, loss."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import pytest

from tests.azurite import azurite as azurite_fixture  # noqa: F401
from tests.test_storage import azure_store
from videopanda_cluster.jobs.failures import ExitCode, JobLocked
from videopanda_cluster.jobs.lease import JobLease, LeaseRecord, lease_key
from videopanda_cluster.jobs.ledger import ledger_key
from videopanda_cluster.storage import LocalStore, Store


@pytest.fixture(params=["local", "azure"])
def store(request, tmp_path) -> Store:
    """A store where the jobs the tests lease are planned (have a ledger)."""
    if request.param == "local":
        store: Store = LocalStore(tmp_path / "store")
    else:
        store = azure_store(request.getfixturevalue("azurite"))
    for job_id in ("daily", "busy", "stale", "killed", "lost", "race", "junk", "outage"):
        store.put(ledger_key(job_id), b"{}")
    return store


def held(store: Store, job_id: str) -> LeaseRecord:
    record = LeaseRecord.decode(store.get(lease_key(job_id)))
    assert record is not None
    return record


def crashed_lease(store: Store, job_id: str, silent_for: float) -> None:
    """The lease of a driver on another host that stopped ``silent_for`` seconds ago."""
    then = time.time() - silent_for
    record = LeaseRecord("crashed-host", 4242, "t" * 32, then - 60, then, 120.0)
    store.put(lease_key(job_id), record.encode())


def test_a_second_driver_is_refused_with_the_holder_and_since_when(store):
    with JobLease(store, "daily", expires_after=60) as first:
        mine = held(store, "daily")
        assert (mine.host, mine.pid) == (socket.gethostname(), os.getpid())
        assert mine.released_at is None and mine.expires_after == 60
        started = time.time()
        with pytest.raises(JobLocked) as info:
            JobLease(store, "daily").acquire()
        assert time.time() - started < 5  # refused at once, not after a wait
        message = str(info.value)
        assert message.startswith(f"job daily is being run by {socket.gethostname()} pid ")
        assert " since 20" in message and "UTC" in message and "\n" not in message
        assert info.value.exit_code == ExitCode.JOB_LOCKED == 3
        first.check()
    assert held(store, "daily").released_at is not None
    with JobLease(store, "daily"):  # released: the next driver takes it at once
        assert held(store, "daily").released_at is None


def test_the_heartbeat_keeps_a_lease_alive_past_its_expiry(store):
    with JobLease(store, "busy", expires_after=0.8) as lease:
        first = held(store, "busy").heartbeat_at
        time.sleep(2.0)
        assert held(store, "busy").heartbeat_at > first
        with pytest.raises(JobLocked):
            JobLease(store, "busy", expires_after=0.8).acquire()
        lease.check()


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(store, caplog):
    crashed_lease(store, "stale", silent_for=600)
    with caplog.at_level(logging.WARNING), JobLease(store, "stale") as lease:
        record = held(store, "stale")
        assert record.host == socket.gethostname() and record.token == lease.record.token
        assert "took over crashed-host pid 4242's lease" in caplog.text
    assert held(store, "stale").released_at is not None

    stalled = JobLease(store, "stale", expires_after=0.3)
    stalled.acquire()  # a driver whose heartbeats stopped (no heartbeat thread)
    time.sleep(0.5)
    with JobLease(store, "stale") as successor:
        assert held(store, "stale").token == successor.record.token
        stalled.release()  # the old holder's release leaves the new lease alone
        assert held(store, "stale").token == successor.record.token
        assert held(store, "stale").released_at is None


def test_a_lease_left_by_a_dead_process_of_this_host_is_taken_at_once(store, caplog):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    now = time.time()
    record = LeaseRecord(socket.gethostname(), int(gone.stdout), "k" * 32, now, now, 120.0)
    store.put(lease_key("killed"), record.encode())  # a driver killed with SIGKILL a moment ago
    with caplog.at_level(logging.WARNING), JobLease(store, "killed"):
        assert held(store, "killed").pid == os.getpid()
    assert f"pid {int(gone.stdout)}'s lease (its driver is gone)" in caplog.text


def test_a_lease_taken_over_stops_its_holder(store):
    with JobLease(store, "lost", expires_after=0.4) as lease:
        crashed_lease(store, "lost", silent_for=0)  # someone else's lease replaced it
        deadline = time.time() + 10
        while time.time() < deadline and not lease._lost:
            time.sleep(0.05)
        with pytest.raises(JobLocked, match="job lost stopped: another driver took over"):
            lease.check()
    assert held(store, "lost").host == "crashed-host"  # not released by the loser


def test_racing_drivers_take_an_expired_lease_once(store):
    crashed_lease(store, "race", silent_for=600)
    barrier = threading.Barrier(6)
    outcome: dict[int, str] = {}

    def driver(i: int) -> None:
        lease = JobLease(store, "race")
        barrier.wait()
        try:
            lease.acquire()
            outcome[i] = lease.record.token
        except JobLocked:
            outcome[i] = "locked"

    threads = [threading.Thread(target=driver, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [token for token in outcome.values() if token != "locked"]
    assert len(outcome) == 6 and len(winners) == 1
    assert held(store, "race").token == winners[0]


def test_an_unreadable_lease_counts_as_expired(store):
    store.put(lease_key("junk"), b"{not json")
    with JobLease(store, "junk"):
        assert json.loads(store.get(lease_key("junk")))["host"] == socket.gethostname()


@pytest.mark.slow
def test_a_lease_whose_release_failed_in_an_outage_is_retaken_by_this_process(tmp_path, caplog):
    """The store is down when a failed job ends: its lease stays behind, unreleased. The same
    process rerunning the job (a retry loop, a notebook) takes it over at once."""
    from tests.azurite import AzuriteServer

    with AzuriteServer(tmp_path / "azurite") as server:
        store = azure_store(server, retry_total=1, retry_backoff=0.05, timeout=2)
        store.put(ledger_key("outage"), b"{}")
        with caplog.at_level(logging.WARNING), JobLease(store, "outage"):
            server.stop()
        assert "could not release its lease" in caplog.text
        server.start()
        assert held(store, "outage").released_at is None  # left behind, heartbeat recent
        with JobLease(store, "outage") as lease:
            assert held(store, "outage").token == lease.record.token


def test_a_driver_that_stops_before_planning_leaves_no_lease(store):
    with JobLease(store, "never-planned"):  # e.g. its inputs were invalid
        assert store.exists(lease_key("never-planned"))
    assert not store.exists(lease_key("never-planned"))


@pytest.mark.slow
def test_a_lease_silent_for_over_half_its_expiry_is_waited_out_not_refused(store, caplog):
    """A resubmission on a new machine (the old head pod is gone) resumes by itself: a lease
    with two missed renewals is waited for until it expires, then taken."""
    crashed_lease(store, "stale", silent_for=117.0)  # expires in 3 s
    started = time.time()
    with caplog.at_level(logging.WARNING), JobLease(store, "stale"):
        assert 2.0 < time.time() - started < 15
        assert held(store, "stale").host == socket.gethostname()
    assert "waiting" in caplog.text
    crashed_lease(store, "busy", silent_for=20.0)  # renewed recently: refused at once
    started = time.time()
    with pytest.raises(JobLocked):
        JobLease(store, "busy").acquire()
    assert time.time() - started < 5
