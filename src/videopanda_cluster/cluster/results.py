"""The result contract: the row type, its Arrow schema and the one reader of a job's results.

Layout of a job's results (``jobs/<job_id>/results/``, keys from :mod:`..jobs.layout`)::

    parquet/shard-<n>.parquet   every shard, always; only Parquet files in this folder
    jsonl/shard-<n>.jsonl       the same rows as JSON lines, when ``results_jsonl`` is set

Every Parquet file has exactly :data:`RESULT_SCHEMA` (nested fields are structs and lists,
never JSON strings), whatever its rows: a shard of error rows only reads together with the others
in pyarrow.dataset, pandas, DuckDB, Spark or Hugging Face ``datasets``. ``schema_version`` is
:data:`SCHEMA_VERSION`; it changes whenever a field is added, removed or retyped.

Jobs written before the contract kept ``results/shard-<n>.jsonl`` (trusted) next to a Parquet
file of JSON strings; :func:`read_results` still reads their JSONL files, as rows of
``schema_version`` 0. Shards of an earlier version read as :data:`RESULT_SCHEMA` too, the fields
added since null, keeping their ``schema_version``:

- 1: before backends; version 2 added ``model.backend`` and ``model.fingerprint`` (the backend
  that answered and its :meth:`~..backends.VideoBackend.fingerprint`) and
  ``provenance.frame_size`` (frames handed over as decoded; ``valid_box``, ``token_grid``,
  ``tokens_per_frame`` and ``input_size`` are null for them).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..jobs.layout import results_prefix

if TYPE_CHECKING:
    from ..storage.base import Store

SCHEMA_VERSION = 2
LEGACY_SCHEMA_VERSION = 0  # rows read from the JSONL files of jobs written before the contract


@dataclass
class Timings:
    """Seconds each stage spent on the row's video (generate: per prompt of its batch)."""

    decode_s: float | None = None
    encode_s: float | None = None
    generate_s: float | None = None


@dataclass
class Workers:
    """The Ray worker (``node:pid``) of each stage."""

    decode: str | None = None
    encode: str | None = None
    generate: str | None = None


@dataclass
class ResultRow:
    """One result row: per (video, question) for QA, per video for captions and features.

    Nested fields are dicts in the pipeline: ``provenance`` (``Provenance.to_dict()``),
    ``model`` (id, checkpoint_hash, backend, fingerprint), ``generation`` (the generation
    options, None for features),
    ``timings`` (:class:`Timings`), ``workers`` (:class:`Workers`). ``error`` is a
    :class:`~videopanda_cluster.video.errors.Reason` value when ``status`` is ``"error"``.
    """

    job_id: str
    kind: str
    video_id: str
    question_id: str | None = None
    question: str | None = None
    prompt: str | None = None
    answer: str | None = None
    status: str | None = None
    error: str | None = None
    message: str | None = None
    uri: str | None = None
    content_hash: str | None = None
    provenance: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, Any] = field(default_factory=dict)
    feature_cache_hit: bool | None = None
    feature_key: str | None = None
    decode_skipped: bool | None = None


ROW_FIELDS = tuple(f.name for f in fields(ResultRow))

_INTS = pa.list_(pa.int64())
PROVENANCE = pa.struct(
    [
        ("num_frames", pa.int64()),
        ("fps", pa.float64()),
        ("duration", pa.float64()),
        ("sampled_indices", _INTS),
        ("sampled_pts", pa.list_(pa.float64())),
        ("source_size", _INTS),
        ("valid_box", _INTS),
        ("token_grid", _INTS),
        ("tokens_per_frame", pa.int64()),
        ("padded_frames", pa.int64()),
        ("flipped", pa.bool_()),
        ("rotation", pa.int64()),
        ("rotated", pa.bool_()),
        ("codec", pa.string()),
        ("container", pa.string()),
        ("decoder", pa.string()),
        ("input_size", pa.int64()),
        ("frame_size", _INTS),
        ("visual_tokens", pa.int64()),
    ]
)
MODEL = pa.struct(
    [
        ("id", pa.string()),
        ("checkpoint_hash", pa.string()),
        ("backend", pa.string()),
        ("fingerprint", pa.string()),
    ]
)
GENERATION = pa.struct(
    [
        ("max_new_tokens", pa.int64()),
        ("do_sample", pa.bool_()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("top_k", pa.int64()),
        ("seed", pa.int64()),
        ("attention", pa.string()),
    ]
)
TIMINGS = pa.struct([(f.name, pa.float64()) for f in fields(Timings)])
WORKERS = pa.struct([(f.name, pa.string()) for f in fields(Workers)])
_NESTED = {
    "provenance": PROVENANCE,
    "model": MODEL,
    "generation": GENERATION,
    "timings": TIMINGS,
    "workers": WORKERS,
}
_BOOLS = {"feature_cache_hit", "decode_skipped"}
_REQUIRED = {"job_id", "kind", "video_id", "status"}

RESULT_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        *(
            pa.field(
                name,
                _NESTED.get(name, pa.bool_() if name in _BOOLS else pa.string()),
                nullable=name not in _REQUIRED,
            )
            for name in ROW_FIELDS
        ),
    ],
    metadata={"videopanda.schema_version": str(SCHEMA_VERSION)},
)


def _unknown_keys(value: Any, type_: pa.DataType, where: str) -> list[str]:
    if not isinstance(value, dict) or not pa.types.is_struct(type_):
        return []
    names = {type_.field(i).name: type_.field(i).type for i in range(type_.num_fields)}
    unknown = [f"{where}.{k}" for k in value if k not in names]
    for k, v in value.items():
        if k in names:
            unknown += _unknown_keys(v, names[k], f"{where}.{k}")
    return unknown


def to_table(rows: list[dict[str, Any]], version: int = SCHEMA_VERSION) -> pa.Table:
    """The rows as a table of exactly :data:`RESULT_SCHEMA`.

    Raises ValueError for a field the contract does not know (at any depth): the schema, and
    :data:`SCHEMA_VERSION`, must change first.
    """
    row_type = pa.struct(list(RESULT_SCHEMA))
    for row in rows:
        unknown = _unknown_keys(row, row_type, "row")
        if unknown:
            raise ValueError(f"result row fields not in the schema: {', '.join(unknown)}")
    return pa.Table.from_pylist(
        [{**row, "schema_version": version} for row in rows], schema=RESULT_SCHEMA
    )


def to_parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(to_table(rows), buf)
    return buf.getvalue()


def to_jsonl(rows: list[dict[str, Any]]) -> bytes:
    lines = (json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    return "".join(lines).encode("utf-8")


def _shard_id(key: str, suffix: str) -> str:
    return key.rsplit("/", 1)[-1].removeprefix("shard-").removesuffix(suffix)


def iter_results(store: Store, job_id: str) -> Iterator[pa.RecordBatch]:
    """The record batches of every committed shard of the job, in shard order.

    Only shards written to the store are read; a shard's files are written before the ledger
    commits it, so a running job may show a shard not yet committed (never a partial one).
    """
    import pyarrow.parquet as pq

    prefix = results_prefix(job_id)
    shards: dict[str, tuple[str, str]] = {}
    for key in store.list(f"{prefix}/"):
        rest = key[len(prefix) + 1 :]
        if rest.startswith("parquet/shard-") and rest.endswith(".parquet"):
            shards[_shard_id(key, ".parquet")] = ("parquet", key)
        elif "/" not in rest and rest.startswith("shard-") and rest.endswith(".jsonl"):
            shards.setdefault(_shard_id(key, ".jsonl"), ("legacy", key))
    for shard_id in sorted(shards):
        layout, key = shards[shard_id]
        if layout == "parquet":
            table = _current(pq.read_table(io.BytesIO(store.get(key))))
        else:
            lines = store.get(key).decode("utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
            table = to_table(rows, LEGACY_SCHEMA_VERSION) if rows else None
        if table is not None:
            yield from table.to_batches()


def _current(table: pa.Table) -> pa.Table:
    """A shard's table as :data:`RESULT_SCHEMA`: a shard of an earlier version gets the fields
    added since as nulls (its rows keep their ``schema_version``)."""
    if table.schema.equals(RESULT_SCHEMA, check_metadata=False):
        return table.replace_schema_metadata(RESULT_SCHEMA.metadata)
    return pa.Table.from_pylist(table.to_pylist(), schema=RESULT_SCHEMA)


def read_results(store: Store, job_id: str) -> pa.Table:
    """Every result row of the job as one table of :data:`RESULT_SCHEMA`, in shard order."""
    return pa.Table.from_batches(list(iter_results(store, job_id)), schema=RESULT_SCHEMA)
