"""The job ledger on a local store: plan, resume, conflicts, idempotent commits, attempts."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from videopanda_cluster.jobs.ledger import (
    LEDGER_FORMAT,
    Ids,
    InputsChanged,
    Ledger,
    LedgerConflict,
    PlanUpdate,
    check_job_id,
    video_digest,
)
from videopanda_cluster.jobs.spool import InputSpool, VideoItem
from videopanda_cluster.storage.local import LocalStore

IDS = ["a", "b/../../c", "d", "ünï 🎬", "e", "f", "g"]
SHARDS = [["a", "b/../../c", "d"], ["ünï 🎬", "e", "f"], ["g"]]
VIDEOS = {v: f"/videos/{i}.mp4" for i, v in enumerate(IDS)}


def open_job(
    store, job_id: str, config_hash: str, videos: dict[str, str] | None = None, **options
) -> Ledger:
    """Plan (or resume) ``videos`` (id -> uri, default VIDEOS) as plan_job does, 3 per shard."""
    items = (VideoItem(v, uri) for v, uri in (VIDEOS if videos is None else videos).items())
    with InputSpool.of(items) as inputs:
        return Ledger.open_or_create(
            store, job_id, config_hash, inputs, shard_size=options.pop("size", 3), **options
        )


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_new_ledger_layout_and_progress(store):
    ledger = open_job(store, "job-1", "h" * 64)
    assert ledger.shard_ids() == ["000000", "000001", "000002"]
    assert ledger.pending() == ["000000", "000001", "000002"] and ledger.committed() == set()
    assert ledger.shard_videos("000001") == ["ünï 🎬", "e", "f"]
    record = json.loads(store.get("jobs/job-1/ledger.json"))
    assert record["config_hash"] == "h" * 64 and ledger.shard_lists() == SHARDS
    assert record["total_shards"] == 3 and record["total_videos"] == 7 and "shards" not in record
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
    ledger = open_job(store, "job-1", "h1")
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
    ledger = open_job(store, "job-1", "h1")
    assert ledger.commit("000000", rows=3, failed=0, counters={}) is True
    assert ledger.commit("000000", rows=99, failed=5, counters={"x": 5}) is False
    assert store.list("jobs/job-1/shards/") == ["jobs/job-1/shards/000000.done"]
    assert ledger.progress()["rows"] == 3 and ledger.progress()["committed_shards"] == 1


def test_concurrent_commits_of_one_shard_commit_once(store):
    ledgers = [open_job(store, "job-1", "h1") for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda i: ledgers[i].commit("000002", rows=1, failed=0, counters={}), range(8))
        )
    assert results.count(True) == 1
    assert ledgers[0].progress()["rows"] == 1


def test_commit_rejects_unknown_shards_and_bad_stats(store):
    ledger = open_job(store, "job-1", "h1")
    for bad in ("000003", "3", "../000000", ""):
        with pytest.raises(ValueError, match="has no shard"):
            ledger.commit(bad, rows=1, failed=0, counters={})
    with pytest.raises(ValueError, match="failed <= rows"):
        ledger.commit("000000", rows=1, failed=2, counters={})
    assert store.list("jobs/job-1/shards/") == []


def test_resume_keeps_the_original_shards_and_commits(tmp_path):
    first = open_job(LocalStore(tmp_path), "job-1", "h1")
    first.commit("000000", rows=3, failed=0, counters={})
    # Another process, with the same inputs and settings:
    resumed = open_job(LocalStore(tmp_path), "job-1", "h1")
    assert resumed.shard_lists() == SHARDS and resumed.plan_update is None
    assert resumed.pending() == ["000001", "000002"]
    assert Ledger.load(LocalStore(tmp_path), "job-1").committed() == {"000000"}


def test_changed_inputs_under_an_existing_job_are_refused_with_what_changed(store):
    open_job(store, "daily", "h1", VIDEOS)
    before = store.get("jobs/daily/ledger.json")
    edited = {**VIDEOS, "new-1": "/videos/n1.mp4", "new-2": "/videos/n2.mp4", "d": "/moved/d.mp4"}
    del edited["a"]
    with pytest.raises(InputsChanged) as info:
        open_job(store, "daily", "h1", edited)
    message = str(info.value)
    assert message.startswith("job daily was planned from other inputs: 2 added ('new-1', 'new-2')")
    assert "1 removed ('a')" in message and "1 changed ('d')" in message
    assert "--update" in message and "--job-id" in message and "\n" not in message
    assert isinstance(info.value, LedgerConflict) and info.value.exit_code == 2
    assert store.get("jobs/daily/ledger.json") == before  # nothing planned


def test_update_plans_new_videos_in_new_shards_and_leaves_committed_ones(store):
    ledger = open_job(store, "daily", "h1", VIDEOS)
    assert ledger.commit("000000", rows=3, failed=0, counters={})
    marker = store.get("jobs/daily/shards/000000.done")
    edited = {v: uri for v, uri in VIDEOS.items() if v not in ("a", "e")}  # a is committed
    edited |= {"f": "/moved/f.mp4", "h": "/h.mp4", "i": "/i.mp4", "j": "/j.mp4", "k": "/k.mp4"}
    updated = open_job(store, "daily", "h1", edited, update=True)
    assert updated.shard_lists() == [
        ["a", "b/../../c", "d"],  # committed: unchanged, its row of "a" stays
        ["ünï 🎬", "f"],  # pending: "e" dropped, "f" processed from its new uri
        ["g"],
        ["h", "i", "j"],
        ["k"],
    ]
    assert updated.plan_update == PlanUpdate(
        added=Ids(4, ("h", "i", "j", "k")),
        new_shards=Ids(2, ("000003", "000004")),
        removed=Ids(2, ("a", "e")),
        dropped=Ids(1, ("e",)),
        changed=Ids(1, ("f",)),
    )
    assert updated.pending() == ["000001", "000002", "000003", "000004"]
    assert store.get("jobs/daily/shards/000000.done") == marker
    summary = updated.plan_update.summary()
    assert summary["removed_videos"] == 2 and summary["removed_examples"] == ["a", "e"]
    # the stored plan is the updated one: the same inputs again are no change
    plan = updated.shard_lists()
    again = open_job(store, "daily", "h1", edited)
    assert again.shard_lists() == plan and again.plan_update is None
    assert again.videos() == {v: video_digest(edited[v], []) for v in again.videos()}
    assert set(again.videos()) == set(edited)
    # "a" comes back as it was: its committed row is its result again, no new shard
    restored = edited | {"a": VIDEOS["a"]}
    with pytest.raises(InputsChanged, match=r"1 added \('a'\)"):
        open_job(store, "daily", "h1", restored)
    back = open_job(store, "daily", "h1", restored, update=True)
    assert back.shard_lists() == plan and "a" in back.videos()
    assert len(store.list("jobs/daily/plan/")) == 1  # the replaced plans were deleted
    assert back.record["removed_videos"] == 0
    assert not back.plan_update.added and not back.plan_update.new_shards


def test_update_refuses_videos_changed_after_their_shard_was_committed(store):
    ledger = open_job(store, "daily", "h1", VIDEOS)
    ledger.commit("000000", rows=3, failed=0, counters={})
    before = store.get("jobs/daily/ledger.json")
    edited = {**VIDEOS, "d": "/moved/d.mp4", "new": "/new.mp4"}
    with pytest.raises(InputsChanged, match=r"1 videos changed after their shard was committed"):
        open_job(store, "daily", "h1", edited, update=True)
    assert store.get("jobs/daily/ledger.json") == before


def test_a_pending_shard_whose_videos_all_left_is_committed_empty(store):
    open_job(store, "daily", "h1", VIDEOS)
    edited = {v: uri for v, uri in VIDEOS.items() if v != "g"}
    updated = open_job(store, "daily", "h1", edited, update=True)
    assert updated.shard_videos("000002") == [] and updated.pending() == ["000000", "000001"]
    assert updated.commit_info("000002")["rows"] == 0
    assert updated.plan_update.dropped == Ids(1, ("g",)) and not updated.plan_update.new_shards


def test_a_format_1_ledger_is_compared_by_ids_and_gets_digests(store):
    old = {"format": 1, "job_id": "old", "config_hash": "h1", "created_at": 0, "shards": SHARDS}
    store.put("jobs/old/ledger.json", json.dumps(old).encode())
    with pytest.raises(InputsChanged, match=r"1 added \('new'\)"):
        open_job(store, "old", "h1", {**VIDEOS, "new": "/n.mp4"})
    resumed = open_job(store, "old", "h1", VIDEOS)
    assert resumed.shard_lists() == SHARDS and resumed.plan_update is None
    record = json.loads(store.get("jobs/old/ledger.json"))
    assert record["format"] == LEDGER_FORMAT == 3  # rewritten with digests, a plan in pieces
    assert resumed.videos() == {v: video_digest(uri, []) for v, uri in VIDEOS.items()}
    with pytest.raises(InputsChanged, match=r"1 changed \('d'\)"):  # now it can tell
        open_job(store, "old", "h1", {**VIDEOS, "d": "/moved.mp4"})


def test_other_settings_under_the_same_job_id_conflict(store):
    open_job(store, "nightly", "a" * 64)
    with pytest.raises(LedgerConflict) as info:
        open_job(store, "nightly", "b" * 64)
    message = str(info.value)
    assert message.startswith("job nightly was created with a different configuration")
    assert "a" * 12 in message and "b" * 12 in message and "--job-id" in message
    assert json.loads(store.get("jobs/nightly/ledger.json"))["config_hash"] == "a" * 64
    open_job(store, "nightly-2", "b" * 64)  # a new id is fine


def test_load_missing_and_corrupt_ledgers(store):
    with pytest.raises(KeyError):
        Ledger.load(store, "nope")
    store.put("jobs/broken/ledger.json", b"{not json")
    with pytest.raises(ValueError, match=r"ledger jobs/broken/ledger\.json .* is corrupt"):
        Ledger.load(store, "broken")
    store.put("jobs/wrong/ledger.json", json.dumps({"config_hash": "h", "shards": [1]}).encode())
    with pytest.raises(ValueError, match="corrupt"):
        open_job(store, "wrong", "h")


@pytest.mark.parametrize("job_id", ["", ".", "..", "../x", "a/b", "-x", "a b", "x" * 129, "a\0"])
def test_job_ids_must_be_one_safe_component(store, job_id):
    with pytest.raises(ValueError, match="invalid job id"):
        check_job_id(job_id)
    with pytest.raises(ValueError, match="invalid job id"):
        open_job(store, job_id, "h")
    assert store.list() == []


def test_attempts_are_counted_per_shard(store):
    ledger = open_job(store, "job-1", "h1")
    assert ledger.attempts("000001") == 0
    assert [ledger.record_attempt("000001") for _ in range(3)] == [1, 2, 3]
    assert ledger.attempts("000001") == 3 and ledger.attempts("000000") == 0
    assert store.exists("jobs/job-1/attempts/000001/3")
    with pytest.raises(ValueError, match="has no shard"):
        ledger.record_attempt("000009")


def test_concurrent_attempts_all_count(store):
    ledger = open_job(store, "job-1", "h1")
    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(lambda _: ledger.record_attempt("000000"), range(16)))
    assert sorted(numbers) == list(range(1, 17))
    assert ledger.attempts("000000") == 16


def test_a_resumed_run_recomputes_only_uncommitted_shards(tmp_path):
    def run(crash_on: str | None) -> None:
        ledger = open_job(LocalStore(tmp_path), "job-1", "h1")
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


def test_a_format_2_ledger_is_rewritten_in_pieces_keeping_its_commits(store):
    digests = [[video_digest(VIDEOS[v], []) for v in shard] for shard in SHARDS]
    old = {"format": 2, "job_id": "old", "config_hash": "h1", "shards": SHARDS,
           "digests": digests, "removed": []}  # fmt: skip
    store.put("jobs/old/ledger.json", json.dumps(old).encode())
    legacy = Ledger.load(store, "old")
    assert legacy.progress()["total_videos"] == 7 and legacy.shard_videos("000001") == SHARDS[1]
    assert legacy.commit("000000", rows=3, failed=0, counters={})
    resumed = open_job(store, "old", "h1")
    assert resumed.format == 3 and resumed.plan_update is None
    assert resumed.shard_lists() == SHARDS and resumed.pending() == ["000001", "000002"]
    assert [v.uri for v in resumed.shard_plan("000001")] == [VIDEOS[v] for v in SHARDS[1]]
    assert resumed.progress()["committed_videos"] == 3
    assert open_job(store, "old", "h1").version == resumed.version  # now the hash matches
