"""A job's progress in O(1) requests: a checkpoint of the committed shards' stats plus the few
stats records written since.

Each commit writes an empty object ``progress/<generation>/<stats name>`` (see
:func:`~videopanda_cluster.jobs.ledger.stats_name`). The driver folds whole generations into
``progress.json`` (a bitmap of the shards it covers and their summed stats) every
:data:`FOLD_EVERY` commits and at each run's start and end, then writes into the next
generation. A reader takes the checkpoint and lists the generations after it until one is
empty: a few thousand names at most, whatever the job's size. A generation is closed only when
it holds a record, so the ones after a checkpoint are never separated by an empty one.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..storage.base import Store

FOLD_EVERY = 2_000  # commits between two checkpoints during a run


@dataclass
class Totals:
    """Summed stats of a set of committed shards."""

    videos: int = 0
    rows: int = 0
    failed: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def add(self, info: dict[str, Any]) -> None:
        self.videos += info.get("videos", 0)
        self.rows += info.get("rows", 0)
        self.failed += info.get("failed", 0)
        for name, count in info.get("counters", {}).items():
            self.counters[name] = self.counters.get(name, 0) + count


@dataclass
class Checkpoint:
    """``progress.json``: the shards folded so far (a bitmap by shard index) and their totals,
    through stats generation ``generation`` (-1: none yet)."""

    generation: int = -1
    shards: bytearray = field(default_factory=bytearray)
    totals: Totals = field(default_factory=Totals)
    version: str | None = None  # as read, for a compare-and-swap write

    def has(self, index: int) -> bool:
        return index // 8 < len(self.shards) and bool(self.shards[index // 8] >> (index % 8) & 1)

    def add(self, index: int, info: dict[str, Any]) -> None:
        """Fold one committed shard in (once)."""
        if self.has(index):
            return
        if index // 8 >= len(self.shards):
            self.shards.extend(bytes(index // 8 + 1 - len(self.shards)))
        self.shards[index // 8] |= 1 << (index % 8)
        self.totals.add(info)

    def count(self) -> int:
        return sum(bin(b).count("1") for b in self.shards)

    def to_json(self) -> bytes:
        packed = base64.b64encode(zlib.compress(bytes(self.shards))).decode()
        totals = self.totals
        return json.dumps(
            {"generation": self.generation, "shards": packed, "videos": totals.videos,
             "rows": totals.rows, "failed": totals.failed, "counters": totals.counters}
        ).encode()  # fmt: skip

    @classmethod
    def read(cls, store: Store, key: str) -> Checkpoint:
        """The stored checkpoint, or an empty one (a missing or unreadable one is rebuilt)."""
        try:
            stored = store.get_versioned(key)
        except KeyError:
            return cls()
        try:
            data = json.loads(stored.data)
            shards = bytearray(zlib.decompress(base64.b64decode(data["shards"])))
            totals = Totals(data["videos"], data["rows"], data["failed"], dict(data["counters"]))
            return cls(int(data["generation"]), shards, totals, stored.version)
        except (ValueError, KeyError, TypeError, zlib.error):
            return cls(version=stored.version)

    def write(self, store: Store, key: str) -> bool:
        """Store it (compare-and-swap against the version read); False if another won."""
        data = self.to_json()
        if self.version is None:
            return store.put_if_absent(key, data)
        version = store.put_if_version(key, data, self.version)
        if version is None:
            return False
        self.version = version
        return True
