"""The job ledger: which shards a job has and which are committed, kept in a Store.

Layout under ``jobs/<job_id>/``:

- ``ledger.json``: config hash, the video ids of every shard, the content digest of every video
  (uri and questions) and the hash of the inputs the plan was made from; created once
  (put_if_absent), replaced only by an inputs update (compare-and-swap, under the job's lease);
- ``shards/<shard_id>.done``: the commit marker of a shard, with its stats (put_if_absent, so a
  retried or concurrent commit of the same shard is a no-op);
- ``stats/<shard_id>~v<videos>~r<rows>~f<failed>[~<code>.<count>...]``: an empty object whose
  *name* repeats a committed shard's stats, written after its marker, so progress is one paginated
  listing (a few requests per thousands of shards) instead of one GET per marker; a shard whose
  stats object is missing (the driver stopped between the two writes) is read from its marker;
- ``attempts/<shard_id>/<n>``: one object per processing attempt of a shard.

Shard ids are ``f"{index:06d}"`` of the shard in the ledger's list. An update appends shards for
new videos, drops removed videos from pending shards and never changes a committed shard.
Ledgers of format 1 (no digests) are read too: their inputs are compared by video id only, and
their first run stores the digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..storage.base import Store, StoreUnavailable
from .failures import UsageError

LEDGER_FORMAT = 2
EXAMPLES = 3  # ids shown per kind of change in a message
SUMMARY_EXAMPLES = 100  # ids listed per kind of change in a summary
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class LedgerConflict(UsageError):
    """The job exists with another configuration."""


class InputsChanged(LedgerConflict):
    """The job exists with other inputs (and no ``--update``, or one that cannot apply)."""


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it can name a job folder, else raise ValueError."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(
            f"invalid job id {job_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return job_id


def ledger_key(job_id: str) -> str:
    """The key of ``job_id``'s ledger."""
    return f"jobs/{check_job_id(job_id)}/ledger.json"


def plan_shards(video_ids: list[str], shard_size: int) -> list[list[str]]:
    """Consecutive chunks of ``shard_size`` ids, in the given order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if len(set(video_ids)) != len(video_ids):
        raise ValueError("video ids must be unique")
    return [list(video_ids[i : i + shard_size]) for i in range(0, len(video_ids), shard_size)]


_CODE = re.compile(r"[a-z0-9_]{1,40}")
MAX_STATS_NAME = 200


def stats_name(
    shard_id: str, videos: int, rows: int, failed: int, counters: dict[str, int]
) -> str | None:
    """The listing-only stats record of a committed shard, or None when its counters cannot be
    spelled in a short key (then progress reads the marker)."""
    parts = [shard_id, f"v{videos}", f"r{rows}", f"f{failed}"]
    for code, count in sorted(counters.items()):
        if not _CODE.fullmatch(str(code)) or not isinstance(count, int) or count < 0:
            return None
        parts.append(f"{code}.{count}")
    name = "~".join(parts)
    return name if len(name) <= MAX_STATS_NAME else None


def parse_stats_name(name: str) -> dict[str, Any] | None:
    """The stats a :func:`stats_name` holds (``shard_id``, ``videos``, ``rows``, ``failed``,
    ``counters``), or None for a name that is not one."""
    shard_id, *fields = name.split("~")
    if len(fields) < 3 or [f[:1] for f in fields[:3]] != ["v", "r", "f"]:
        return None
    try:
        videos, rows, failed = (int(f[1:]) for f in fields[:3])
        counters = {}
        for field in fields[3:]:
            code, _, count = field.rpartition(".")
            if not _CODE.fullmatch(code):
                return None
            counters[code] = int(count)
    except ValueError:
        return None
    return {"shard_id": shard_id, "videos": videos, "rows": rows, "failed": failed,
            "counters": counters}  # fmt: skip


def shard_id_for(index: int) -> str:
    """The id of the shard at ``index`` of the ledger's list."""
    return f"{index:06d}"


def video_digest(uri: str, questions: Iterable[tuple[str, str]]) -> str:
    """16 hex digits identifying what a video's rows are made from: its uri and its questions
    (``(question_id, text)`` pairs)."""
    canonical = json.dumps([uri, [list(q) for q in questions]], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def inputs_hash(videos: dict[str, str]) -> str:
    """sha256 (hex) of the sorted ``video_id -> digest`` pairs: the identity of a job's inputs."""
    canonical = json.dumps(sorted(videos.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _some(ids: Iterable[str], limit: int) -> str:
    ids = list(ids)
    shown = ", ".join(repr(v) for v in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


@dataclass(frozen=True)
class InputsDiff:
    """How a job's inputs differ from those of its plan (ids in input / plan order)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # same id, other uri or questions

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        """E.g. ``2 added ('v7', 'v8'), 1 removed ('v3')``."""
        parts = [
            f"{len(ids)} {name} ({_some(ids, EXAMPLES)})"
            for name, ids in (("added", self.added), ("removed", self.removed),
                              ("changed", self.changed))
            if ids
        ]  # fmt: skip
        return ", ".join(parts) or "no change"


@dataclass(frozen=True)
class PlanUpdate:
    """What an inputs update did to a job's plan."""

    added: tuple[str, ...]  # videos planned in new shards
    new_shards: tuple[str, ...]
    removed: tuple[str, ...]  # videos no longer in the inputs (rows already committed stay)
    dropped: tuple[str, ...]  # the removed videos that were still pending: never processed
    changed: tuple[str, ...]  # pending videos now processed with their new uri or questions

    def summary(self) -> dict[str, Any]:
        """Counts and up to :data:`SUMMARY_EXAMPLES` ids of each kind, for the job summary."""
        out: dict[str, Any] = {"new_shards": list(self.new_shards)}
        for name in ("added", "removed", "dropped", "changed"):
            ids = getattr(self, name)
            out[f"{name}_videos"] = len(ids)
            out[f"{name}_examples"] = list(ids[:SUMMARY_EXAMPLES])
        return out


class Ledger:
    """One job's shard plan and commit state; every method reads or writes the store."""

    def __init__(
        self,
        store: Store,
        job_id: str,
        config_hash: str,
        shards: list[list[str]],
        digests: list[list[str]] | None = None,
        removed: Iterable[str] = (),
        version: str | None = None,
    ) -> None:
        self.store = store
        self.job_id = check_job_id(job_id)
        self.config_hash = config_hash
        self.plan_update: PlanUpdate | None = None  # set when opening updated the inputs
        self._set_plan(shards, digests, removed, version)

    def _set_plan(
        self,
        shards: list[list[str]],
        digests: list[list[str]] | None,
        removed: Iterable[str],
        version: str | None,
    ) -> None:
        self.shards = shards
        self.digests = digests  # parallel to shards; None for a format 1 ledger
        self.removed = set(removed)  # ids of committed shards no longer in the inputs
        self.version = version  # of ledger.json as read, for a compare-and-swap update
        self._index = {shard_id_for(i): i for i in range(len(shards))}

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}"

    @property
    def key(self) -> str:
        return ledger_key(self.job_id)

    def _record(self) -> bytes:
        videos = self.videos()
        record = {
            "format": LEDGER_FORMAT,
            "job_id": self.job_id,
            "config_hash": self.config_hash,
            "inputs_hash": inputs_hash(videos) if self.digests is not None else None,
            "written_at": time.time(),
            "shards": self.shards,
            "digests": self.digests,
            "removed": sorted(self.removed),
        }
        return json.dumps(record, ensure_ascii=False).encode()

    @classmethod
    def open_or_create(
        cls,
        store: Store,
        job_id: str,
        config_hash: str,
        shards: list[list[str]],
        digests: list[list[str]] | None = None,
        *,
        update: bool = False,
        shard_size: int | None = None,
    ) -> Ledger:
        """Create the job's ledger from the planned ``shards`` of its inputs (with each video's
        :func:`video_digest` in ``digests``, parallel to them), or resume the existing one.

        Raises LedgerConflict if the job exists with another configuration hash, and
        InputsChanged if it exists with other inputs, unless ``update``: then new videos are
        planned in new shards of ``shard_size`` (default: the largest of ``shards``) and
        removed ones leave the pending shards (see :meth:`update`).
        """
        if digests is None:
            digests = [[""] * len(s) for s in shards]
        ledger = cls(store, job_id, config_hash, [list(s) for s in shards], digests)
        if store.put_if_absent(ledger.key, ledger._record()):
            return ledger
        existing = cls.load(store, job_id)
        if existing.config_hash != config_hash:
            raise LedgerConflict(
                f"job {job_id} was created with a different configuration "
                f"(hash {existing.config_hash[:12]}, now {config_hash[:12]}); "
                "use a new --job-id or the same settings"
            )
        current = ledger.videos()
        diff = existing.diff(current)
        if diff and not update:
            raise InputsChanged(
                f"job {job_id} was planned from other inputs: {diff.describe()}; rerun with "
                "--update to plan the added videos in new shards (committed results stay, "
                "removed videos are reported and not processed), or use a new --job-id"
            )
        if diff or existing.digests is None:  # a format 1 ledger stores the digests once
            size = shard_size or max((len(s) for s in shards), default=1)
            done = existing.update(current, size, diff)
            existing.plan_update = done if diff else None
        return existing

    @classmethod
    def load(cls, store: Store, job_id: str) -> Ledger:
        """The existing ledger of ``job_id``; KeyError if there is none."""
        key = ledger_key(job_id)
        stored = store.get_versioned(key)
        try:
            record = json.loads(stored.data)
            hash_, shards = record["config_hash"], record["shards"]
            digests, removed = record.get("digests"), record.get("removed", [])
            if not all(isinstance(s, list) and all(isinstance(v, str) for v in s) for s in shards):
                raise TypeError("shards must be lists of video ids")
            if digests is not None and [len(d) for d in digests] != [len(s) for s in shards]:
                raise TypeError("digests must match the shards")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"ledger {key} in {store.url} is corrupt: {exc!r}") from None
        return cls(store, job_id, hash_, shards, digests, removed, stored.version)

    def videos(self) -> dict[str, str]:
        """``video_id -> digest`` of the planned videos still in the inputs, in plan order
        (digest ``""`` when unknown)."""
        digests = self.digests or [[""] * len(s) for s in self.shards]
        return {
            video: digest
            for shard, shard_digests in zip(self.shards, digests, strict=True)
            for video, digest in zip(shard, shard_digests, strict=True)
            if video not in self.removed
        }

    def diff(self, current: dict[str, str]) -> InputsDiff:
        """How ``current`` (``video_id -> digest``, in input order) differs from the plan."""
        planned = self.videos()
        return InputsDiff(
            added=tuple(v for v in current if v not in planned),
            removed=tuple(v for v in planned if v not in current),
            changed=tuple(
                v
                for v, digest in current.items()
                if v in planned and "" not in (digest, planned[v]) and planned[v] != digest
            ),
        )

    def update(self, current: dict[str, str], shard_size: int, diff: InputsDiff) -> PlanUpdate:
        """Make the plan follow ``current``, replacing ledger.json (compare-and-swap).

        Committed shards never change: their removed videos are only recorded as removed, and a
        video changed after its shard was committed (or removed, then back with other content)
        is refused with InputsChanged. Pending shards lose their removed videos (one left empty
        is committed with no rows) and process changed ones with their new uri or questions. New
        videos are planned in new shards, numbered after the last one.
        """
        committed = self.committed()
        where: dict[str, tuple[int, int]] = {
            v: (i, j) for i, shard in enumerate(self.shards) for j, v in enumerate(shard)
        }
        digests = self.digests or [[""] * len(s) for s in self.shards]
        stale = [
            v
            for v in (*diff.changed, *diff.added)
            if v in where
            and shard_id_for(where[v][0]) in committed
            and digests[where[v][0]][where[v][1]] not in (current[v], "")
        ]
        if stale:
            raise InputsChanged(
                f"job {self.job_id}: {len(stale)} videos changed after their shard was committed "
                f"({_some(stale, EXAMPLES)}): their rows are of the old uri or questions; give "
                "them new video ids, or use a new --job-id"
            )
        shards, new_digests, removed = [], [], set(self.removed)
        dropped: list[str] = []
        for i, (shard, shard_digests) in enumerate(zip(self.shards, digests, strict=True)):
            if shard_id_for(i) in committed:
                shards.append(shard)
                kept = zip(shard, shard_digests, strict=True)
                new_digests.append([current.get(v, d) or d for v, d in kept])
                removed |= {v for v in shard if v not in current}
                removed -= {v for v in shard if v in current}
                continue
            dropped += [v for v in shard if v not in current]
            shards.append([v for v in shard if v in current])
            new_digests.append([current[v] for v in shards[-1]])
        fresh = plan_shards([v for v in diff.added if v not in where], shard_size)
        first_new = len(shards)
        shards += fresh
        new_digests += [[current[v] for v in shard] for shard in fresh]
        planned = Ledger(self.store, self.job_id, self.config_hash, shards, new_digests, removed)
        version = self.store.put_if_version(self.key, planned._record(), self.version or "")
        if version is None:
            raise LedgerConflict(
                f"the ledger of job {self.job_id} changed while it was being updated; rerun"
            )
        self._set_plan(shards, new_digests, removed, version)
        for shard_id in self.pending():
            if not self.shard_videos(shard_id):  # every video of it was removed
                self.commit(shard_id, rows=0, failed=0, counters={})
        return PlanUpdate(
            added=tuple(v for shard in fresh for v in shard),
            new_shards=tuple(shard_id_for(first_new + i) for i in range(len(fresh))),
            removed=diff.removed,
            dropped=tuple(dropped),
            changed=tuple(v for v in diff.changed if shard_id_for(where[v][0]) not in committed),
        )

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
        if not self.store.put_if_absent(self._marker(shard_id), json.dumps(marker).encode()):
            return False
        name = stats_name(shard_id, videos, rows, failed, counters)
        if name is not None:
            # the marker is the commit; a stats object that could not be written is read back
            # from the marker (one GET) by progress()
            with contextlib.suppress(StoreUnavailable, OSError):
                self.store.put(f"{self.prefix}/stats/{name}", b"")
        return True

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
        listed = {}
        for key in self.store.list(f"{self.prefix}/stats/"):
            parsed = parse_stats_name(key.rpartition("/")[2])
            if parsed is not None:
                listed[parsed["shard_id"]] = parsed
        rows = failed = 0
        counters: dict[str, int] = {}
        for shard_id in done:
            info = listed.get(shard_id) or self.commit_info(shard_id) or {}
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
