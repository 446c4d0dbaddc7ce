"""The result contract: rows built by the pipeline's row builders round-trip through the writer
and the reader with exactly RESULT_SCHEMA, all-error shards included; old layouts still read."""

from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from videopanda_cluster.cluster.results import (
    LEGACY_SCHEMA_VERSION,
    RESULT_SCHEMA,
    ROW_FIELDS,
    SCHEMA_VERSION,
    iter_results,
    read_results,
    to_table,
)
from videopanda_cluster.cluster.rows import answer_row, error_rows, feature_row, no_question_row
from videopanda_cluster.cluster.stages import WriterWorker
from videopanda_cluster.eval.run import read_result_rows
from videopanda_cluster.jobs.layout import parquet_key, results_prefix
from videopanda_cluster.storage import LocalStore
from videopanda_cluster.video.errors import Reason
from videopanda_cluster.video.extract import Provenance

JOB = {
    "job_id": "j1",
    "kind": "qa",
    "model": {
        "id": "tiny", "checkpoint_hash": "ab" * 32, "backend": "videopanda",
        "fingerprint": "videopanda/0.1",
    },
    "generation": {
        "max_new_tokens": 6, "do_sample": False, "temperature": None, "top_p": None,
        "top_k": None, "seed": 0, "attention": "eager",
    },
}  # fmt: skip
PROVENANCE = Provenance(
    num_frames=8, fps=25.0, duration=2.4, sampled_indices=[0, 8, 16], sampled_pts=[0.0, 0.32, 0.64],
    source_size=[64, 48], valid_box=[0, 28, 224, 196], token_grid=[8, 8], tokens_per_frame=73,
    padded_frames=5, flipped=False, rotation=90, rotated=True, codec="h264", container="mp4",
    decoder="pyav", input_size=224,
).to_dict()  # fmt: skip


def decoded(video_id: str, **extra) -> dict:
    return {
        "video_id": video_id, "uri": f"/videos/{video_id}.mp4", "content_hash": "cd" * 32,
        "provenance": PROVENANCE, "decode_s": 0.25, "decode_worker": "n1:12", **extra,
    }  # fmt: skip


ENCODED = {"encode_s": 0.5, "encode_worker": "n1:13", "cache_hit": False, "feature_key": "k1"}


def ok_rows() -> list[dict]:
    answer = {
        "question_id": "q1", "question": "what?", "prompt": "<video> what?", "answer": "a dog",
        "generate_s": 0.75, "generate_worker": "n2:14",
    }  # fmt: skip
    refused = {**answer, "question_id": "q2", "answer": None, "error": "question_too_long"}
    refused["message"] = "too long"
    return [
        answer_row(JOB, decoded("v1"), ENCODED, answer),
        answer_row(JOB, decoded("v1"), ENCODED, refused),
        feature_row({**JOB, "kind": "features"}, decoded("v2", decode_skipped=True), ENCODED),
    ]


def error_only_rows() -> list[dict]:
    bad = decoded("bad", error=Reason.TRUNCATED.value, message="truncated", provenance=None)
    return [
        *error_rows(JOB, bad, [{"question_id": "q1", "question": "what?"}]),
        no_question_row(JOB, "none", "/videos/none.mp4"),
    ]


def write(tmp_path, shards: dict[str, list[dict]]) -> LocalStore:
    writer = WriterWorker(str(tmp_path))
    for shard_id, rows in shards.items():
        writer.write(results_prefix("j1"), shard_id, rows)
    return LocalStore(tmp_path)


def test_schema_is_the_row_type():
    assert RESULT_SCHEMA.names == ["schema_version", *ROW_FIELDS]
    provenance = RESULT_SCHEMA.field("provenance").type
    assert sorted(provenance.field(i).name for i in range(provenance.num_fields)) == sorted(
        [*(f.name for f in fields(Provenance)), "visual_tokens"]
    )
    for name in ("status", "error", "message", "question_id"):
        assert str(RESULT_SCHEMA.field(name).type) == "string"


def test_ok_and_all_error_shards_round_trip_with_one_schema(tmp_path):
    given = {"0000": ok_rows(), "0001": error_only_rows()}
    store = write(tmp_path, given)
    folder = tmp_path / "jobs" / "j1" / "results" / "parquet"
    assert sorted(p.name for p in folder.iterdir()) == ["shard-0000.parquet", "shard-0001.parquet"]
    for shard_id in given:  # each file, the all-error one too, has the schema (no null types)
        data = store.get(parquet_key(results_prefix("j1"), shard_id))
        assert pq.read_schema(io.BytesIO(data)).remove_metadata() == RESULT_SCHEMA.remove_metadata()
    table = read_results(store, "j1")
    assert table.schema == RESULT_SCHEMA
    assert set(table.column("schema_version").to_pylist()) == {SCHEMA_VERSION}
    batches = list(iter_results(store, "j1"))  # shard by shard, for jobs larger than memory
    assert [b.num_rows for b in batches] == [3, 2] and batches[1].schema == RESULT_SCHEMA
    back = read_result_rows(store, "j1")
    assert [{k: v for k, v in r.items() if k != "schema_version"} for r in back] == [
        *given["0000"],
        *given["0001"],
    ]
    assert back[0]["provenance"]["sampled_pts"] == [0.0, 0.32, 0.64]
    assert back[0]["timings"] == {"decode_s": 0.25, "encode_s": 0.5, "generate_s": 0.75}
    assert not (tmp_path / "jobs" / "j1" / "results" / "jsonl").exists()


def test_jsonl_is_an_optional_second_copy_in_its_own_folder(tmp_path):
    WriterWorker(str(tmp_path), jsonl=True).write(results_prefix("j1"), "0000", ok_rows())
    results = tmp_path / "jobs" / "j1" / "results"
    assert sorted(p.name for p in results.iterdir()) == ["jsonl", "parquet"]
    lines = (results / "jsonl" / "shard-0000.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == ok_rows()


def test_a_field_outside_the_contract_is_refused():
    row = ok_rows()[0]
    with pytest.raises(ValueError, match=r"row\.provenance\.new_field"):
        to_table([{**row, "provenance": {**PROVENANCE, "new_field": 1}}])
    with pytest.raises(ValueError, match=r"row\.extra"):
        to_table([{**row, "extra": 1}])


def test_jobs_written_before_the_contract_still_read(tmp_path):
    """Old layout: results/shard-<n>.jsonl (trusted) beside a Parquet of JSON strings."""
    store = LocalStore(tmp_path)
    old = error_only_rows()
    for row in old:  # old rows had only the timings and workers of the stages they ran
        row["timings"], row["workers"] = {"decode_s": 0.25}, {"decode": "n1:12"}
    lines = "".join(json.dumps(r) + "\n" for r in old)
    store.put("jobs/j1/results/shard-0000.jsonl", lines.encode())
    store.put("jobs/j1/results/shard-0000.parquet", b"not the contract")
    WriterWorker(str(tmp_path)).write(results_prefix("j1"), "0001", ok_rows())  # resumed after
    table = read_results(store, "j1")
    assert table.schema == RESULT_SCHEMA
    versions = table.column("schema_version").to_pylist()
    assert versions == [LEGACY_SCHEMA_VERSION] * 2 + [SCHEMA_VERSION] * 3
    rows = table.to_pylist()
    assert rows[0]["timings"] == {"decode_s": 0.25, "encode_s": None, "generate_s": None}
    assert rows[0]["error"] == Reason.TRUNCATED.value


V1_SHARD = Path(__file__).parent / "data" / "results-v1-shard.parquet"  # written by version 1


def test_version_1_shards_read_with_the_new_fields_null(tmp_path):
    """A shard written before backends (schema 1: no model.backend/fingerprint, no
    provenance.frame_size) reads beside a version-2 shard as one table of RESULT_SCHEMA."""
    v1 = pq.read_table(V1_SHARD)
    assert v1.schema.metadata[b"videopanda.schema_version"] == b"1"
    assert "backend" not in v1.schema.field("model").type.names
    store = LocalStore(tmp_path)
    store.put(parquet_key(results_prefix("j1"), "0000"), V1_SHARD.read_bytes())
    WriterWorker(str(tmp_path)).write(results_prefix("j1"), "0001", ok_rows())  # resumed after
    table = read_results(store, "j1")
    assert table.schema == RESULT_SCHEMA
    assert table.column("schema_version").to_pylist() == [1, 1] + [SCHEMA_VERSION] * 3
    old, new = table.slice(0, 2).to_pylist(), table.slice(2).to_pylist()
    assert old[0]["model"] == {
        "id": "tiny", "checkpoint_hash": "ab" * 32, "backend": None, "fingerprint": None
    }  # fmt: skip
    assert old[0]["provenance"]["frame_size"] is None
    assert old[0]["provenance"]["valid_box"] == [0, 28, 224, 196]
    assert (old[0]["answer"], old[1]["error"]) == ("a dog", Reason.TRUNCATED.value)
    assert {k: v for k, v in old[0].items() if k not in ("model", "provenance")} == {
        k: v for k, v in v1.to_pylist()[0].items() if k not in ("model", "provenance")
    }
    assert new[0]["model"]["backend"] == "videopanda"
    assert SCHEMA_VERSION == 2


def test_rows_of_frames_as_decoded_take_the_encoders_token_count():
    """Native frames have no letterbox: the provenance has no box or grid, and the row's visual
    token count is the one the encoder reported."""
    native = {
        **PROVENANCE, "valid_box": None, "token_grid": None, "tokens_per_frame": None,
        "input_size": None, "frame_size": [64, 48], "visual_tokens": None, "padded_frames": 0,
    }  # fmt: skip
    answer = {
        "question_id": "q1", "question": "what?", "prompt": "p", "answer": "a",
        "generate_s": 0.1, "generate_worker": "n2:14",
    }  # fmt: skip
    row = answer_row(
        JOB, decoded("v1", provenance=native), {**ENCODED, "visual_tokens": 96}, answer
    )
    assert row["provenance"]["visual_tokens"] == 96 and native["visual_tokens"] is None
    kept = answer_row(JOB, decoded("v1"), {**ENCODED, "visual_tokens": 96}, answer)
    assert kept["provenance"]["visual_tokens"] == PROVENANCE["visual_tokens"]  # the decoder's
    assert to_table([row]).column("provenance").to_pylist()[0]["frame_size"] == [64, 48]
