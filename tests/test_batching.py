"""ArrivalBatcher: the encode stage's batches within a shard, formed as decodes arrive."""

from __future__ import annotations

from videopanda_cluster.cluster.batching import ArrivalBatcher


def test_full_batches_leave_at_once_in_plan_order():
    batcher = ArrivalBatcher(size=2, wait_s=1.0)
    batcher.add([3, 0, 2], now=0.0)
    assert batcher.take(now=0.0, closed=False) == [[0, 2]]
    assert batcher.waiting == [3] and batcher.wait_for(0.25) == 0.75  # from the full batch leaving
    assert batcher.take(now=0.5, closed=False) == []


def test_a_partial_batch_leaves_after_the_wait_or_when_no_more_will_come():
    batcher = ArrivalBatcher(size=4, wait_s=0.5)
    assert batcher.wait_for(0.0) is None
    batcher.add([1], now=10.0)
    batcher.add([0], now=10.3)  # the wait runs from the first arrival
    assert abs(batcher.wait_for(10.3) - 0.2) < 1e-9
    assert batcher.take(now=10.4, closed=False) == []
    assert batcher.take(now=10.5, closed=False) == [[0, 1]]
    assert batcher.wait_for(10.5) is None
    batcher.add([5], now=11.0)
    assert batcher.take(now=11.0, closed=True) == [[5]]
    assert batcher.take(now=11.0, closed=True) == []
