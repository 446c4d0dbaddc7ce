"""The job ledger: which shards a job has and which are committed, kept in a Store.

Layout under ``jobs/<job_id>/``:

- ``ledger.json``: config hash and the video ids of every shard, written once (put_if_absent);
- ``shards/<shard_id>.done``: the commit marker of a shard, with its stats (put_if_absent, so a
  retried or concurrent commit of the same shard is a no-op);
- ``attempts/<shard_id>/<n>``: one object per processing attempt of a shard.

Shard ids are ``f"{index:06d}"`` of the shard in the ledger's list.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from ..storage.base import Store
from .failures import UsageError

LEDGER_FORMAT = 1
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class LedgerConflict(UsageError):
    """The job exists with another configuration."""


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it can name a job folder, else raise ValueError."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(
            f"invalid job id {job_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return job_id


def plan_shards(video_ids: list[str], shard_size: int) -> list[list[str]]:
    """Consecutive chunks of ``shard_size`` ids, in the given order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if len(set(video_ids)) != len(video_ids):
        raise ValueError("video ids must be unique")
    return [list(video_ids[i : i + shard_size]) for i in range(0, len(video_ids), shard_size)]


def shard_id_for(index: int) -> str:
    """The id of the shard at ``index`` of the ledger's list."""
    return f"{index:06d}"


class Ledger:
    """One job's shard plan and commit state; every method reads or writes the store."""

    def __init__(
        self, store: Store, job_id: str, config_hash: str, shards: list[list[str]]
    ) -> None:
        self.store = store
        self.job_id = check_job_id(job_id)
        self.config_hash = config_hash
        self.shards = shards
        self._index = {shard_id_for(i): i for i in range(len(shards))}

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}"

    @property
    def key(self) -> str:
        return f"{self.prefix}/ledger.json"

    @classmethod
    def open_or_create(
        cls, store: Store, job_id: str, config_hash: str, shards: list[list[str]]
    ) -> Ledger:
        """Create the job's ledger, or resume it (its own shard list) if the hash matches.

        Raises LedgerConflict if the job exists with another configuration hash.
        """
        ledger = cls(store, job_id, config_hash, [list(s) for s in shards])
        record = {
            "format": LEDGER_FORMAT,
            "job_id": job_id,
            "config_hash": config_hash,
            "created_at": time.time(),
            "shards": ledger.shards,
        }
        if store.put_if_absent(ledger.key, json.dumps(record, ensure_ascii=False).encode()):
            return ledger
        existing = cls.load(store, job_id)
        if existing.config_hash != config_hash:
            raise LedgerConflict(
                f"job {job_id} was created with a different configuration "
                f"(hash {existing.config_hash[:12]}, now {config_hash[:12]}); "
                "use a new --job-id or the same settings"
            )
        return existing

    @classmethod
    def load(cls, store: Store, job_id: str) -> Ledger:
        """The existing ledger of ``job_id``; KeyError if there is none."""
        key = f"jobs/{check_job_id(job_id)}/ledger.json"
        data = store.get(key)
        try:
            record = json.loads(data)
            hash_, shards = record["config_hash"], record["shards"]
            if not all(isinstance(s, list) and all(isinstance(v, str) for v in s) for s in shards):
                raise TypeError("shards must be lists of video ids")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"ledger {key} in {store.url} is corrupt: {exc!r}") from None
        return cls(store, job_id, hash_, shards)

    def shard_ids(self) -> list[str]:
        return list(self._index)

    def shard_videos(self, shard_id: str) -> list[str]:
        """The video ids of a shard; ValueError for an id not in this ledger."""
        return self.shards[self._shard_index(shard_id)]

    def _shard_index(self, shard_id: str) -> int:
        try:
            return self._index[shard_id]
        except KeyError:
            raise ValueError(f"job {self.job_id} has no shard {shard_id!r}") from None

    def _marker(self, shard_id: str) -> str:
        return f"{self.prefix}/shards/{shard_id}.done"

    def committed(self) -> set[str]:
        """Ids of the committed shards."""
        done = set()
        for key in self.store.list(f"{self.prefix}/shards/"):
            name = key.rpartition("/")[2]
            if name.endswith(".done") and name[: -len(".done")] in self._index:
                done.add(name[: -len(".done")])
        return done

    def pending(self) -> list[str]:
        """Ids of the shards not committed yet, in order."""
        done = self.committed()
        return [s for s in self._index if s not in done]

    def commit(self, shard_id: str, rows: int, failed: int, counters: dict[str, int]) -> bool:
        """Mark ``shard_id`` done with its stats; False (and nothing changed) if it already was."""
        videos = len(self.shard_videos(shard_id))
        if rows < 0 or failed < 0 or failed > rows:
            raise ValueError(f"shard {shard_id}: need 0 <= failed <= rows, got {failed}, {rows}")
        marker = {
            "shard_id": shard_id,
            "videos": videos,
            "rows": rows,
            "failed": failed,
            "counters": dict(counters),
            "committed_at": time.time(),
        }
        return self.store.put_if_absent(self._marker(shard_id), json.dumps(marker).encode())

    def commit_info(self, shard_id: str) -> dict[str, Any] | None:
        """The marker of a committed shard, None if it is pending."""
        self._shard_index(shard_id)
        try:
            return json.loads(self.store.get(self._marker(shard_id)))
        except KeyError:
            return None

    def progress(self) -> dict[str, Any]:
        """Totals and committed counts of shards and videos, plus rows, failed rows and the
        summed counters of the committed shards."""
        done = sorted(self.committed())
        rows = failed = 0
        counters: dict[str, int] = {}
        for shard_id in done:
            info = self.commit_info(shard_id) or {}
            rows += info.get("rows", 0)
            failed += info.get("failed", 0)
            for name, count in info.get("counters", {}).items():
                counters[name] = counters.get(name, 0) + count
        return {
            "total_shards": len(self.shards),
            "total_videos": sum(len(s) for s in self.shards),
            "committed_shards": len(done),
            "committed_videos": sum(len(self.shards[self._index[s]]) for s in done),
            "rows": rows,
            "failed": failed,
            "counters": dict(sorted(counters.items())),
        }

    def _attempts_prefix(self, shard_id: str) -> str:
        self._shard_index(shard_id)
        return f"{self.prefix}/attempts/{shard_id}/"

    def record_attempt(self, shard_id: str) -> int:
        """Count one more processing attempt of ``shard_id``; returns its number (1, 2, ...)."""
        prefix = self._attempts_prefix(shard_id)
        n = len(self.store.list(prefix)) + 1
        body = json.dumps({"started_at": time.time()}).encode()
        while not self.store.put_if_absent(f"{prefix}{n}", body):  # a concurrent attempt won
            n += 1
        return n

    def attempts(self, shard_id: str) -> int:
        """How many attempts of ``shard_id`` were recorded."""
        return len(self.store.list(self._attempts_prefix(shard_id)))
