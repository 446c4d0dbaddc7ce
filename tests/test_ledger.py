"""The job ledger on a local store: plan, resume, conflicts, idempotent commits, attempts."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from videopanda_cluster.jobs.ledger import Ledger, LedgerConflict, check_job_id, plan_shards
from videopanda_cluster.storage.local import LocalStore

IDS = ["a", "b/../../c", "d", "ünï 🎬", "e", "f", "g"]
SHARDS = plan_shards(IDS, 3)


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_plan_shards_chunks_in_order():
    assert SHARDS == [["a", "b/../../c", "d"], ["ünï 🎬", "e", "f"], ["g"]]
    assert plan_shards(IDS, 100) == [IDS]
    assert plan_shards(IDS, 1) == [[v] for v in IDS]
    assert plan_shards([], 4) == []
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards(IDS, 0)
    with pytest.raises(ValueError, match="unique"):
        plan_shards(["a", "b", "a"], 2)


def test_new_ledger_layout_and_progress(store):
    ledger = Ledger.open_or_create(store, "job-1", "h" * 64, SHARDS)
    assert ledger.shard_ids() == ["000000", "000001", "000002"]
    assert ledger.pending() == ["000000", "000001", "000002"] and ledger.committed() == set()
    assert ledger.shard_videos("000001") == ["ünï 🎬", "e", "f"]
    record = json.loads(store.get("jobs/job-1/ledger.json"))
    assert record["config_hash"] == "h" * 64 and record["shards"] == SHARDS
    assert ledger.progress() == {
        "total_shards": 3,
        "total_videos": 7,
        "committed_shards": 0,
        "committed_videos": 0,
        "rows": 0,
        "failed": 0,
        "counters": {},
    }


def test_commit_writes_a_marker_and_updates_progress(store):
    ledger = Ledger.open_or_create(store, "job-1", "h1", SHARDS)
    assert ledger.commit("000001", rows=6, failed=2, counters={"truncated": 2}) is True
    assert ledger.commit("000002", rows=2, failed=1, counters={"truncated": 1, "timeout": 1})
    marker = json.loads(store.get("jobs/job-1/shards/000001.done"))
    assert marker["shard_id"] == "000001" and marker["videos"] == 3
    assert (marker["rows"], marker["failed"], marker["counters"]) == (6, 2, {"truncated": 2})
    assert ledger.committed() == {"000001", "000002"} and ledger.pending() == ["000000"]
    assert ledger.progress() == {
        "total_shards": 3,
        "total_videos": 7,
        "committed_shards": 2,
        "committed_videos": 4,
        "rows": 8,
        "failed": 3,
        "counters": {"timeout": 1, "truncated": 3},
    }
    assert ledger.commit_info("000000") is None
    assert ledger.commit_info("000001")["rows"] == 6


def test_commit_twice_keeps_the_first_marker(store):
    ledger = Ledger.open_or_create(store, "job-1", "h1", SHARDS)
    assert ledger.commit("000000", rows=3, failed=0, counters={}) is True
    assert ledger.commit("000000", rows=99, failed=5, counters={"x": 5}) is False
    assert store.list("jobs/job-1/shards/") == ["jobs/job-1/shards/000000.done"]
    assert ledger.progress()["rows"] == 3 and ledger.progress()["committed_shards"] == 1


def test_concurrent_commits_of_one_shard_commit_once(store):
    ledgers = [Ledger.open_or_create(store, "job-1", "h1", SHARDS) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda i: ledgers[i].commit("000002", rows=1, failed=0, counters={}), range(8))
        )
    assert results.count(True) == 1
    assert ledgers[0].progress()["rows"] == 1


def test_commit_rejects_unknown_shards_and_bad_stats(store):
    ledger = Ledger.open_or_create(store, "job-1", "h1", SHARDS)
    for bad in ("000003", "3", "../000000", ""):
        with pytest.raises(ValueError, match="has no shard"):
            ledger.commit(bad, rows=1, failed=0, counters={})
    with pytest.raises(ValueError, match="failed <= rows"):
        ledger.commit("000000", rows=1, failed=2, counters={})
    assert store.list("jobs/job-1/shards/") == []


def test_resume_keeps_the_original_shards_and_commits(tmp_path):
    first = Ledger.open_or_create(LocalStore(tmp_path), "job-1", "h1", SHARDS)
    first.commit("000000", rows=3, failed=0, counters={})
    # Another process, with inputs that changed meanwhile (same settings):
    resumed = Ledger.open_or_create(LocalStore(tmp_path), "job-1", "h1", plan_shards(["z"], 3))
    assert resumed.shards == SHARDS
    assert resumed.pending() == ["000001", "000002"]
    assert Ledger.load(LocalStore(tmp_path), "job-1").committed() == {"000000"}


def test_other_settings_under_the_same_job_id_conflict(store):
    Ledger.open_or_create(store, "nightly", "a" * 64, SHARDS)
    with pytest.raises(LedgerConflict) as info:
        Ledger.open_or_create(store, "nightly", "b" * 64, SHARDS)
    message = str(info.value)
    assert message.startswith("job nightly was created with a different configuration")
    assert "a" * 12 in message and "b" * 12 in message and "--job-id" in message
    assert json.loads(store.get("jobs/nightly/ledger.json"))["config_hash"] == "a" * 64
    Ledger.open_or_create(store, "nightly-2", "b" * 64, SHARDS)  # a new id is fine


def test_load_missing_and_corrupt_ledgers(store):
    with pytest.raises(KeyError):
        Ledger.load(store, "nope")
    store.put("jobs/broken/ledger.json", b"{not json")
    with pytest.raises(ValueError, match=r"ledger jobs/broken/ledger\.json .* is corrupt"):
        Ledger.load(store, "broken")
    store.put("jobs/wrong/ledger.json", json.dumps({"config_hash": "h", "shards": [1]}).encode())
    with pytest.raises(ValueError, match="corrupt"):
        Ledger.open_or_create(store, "wrong", "h", SHARDS)


@pytest.mark.parametrize("job_id", ["", ".", "..", "../x", "a/b", "-x", "a b", "x" * 129, "a\0"])
def test_job_ids_must_be_one_safe_component(store, job_id):
    with pytest.raises(ValueError, match="invalid job id"):
        check_job_id(job_id)
    with pytest.raises(ValueError, match="invalid job id"):
        Ledger.open_or_create(store, job_id, "h", SHARDS)
    assert store.list() == []


def test_attempts_are_counted_per_shard(store):
    ledger = Ledger.open_or_create(store, "job-1", "h1", SHARDS)
    assert ledger.attempts("000001") == 0
    assert [ledger.record_attempt("000001") for _ in range(3)] == [1, 2, 3]
    assert ledger.attempts("000001") == 3 and ledger.attempts("000000") == 0
    assert store.exists("jobs/job-1/attempts/000001/3")
    with pytest.raises(ValueError, match="has no shard"):
        ledger.record_attempt("000009")


def test_concurrent_attempts_all_count(store):
    ledger = Ledger.open_or_create(store, "job-1", "h1", SHARDS)
    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(lambda _: ledger.record_attempt("000000"), range(16)))
    assert sorted(numbers) == list(range(1, 17))
    assert ledger.attempts("000000") == 16


def test_a_resumed_run_recomputes_only_uncommitted_shards(tmp_path):
    def run(crash_on: str | None) -> None:
        ledger = Ledger.open_or_create(LocalStore(tmp_path), "job-1", "h1", SHARDS)
        for shard_id in ledger.pending():
            ledger.record_attempt(shard_id)
            if shard_id == crash_on:
                continue  # the worker died before the commit
            ledger.commit(shard_id, rows=len(ledger.shard_videos(shard_id)), failed=0, counters={})

    run(crash_on="000001")
    run(crash_on=None)
    run(crash_on=None)  # nothing left: no attempt at all
    ledger = Ledger.load(LocalStore(tmp_path), "job-1")
    assert {s: ledger.attempts(s) for s in ledger.shard_ids()} == {
        "000000": 1,
        "000001": 2,
        "000002": 1,
    }
    assert ledger.pending() == [] and ledger.progress()["rows"] == 7
