"""Batches formed as their members arrive: the encode stage's batching within a shard."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ArrivalBatcher:
    """Groups items (a shard's video positions) into batches of up to ``size``.

    A batch leaves when it is full, when its first item has waited ``wait_s`` seconds, or when
    no more items will come (``closed``). Waiting items leave in ascending order, so items that
    arrive together are batched as they are planned.
    """

    size: int
    wait_s: float
    waiting: list[int] = field(default_factory=list)
    since: float | None = None  # when the oldest waiting item arrived

    def add(self, items: list[int], now: float) -> None:
        if items and not self.waiting:
            self.since = now
        self.waiting = sorted([*self.waiting, *items])

    def take(self, now: float, closed: bool) -> list[list[int]]:
        """The batches due at ``now`` (full ones first, then a partial one if it is due)."""
        batches = []
        while len(self.waiting) >= self.size:
            batches.append(self.waiting[: self.size])
            self.waiting = self.waiting[self.size :]
            self.since = now if self.waiting else None
        due = self.since is not None and now - self.since >= self.wait_s
        if self.waiting and (closed or due):
            batches.append(self.waiting)
            self.waiting, self.since = [], None
        return batches

    def wait_for(self, now: float) -> float | None:
        """Seconds until the waiting items are due (None: nothing waits)."""
        if self.since is None:
            return None
        return max(0.0, self.since + self.wait_s - now)
