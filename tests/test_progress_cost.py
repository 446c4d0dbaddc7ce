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


@pytest.mark.parametrize(
    ("block", "fold_every"), [(1_000, 2_000), (100, 150)], ids=["one-listing", "folds-and-blocks"]
)
@pytest.mark.slow
def test_progress_lists_instead_of_reading_every_marker(counted, monkeypatch, block, fold_every):
    monkeypatch.setattr(ledger_module, "LISTING_BLOCK", block)
    monkeypatch.setattr(ledger_module, "FOLD_EVERY", fold_every)
    store, proxy = counted
    with InputSpool.of(VideoItem(f"v{i}", f"/v{i}.mp4") for i in range(SHARDS * 2)) as inputs:
        ledger = Ledger.open_or_create(store, "big", "h" * 64, inputs, shard_size=2)
    proxy.requests.clear()
    for n, shard_id in enumerate(ledger.shard_ids()):
        counters = {"truncated": 1} if n % 4 == 0 else {}
        ledger.commit(shard_id, rows=2, failed=len(counters), counters=counters)
    # a commit is a marker and a stats record; every `fold_every` commits the driver folds the
    # records into progress.json (a few requests, not one per shard)
    folds = SHARDS // fold_every
    assert proxy.requests["PUT"] <= 2 * SHARDS + 1 + 2 * folds, proxy.requests
    proxy.requests.clear()
    quick = ledger.progress(exact=False)  # what `status` does
    assert quick["committed_shards"] == SHARDS and quick["rows"] == 2 * SHARDS
    assert quick["counters"] == {"truncated": SHARDS // 4}
    assert quick["failed"] == SHARDS // 4 and quick["committed_videos"] == 2 * SHARDS
    # the checkpoint and the records since: one GET and a listing or two (a job never folded
    # also lists the stats folder of earlier versions), not one per shard
    assert sum(proxy.requests.values()) <= (4 if fold_every > SHARDS else 3), proxy.requests
    # exact (a run's start and end): folds everything and lists the markers once
    proxy.requests.clear()
    assert ledger.progress() == quick
    assert proxy.requests["GET"] <= 5 + 2 * SHARDS // block, proxy.requests
    proxy.requests.clear()
    assert Ledger.load(store, "big").progress(exact=False) == quick
    assert sum(proxy.requests.values()) <= 4, proxy.requests  # + reading ledger.json


def test_a_shard_committed_without_its_stats_record_is_counted_from_its_marker(tmp_path):
    from videopanda_cluster.storage.local import LocalStore

    store = LocalStore(tmp_path)
    with InputSpool.of(VideoItem(f"v{i}", f"/v{i}.mp4") for i in range(6)) as inputs:
        ledger = Ledger.open_or_create(store, "gap", "h" * 64, inputs, shard_size=2)
    for shard_id in ledger.shard_ids():
        ledger.commit(shard_id, rows=2, failed=0, counters={})
    # the driver stopped between the marker and the stats record of shard 1
    store.delete(f"jobs/gap/progress/000000/{stats_name('000001', 2, 2, 0, {})}")
    assert Ledger.load(store, "gap").progress(exact=False)["committed_shards"] == 2
    assert Ledger.load(store, "gap").progress()["committed_shards"] == 3  # the next run's start
    assert Ledger.load(store, "gap").progress(exact=False)["committed_shards"] == 3


def test_counters_that_do_not_fit_a_name_are_read_from_the_marker(tmp_path):
    from videopanda_cluster.storage.local import LocalStore

    store = LocalStore(tmp_path)
    with InputSpool.of(VideoItem(f"v{i}", f"/v{i}.mp4") for i in range(4)) as inputs:
        ledger = Ledger.open_or_create(store, "odd", "h" * 64, inputs, shard_size=2)
    ledger.commit("000000", rows=2, failed=1, counters={"Odd Code": 1})
    ledger.commit("000001", rows=2, failed=1, counters={"truncated": 1})
    assert store.list("jobs/odd/progress/000000/")[0].endswith("000000~v2~r2~f1~m")
    quick = ledger.progress(exact=False)
    assert quick == ledger.progress()
    assert quick["counters"] == {"Odd Code": 1, "truncated": 1} and quick["committed_videos"] == 4
