"""Where a job keeps its objects in a Store: every key the planner, driver, workers, ``status``
and the feature cache use is made here.

``jobs/<job_id>/``:

``ledger.json``
    The job's ledger (:mod:`.ledger`): config hash, inputs identity, counts, where the plan is.
``lease.json``
    Who runs the job now (:mod:`.lease`).
``plan/<plan_id>/<piece>.parquet``
    The shard plan in pieces (:mod:`.plan`).
``shards/<shard_id>.done``
    A shard's commit marker, with its stats.
``progress/<generation>/<shard_id>~v<videos>~r<rows>~f<failed>[~<code>.<count>...|~m]``
    An empty object whose name repeats a committed shard's stats (:mod:`.progress`).
``progress.json``
    The checkpoint the driver folds those records into.
``stats/<shard_id>~...``
    The same records as earlier versions wrote them (read, never written).
``attempts/<shard_id>/<n>``
    One object per processing attempt of a shard.
``results/parquet/shard-<shard_id>.parquet``, ``results/jsonl/shard-<shard_id>.jsonl``
    The shard's result rows (:mod:`..cluster.results`).
``summary.json``
    The last run's summary.

The feature cache, shared by the jobs of a store: ``features/<sha256>.safetensors`` and its
``.json`` provenance (:mod:`..cluster.features`).
"""

from __future__ import annotations

import re

FEATURES_PREFIX = "features"
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it can name a job folder, else raise ValueError."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(
            f"invalid job id {job_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return job_id


def job_prefix(job_id: str) -> str:
    """``jobs/<job_id>``, the folder of everything below."""
    return f"jobs/{job_id}"


def ledger_key(job_id: str) -> str:
    return f"{job_prefix(check_job_id(job_id))}/ledger.json"


def lease_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}/lease.json"


def summary_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}/summary.json"


def plan_prefix(job_id: str, plan_id: str) -> str:
    return f"{job_prefix(job_id)}/plan/{plan_id}"


def markers_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}/shards/"


def marker_key(job_id: str, shard_id: str) -> str:
    return f"{markers_prefix(job_id)}{shard_id}.done"


def legacy_stats_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}/stats/"


def progress_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}/progress.json"


def stats_prefix(job_id: str, generation: int) -> str:
    return f"{job_prefix(job_id)}/progress/{generation:06d}/"


def stats_key(job_id: str, generation: int, name: str) -> str:
    return f"{stats_prefix(job_id, generation)}{name}"


def attempts_prefix(job_id: str, shard_id: str) -> str:
    return f"{job_prefix(job_id)}/attempts/{shard_id}/"


def results_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}/results"


def parquet_key(prefix: str, shard_id: str) -> str:
    """Key of a shard's Parquet file; ``prefix`` is :func:`results_prefix` of the job."""
    return f"{prefix}/parquet/shard-{shard_id}.parquet"


def jsonl_key(prefix: str, shard_id: str) -> str:
    return f"{prefix}/jsonl/shard-{shard_id}.jsonl"


def feature_key(prefix: str, digest: str) -> str:
    """The cached tokens of a video; ``prefix`` is :data:`FEATURES_PREFIX` unless configured."""
    return f"{prefix}/{digest}.safetensors"
