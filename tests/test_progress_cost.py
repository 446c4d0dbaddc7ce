"""Progress of a job costs a few listing requests per thousands of shards, never one GET per
committed shard (issue 18: cheap progress), counted at a loopback proxy before a real Azurite."""

from __future__ import annotations

import pytest

from tests.azurite import ACCOUNT, ACCOUNT_KEY
from tests.azurite import azurite as azurite_fixture  # noqa: F401
from tests.fault_proxy import FaultProxy
from videopanda_cluster.jobs import ledger as ledger_module
from videopanda_cluster.jobs.ledger import Ledger, parse_stats_name, stats_name
from videopanda_cluster.jobs.spool import InputSpool, VideoItem
from videopanda_cluster.storage.azure import AzureBlobStore

SHARDS = 400


@pytest.fixture
def counted(azurite):
    with FaultProxy(azurite.port) as proxy:
        store = AzureBlobStore(
            "progress", "cost", connection_string=proxy.connection_string(ACCOUNT, ACCOUNT_KEY)
        )
        yield store, proxy


def test_stats_names_round_trip_and_refuse_what_they_cannot_spell():
    name = stats_name("000012", 16, 20, 3, {"truncated": 2, "no_question": 1})
    assert name == "000012~v16~r20~f3~no_question.1~truncated.2"
    assert parse_stats_name(name) == {
        "shard_id": "000012",
        "videos": 16,
        "rows": 20,
        "failed": 3,
        "counters": {"no_question": 1, "truncated": 2},
    }
    # counters that cannot be spelled in a short name are left to the marker
    assert stats_name("000001", 1, 1, 1, {"Bad Code": 1}) == "000001~v1~r1~f1~m"
    assert stats_name("000001", 1, 1, 1, {f"code_{i:02d}": 1 for i in range(30)}).endswith("~m")
    assert parse_stats_name("000001~v1~r1~f1~m")["in_marker"] is True
    assert parse_stats_name("000001.done") is None
    assert parse_stats_name("000001~x1~r1~f0") is None


@pytest.mark.parametrize("block", [1_000, 100], ids=["one-listing", "concurrent-listings"])
def test_progress_lists_instead_of_reading_every_marker(counted, monkeypatch, block):
    monkeypatch.setattr(ledger_module, "LISTING_BLOCK", block)
    store, proxy = counted
    with InputSpool.of(VideoItem(f"v{i}", f"/v{i}.mp4") for i in range(SHARDS * 2)) as inputs:
        ledger = Ledger.open_or_create(store, "big", "h" * 64, inputs, shard_size=2)
    for n, shard_id in enumerate(ledger.shard_ids()):
        counters = {"truncated": 1} if n % 4 == 0 else {}
        ledger.commit(shard_id, rows=2, failed=len(counters), counters=counters)
    proxy.requests.clear()
    progress = ledger.progress()
    assert progress["committed_shards"] == SHARDS and progress["rows"] == 2 * SHARDS
    assert progress["counters"] == {"truncated": SHARDS // 4}
    assert progress["failed"] == SHARDS // 4
    # exact (a run's start and end): two listings (markers, stats), each one page for up to
    # 5,000 names (or one per 100 shards listed concurrently); no GET per shard
    listings = 1 if block == 1_000 else SHARDS // block
    assert sum(proxy.requests.values()) <= 4 * listings, proxy.requests
    # status: one listing
    proxy.requests.clear()
    assert ledger.progress(exact=False) == progress
    assert sum(proxy.requests.values()) <= 2 * listings, proxy.requests
    # a stats record lost between the two writes: status misses that shard until an exact
    # progress reads its marker, once, and writes the record back
    gone = stats_name("000003", 2, 2, 0, {})
    store.delete(f"jobs/big/stats/{gone}")
    assert ledger.progress(exact=False)["committed_shards"] == SHARDS - 1
    proxy.requests.clear()
    assert ledger.progress() == progress
    assert sum(proxy.requests.values()) <= 4 * listings + 2, proxy.requests
    assert store.exists(f"jobs/big/stats/{gone}")
    assert Ledger.load(store, "big").progress(exact=False) == progress


def test_counters_that_do_not_fit_a_name_are_read_from_the_marker(tmp_path):
    from videopanda_cluster.storage.local import LocalStore

    store = LocalStore(tmp_path)
    with InputSpool.of(VideoItem(f"v{i}", f"/v{i}.mp4") for i in range(4)) as inputs:
        ledger = Ledger.open_or_create(store, "odd", "h" * 64, inputs, shard_size=2)
    ledger.commit("000000", rows=2, failed=1, counters={"Odd Code": 1})
    ledger.commit("000001", rows=2, failed=1, counters={"truncated": 1})
    assert store.list("jobs/odd/stats/")[0].endswith("000000~v2~r2~f1~m")
    quick = ledger.progress(exact=False)
    assert quick == ledger.progress()
    assert quick["counters"] == {"Odd Code": 1, "truncated": 1} and quick["committed_videos"] == 4
