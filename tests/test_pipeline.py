"""The main job end to end on a real local Ray with the local store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.azurite import azurite as azurite_fixture  # noqa: F401
from videopanda_cluster.eval.run import read_result_rows
from videopanda_cluster.jobs.config import build_config

QUESTIONS = ["what colour is the circle?", "which way does the square move?"]


@pytest.fixture(scope="module")
def ray_local(azurite):
    import ray

    # workers inherit the driver's environment: the Azure backend finds Azurite through it
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield ray
    ray.shutdown()


def read_rows(store_dir: Path, job_id: str) -> list[dict]:
    from videopanda_cluster.eval.run import read_result_rows
    from videopanda_cluster.storage.local import LocalStore

    return read_result_rows(LocalStore(store_dir, create=False), job_id)


def job(kind: str, inputs: Path, out: Path, **extra):
    from videopanda_cluster.cluster.driver import run_job

    values = {
        "kind": kind,
        "inputs": str(inputs),
        "output": str(out),
        "shard_size": 4,
        "max_new_tokens": 6,
        "decode_workers": 2,
        "max_in_flight": 3,
        **extra,
    }
    cfg = build_config({}, values)
    return cfg, run_job(cfg)


@pytest.mark.slow
def test_caption_job_rows_errors_and_summary(ray_local, inputs_dir, tmp_path):
    videos = sorted(p for p in inputs_dir.iterdir())
    _, summary = job("caption", inputs_dir, tmp_path)
    rows = read_rows(tmp_path, summary["job_id"])
    assert len(rows) == len(videos) == 16
    by_id = {r["video_id"]: r for r in rows}
    assert len(by_id) == len(rows)  # exactly once
    assert by_id["corrupt_truncated"]["status"] == "error"
    assert by_id["corrupt_truncated"]["error"] == "truncated"
    assert by_id["corrupt_text"]["error"] == "not_a_video"
    assert by_id["corrupt_text"]["answer"] is None
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 14
    for r in ok:
        assert isinstance(r["answer"], str)
        assert r["content_hash"] and len(r["content_hash"]) == 64
        assert r["provenance"]["sampled_indices"] and r["provenance"]["decoder"].startswith("pyav")
        assert r["model"]["checkpoint_hash"] and r["prompt"].endswith("ASSISTANT:")
        assert set(r["timings"]) == {"decode_s", "encode_s", "generate_s"}
        assert all(r["workers"].values())
    assert summary["progress"]["committed_videos"] == 16
    assert summary["this_run"]["failed_rows"] == 2
    assert summary["this_run"]["errors"] == {"truncated": 1, "not_a_video": 1}
    stored = json.loads((tmp_path / "jobs" / summary["job_id"] / "summary.json").read_text())
    assert stored["this_run"]["rows"] == 16
    parquet = sorted((tmp_path / "jobs" / summary["job_id"] / "results" / "parquet").iterdir())
    assert len(parquet) == 4  # 16 videos in shards of 4

    # a rerun finds every shard committed: no new rows, same files
    _, again = job("caption", inputs_dir, tmp_path)
    assert again["this_run"]["shards"] == 0
    assert read_rows(tmp_path, summary["job_id"]) == rows
    # it loaded no model, yet its summary names the backend that made the rows
    assert summary["model"]["fingerprint"] == rows[0]["model"]["fingerprint"] is not None
    assert again["model"] == summary["model"]


@pytest.mark.slow
def test_qa_job_answers_every_question_and_reuses_features(ray_local, inputs_dir, tmp_path):
    _, feats = job("features", inputs_dir, tmp_path)
    frows = read_rows(tmp_path, feats["job_id"])
    assert sum(r["status"] == "ok" for r in frows) == 14
    assert all((tmp_path / r["feature_key"]).is_file() for r in frows if r["status"] == "ok")
    _, summary = job("qa", inputs_dir, tmp_path, questions=QUESTIONS)
    rows = read_rows(tmp_path, summary["job_id"])
    assert len(rows) == 16 * len(QUESTIONS)
    assert len({(r["video_id"], r["question_id"]) for r in rows}) == len(rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 14 * 2 and all(r["feature_cache_hit"] for r in ok)
    assert {r["question"] for r in ok} == set(QUESTIONS)
    # cached videos are hashed, not decoded again; their provenance comes from the cache
    assert all(r["decode_skipped"] for r in ok)
    assert not any(r["decode_skipped"] for r in frows)
    sampled = {r["video_id"]: r["provenance"] for r in frows if r["status"] == "ok"}
    assert all(r["provenance"] == sampled[r["video_id"]] for r in ok)
    # and the answers are those of a job that decodes and encodes everything itself
    _, fresh = job("qa", inputs_dir, tmp_path, questions=QUESTIONS, use_feature_cache=False)
    uncached = {(r["video_id"], r["question_id"]): r for r in read_rows(tmp_path, fresh["job_id"])}
    for r in ok:
        twin = uncached[(r["video_id"], r["question_id"])]
        assert not twin["decode_skipped"] and not twin["feature_cache_hit"]
        assert r["answer"] == twin["answer"] and r["provenance"] == twin["provenance"]


@pytest.mark.slow
def test_same_job_id_with_other_settings_is_refused(ray_local, inputs_dir, tmp_path):
    from videopanda_cluster.jobs.ledger import LedgerConflict

    job("caption", inputs_dir, tmp_path, job_id="fixed")
    with pytest.raises(LedgerConflict, match="fixed"):
        job("caption", inputs_dir, tmp_path, job_id="fixed", max_new_tokens=9)


@pytest.mark.parametrize("kind", ["caption", "qa"])
@pytest.mark.slow
def test_jobs_on_azure_blob(ray_local, inputs_dir, azurite, kind):
    from videopanda_cluster.storage.open import open_store

    url = f"az://results/{kind}-run"
    extra = {"questions": QUESTIONS} if kind == "qa" else {}
    _, summary = job(kind, inputs_dir, url, **extra)  # type: ignore[arg-type]
    per_video = len(QUESTIONS) if kind == "qa" else 1
    store = open_store(url)
    rows = read_result_rows(store, summary["job_id"])
    assert len(rows) == 16 * per_video
    assert len({(r["video_id"], r["question_id"]) for r in rows}) == 16 * per_video
    assert sum(r["status"] == "error" for r in rows) == 2 * per_video
    assert summary["this_run"]["failed_rows"] == 2 * per_video
    assert summary["store"] == url
    text = json.dumps(rows) + store.get(f"jobs/{summary['job_id']}/summary.json").decode()
    assert "AccountKey" not in text and azurite.connection_string not in text


@pytest.mark.slow
def test_status_command_reads_the_ledger(ray_local, inputs_dir, tmp_path):
    from tests.test_cli import _cli

    job("features", inputs_dir, tmp_path, job_id="feat-status")
    out = _cli("status", "feat-status", "--output", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["committed_videos"] == info["total_videos"] == 16
    assert info["committed_shards"] == info["total_shards"] == 4
    assert _cli("status", "no-such-job", "--output", str(tmp_path)).returncode != 0
    assert _cli("status", "../escape", "--output", str(tmp_path)).returncode != 0


@pytest.mark.slow
def test_short_storage_outage_mid_job_loses_nothing(ray_local, inputs_dir, azurite):
    """Azurite stops after the first committed shard and is back 2 s later: the SDK's retries
    carry the job through; every row exists exactly once."""
    import threading
    import time

    from videopanda_cluster.storage.open import open_store

    url = "az://outage/run-1"
    store = open_store(url)
    result: dict = {}

    def run() -> None:
        result["summary"] = job("caption", inputs_dir, url, shard_size=2, max_in_flight=1)[1]  # type: ignore[arg-type]

    thread = threading.Thread(target=run)
    thread.start()
    wait_for_a_commit(store)
    azurite.stop()
    time.sleep(2)
    azurite.start()
    thread.join(timeout=600)
    assert not thread.is_alive()
    job_id = result["summary"]["job_id"]
    rows = read_result_rows(store, job_id)
    assert len(rows) == 16 and len({r["video_id"] for r in rows}) == 16
    assert result["summary"]["progress"]["committed_videos"] == 16


@pytest.mark.slow
def test_long_storage_outage_fails_clearly_and_resumes(ray_local, inputs_dir, azurite):
    import threading

    from videopanda_cluster.cluster.driver import JobFailed
    from videopanda_cluster.jobs.ledger import Ledger
    from videopanda_cluster.storage.open import open_store

    url = "az://outage/run-long"
    store = open_store(url)
    result: dict = {}

    def run() -> None:
        try:
            job(  # type: ignore[arg-type]
                "caption",
                inputs_dir,
                url,
                shard_size=2,
                max_in_flight=1,
                job_id="long-outage",
                store_retry_window=5,
            )
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    wait_for_a_commit(store)
    azurite.stop()
    thread.join(timeout=300)
    azurite.start()
    assert not thread.is_alive()
    error = result.get("error")
    assert isinstance(error, JobFailed), error
    assert "result store unreachable" in str(error) and "rerun to resume" in str(error)
    assert azurite.connection_string not in str(error)
    ledger = Ledger.load(store, "long-outage")
    before = ledger.committed()
    assert before and len(before) < len(ledger.shard_ids())
    _, summary = job(
        "caption", inputs_dir, url, shard_size=2, max_in_flight=1, job_id="long-outage"
    )  # type: ignore[arg-type]
    assert summary["progress"]["committed_videos"] == 16
    assert all(ledger.attempts(s) == 1 for s in before)


def wait_for_a_commit(store, timeout: float = 300) -> None:
    """Block until some shard of some job in ``store`` is committed."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and not any(k.endswith(".done") for k in store.list("jobs/")):
        time.sleep(0.2)
    assert any(k.endswith(".done") for k in store.list("jobs/")), "no shard committed in time"


@pytest.mark.slow
def test_hostile_manifest_ids_stay_data_and_never_become_paths(ray_local, inputs_dir, tmp_path):
    from tests.test_inputs import ACCEPTED_IDS
    from videopanda_cluster.jobs.inputs import InputError

    videos = sorted(p for p in inputs_dir.iterdir() if not p.name.startswith("corrupt"))[:3]
    rows_in = [
        {"video_id": vid, "uri": str(videos[i % len(videos)]), "questions": ["../../what?"]}
        for i, vid in enumerate(ACCEPTED_IDS)
    ]
    rows_in.append({"video_id": "gone", "uri": str(tmp_path / "no" / "such.mp4")})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows_in))
    store = tmp_path / "deep" / "store"
    _, summary = job("qa", manifest, store, questions=["fallback?"], shard_size=5)
    rows = read_rows(store, summary["job_id"])
    assert sorted(r["video_id"] for r in rows) == sorted([*ACCEPTED_IDS, "gone"])
    assert {r["question"] for r in rows if r["video_id"] != "gone"} == {"../../what?"}
    gone = next(r for r in rows if r["video_id"] == "gone")
    assert gone["status"] == "error" and gone["error"] == "not_found"
    assert summary["this_run"]["failed_rows"] == 1
    # every file the job wrote is under the store, in the job's or the cache's folders
    written = [p.relative_to(store) for p in store.rglob("*") if p.is_file()]
    assert {p.parts[0] for p in written} <= {"jobs", "features"}
    assert all(len(part) <= 255 for p in written for part in p.parts)
    outside = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert outside == {"m.jsonl", "deep"}

    # an invalid id (NUL byte, 10 KB name) stops the job before anything is written
    for bad in ("a\x00b", "n" * 10_240):
        manifest.write_text(json.dumps({"video_id": bad, "uri": str(videos[0])}) + "\n")
        with pytest.raises(InputError, match=r"m\.jsonl, line 1: field `video_id`"):
            job("qa", manifest, tmp_path / "refused", questions=["q?"])
        assert not any(p.is_file() for p in (tmp_path / "refused").rglob("*"))


@pytest.mark.slow
def test_connection_strings_never_reach_logs_rows_or_summaries(
    ray_local, inputs_dir, azurite, tmp_path, capfd
):
    """The account key is in the environment of every worker (and of Azurite's clients), yet it
    appears nowhere in Ray's log files, the driver's output or what the job writes."""
    import ray

    from videopanda_cluster.storage.open import open_store

    key = dict(part.split("=", 1) for part in azurite.connection_string.split(";") if "=" in part)[
        "AccountKey"
    ]
    subset = tmp_path / "videos"
    subset.mkdir()
    fine = sorted(n for n in os.listdir(inputs_dir) if not n.startswith("corrupt"))
    for name in [*fine[:3], "corrupt_text.mkv"]:
        (subset / name).write_bytes((inputs_dir / name).read_bytes())
    url = "az://secrets/run"
    _, summary = job("caption", subset, url)  # type: ignore[arg-type]
    assert summary["this_run"]["rows"] == 4 and summary["this_run"]["failed_rows"] == 1
    store = open_store(url)
    written = b"".join(store.get(k) for k in store.list("jobs/"))
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    log_files = [p for p in logs.rglob("*") if p.is_file()]
    assert any(p.name.startswith("worker-") for p in log_files)  # the actors' stdout/stderr
    captured = capfd.readouterr()
    for secret in (key, key[:24], azurite.connection_string):
        assert secret.encode() not in written
        assert secret not in captured.out + captured.err
        for path in log_files:
            assert secret.encode() not in path.read_bytes(), path


def test_decoders_and_writers_start_without_torch_or_transformers():
    """Decode and writer actors import only what they use (actor start-up is per job)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from videopanda_cluster.cluster import features, stages\n"
        "from videopanda_cluster.video.extract import PreprocessOptions\n"
        "stages.DecodeWorker(PreprocessOptions())\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_model_for_smaller_frames_gets_frames_of_its_size(ray_local, inputs_dir, tmp_path):
    """The job preprocesses to the checkpoint's image_size (here 224, not the reference 448)."""
    from videopanda_cluster.model.tiny import ensure_tiny_checkpoint
    from videopanda_cluster.video.geometry import compute_geometry

    checkpoint = ensure_tiny_checkpoint(tmp_path / "tiny-224", image_size=224)
    subset = tmp_path / "videos"
    subset.mkdir()
    names = ["hd_1280x720_90f_30fps.mp4", "portrait_720x1280_45f_30fps.mp4", "corrupt_text.mkv"]
    for name in names:
        (subset / name).write_bytes((inputs_dir / name).read_bytes())
    _, summary = job("caption", subset, tmp_path / "out", checkpoint=str(checkpoint))
    rows = read_rows(tmp_path / "out", summary["job_id"])
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(rows) == 3 and len(ok) == 2
    for r in ok:
        prov = r["provenance"]
        assert prov["input_size"] == 224
        w, h = prov["source_size"]
        assert list(prov["token_grid"]) == list(compute_geometry(w, h, 224).token_grid)


@pytest.mark.slow
def test_results_are_one_dataset_for_every_reader(ray_local, inputs_dir, tmp_path):
    """A job whose first shard holds only the corrupt files (error rows, no provenance): every
    Parquet file has RESULT_SCHEMA and the folder reads as one table in each engine."""
    import importlib.util

    import duckdb
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from videopanda_cluster.cluster.results import RESULT_SCHEMA, SCHEMA_VERSION, read_results
    from videopanda_cluster.storage.local import LocalStore

    videos = sorted(inputs_dir.iterdir(), key=lambda p: (not p.stem.startswith("corrupt"), p.name))
    manifest = tmp_path / "m.jsonl"
    lines = [json.dumps({"video_id": p.stem, "uri": str(p)}) + "\n" for p in videos]
    manifest.write_text("".join(lines))
    out = tmp_path / "out"
    _, summary = job("caption", manifest, out, shard_size=2, results_jsonl=True)
    results = out / "jobs" / summary["job_id"] / "results"
    folder = results / "parquet"
    assert sorted(p.name for p in results.iterdir()) == ["jsonl", "parquet"]
    assert sorted(p.suffix for p in folder.iterdir()) == [".parquet"] * 8

    table = read_results(LocalStore(out), summary["job_id"])
    assert table.schema == RESULT_SCHEMA and table.num_rows == 16
    first = table.slice(0, 2)  # shard 0: the two corrupt files, error rows only
    assert first.column("status").to_pylist() == ["error", "error"]
    assert first.column("provenance").to_pylist() == [None, None]
    assert pc.sum(pc.equal(table["status"], "error")).as_py() == 2
    assert set(table.column("schema_version").to_pylist()) == {SCHEMA_VERSION}

    dataset = ds.dataset(folder, format="parquet")
    assert dataset.schema.equals(RESULT_SCHEMA, check_metadata=False)
    by_engine = {"pyarrow.dataset": dataset.to_table()}
    frame = pd.read_parquet(folder)
    assert list(frame.columns) == RESULT_SCHEMA.names and len(frame) == 16
    assert isinstance(frame.loc[frame.status == "ok", "provenance"].iloc[0], dict)
    by_engine["pandas"] = pa.Table.from_pandas(frame, schema=RESULT_SCHEMA, preserve_index=False)
    con = duckdb.connect()
    query = f"select * from read_parquet('{folder}/*.parquet')"
    by_engine["duckdb"] = con.sql(query).to_arrow_table()
    types = {name: type_ for name, type_, *_ in con.sql(f"describe {query}").fetchall()}
    assert [types[c] for c in ("schema_version", "status", "error")] == [
        "INTEGER", "VARCHAR", "VARCHAR"
    ]  # fmt: skip
    assert types["timings"] == "STRUCT(decode_s DOUBLE, encode_s DOUBLE, generate_s DOUBLE)"
    if importlib.util.find_spec("datasets"):  # not installable here: see pyproject.toml
        import datasets

        hf = datasets.load_dataset(
            "parquet", data_files=str(folder / "*.parquet"), split="train", cache_dir=str(tmp_path)
        )
        by_engine["datasets"] = hf.data.table
    for engine, read in by_engine.items():
        got = read.cast(RESULT_SCHEMA).sort_by("video_id")
        assert got.equals(table.sort_by("video_id")), engine


FLIP_VIDEOS = [
    "square_500x500_300f_30fps.mp4",
    "vga_640x480_150f_30fps.mkv",
    "sd_340x256_40f_10fps.webm",
    "qcif_176x144_5f_10fps.mp4",
    "hd_1280x720_90f_30fps.mp4",
    "portrait_240x320_60f_30fps.webm",
    "rotated_320x240_20f_25fps_rot90.mkv",
    "vfr_340x256_90f.mp4",
]


@pytest.mark.slow
def test_reference_flip_draws_one_seeded_coin_per_video(ray_local, inputs_dir, tmp_path):
    """flip: reference mirrors the RGB (not the mask) of about half the videos, each by its own
    coin from the seed and the video's content hash; reruns and the feature cache agree."""
    import torch
    from safetensors.torch import load_file

    from videopanda_cluster.cluster.driver import default_checkpoint
    from videopanda_cluster.cluster.sources import local_path
    from videopanda_cluster.model.modeling import VideoPanda
    from videopanda_cluster.video.extract import PreprocessOptions
    from videopanda_cluster.video.load import load_video

    subset = tmp_path / "videos"
    subset.mkdir()
    for name in FLIP_VIDEOS:
        (subset / name).write_bytes((inputs_dir / name).read_bytes())
    flip = {"flip": "reference", "seed": 5}
    _, first = job("features", subset, tmp_path / "a", **flip)
    rows = read_rows(tmp_path / "a", first["job_id"])
    assert len(rows) == len(FLIP_VIDEOS) and all(r["status"] == "ok" for r in rows)
    flipped = {r["video_id"]: r["provenance"]["flipped"] for r in rows}
    assert set(flipped.values()) == {True, False}  # one coin per video, not one per job

    checkpoint, _ = default_checkpoint()
    model = VideoPanda.from_pretrained(checkpoint, with_llm=False)
    n = model.config.chunk_size

    def stab(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            frames, _ = model.video_tower(pixels.reshape(-1, n, *pixels.shape[1:]))
        return torch.cat([f.reshape(-1) for f in frames])

    options = PreprocessOptions(size=model.config.image_size, isolate=False)
    for r in rows:
        plain = load_video(str(local_path(r["uri"])), options).pixels  # the unflipped decode
        mirror = plain.clone()
        mirror[:, :3] = plain[:, :3].flip(-1)  # RGB mirrored, mask as is
        stored = load_file(tmp_path / "a" / r["feature_key"])
        tokens = torch.cat([stored[k].reshape(-1) for k in sorted(stored)])
        want, other = (mirror, plain) if flipped[r["video_id"]] else (plain, mirror)
        # up to the rounding of the batch the pipeline encoded it in (as the rerun below; 2e-5
        # at most for the bundled model, against differences of 3 on average for the other side)
        assert torch.allclose(tokens, stab(want), rtol=1e-4, atol=1e-4), r["video_id"]
        assert not torch.allclose(tokens, stab(other), atol=1e-3), r["video_id"]

    # a qa job reads the features from the cache: same decisions
    _, qa = job("qa", subset, tmp_path / "a", questions=QUESTIONS[:1], **flip)
    qa_rows = read_rows(tmp_path / "a", qa["job_id"])
    assert all(r["feature_cache_hit"] for r in qa_rows)
    assert {r["video_id"]: r["provenance"]["flipped"] for r in qa_rows} == flipped
    # a rerun in an empty store draws the same coins and finds the same tokens
    _, again = job("features", subset, tmp_path / "b", **flip)
    rerun = {r["video_id"]: r for r in read_rows(tmp_path / "b", again["job_id"])}
    assert {v: r["provenance"]["flipped"] for v, r in rerun.items()} == flipped
    for r in rows:
        twin = load_file(tmp_path / "b" / rerun[r["video_id"]]["feature_key"])
        # equal up to rounding: STAB's CPU kernels round differently with the batch a video is
        # encoded in, and which videos share a batch depends on the decoders' timing
        assert all(
            torch.allclose(t, twin[k], rtol=1e-4, atol=1e-5)
            for k, t in load_file(tmp_path / "a" / r["feature_key"]).items()
        )


def _task_spans(name: str, since: float) -> list[tuple[float, float]]:
    """(start, end) in epoch seconds of the Ray tasks ``name`` (``Class.method``) that started
    after ``since``, from Ray's task timeline."""
    import logging

    import ray

    state_log = logging.getLogger("ray._private.state")  # its notice of a future API change
    level = state_log.level
    state_log.setLevel(logging.ERROR)
    try:
        events = ray.timeline()
    finally:
        state_log.setLevel(level)
    return [
        (e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6)
        for e in events
        if e.get("cat") == f"task::{name}" and e["ts"] / 1e6 >= since
    ]


@pytest.mark.slow  # one decode runs into its 30 s deadline
def test_decoded_videos_are_encoded_while_a_slow_one_decodes(ray_local, inputs_dir, tmp_path):
    """Streaming within a shard: the last video of the shard (64 GB of holes to hash) takes
    its whole decode deadline; the shard's other videos are encoded meanwhile (and answered as
    soon as a generator is up: its start-up, seconds under load, is not measured here)."""
    import time

    timeout = 30.0  # longer than the encoder's start-up under load
    subset = tmp_path / "videos"
    subset.mkdir()
    fast = sorted(n for n in os.listdir(inputs_dir) if not n.startswith("corrupt"))[:3]
    for name in fast:
        (subset / name).write_bytes((inputs_dir / name).read_bytes())
    with open(subset / "zz_slow.mp4", "wb") as fh:
        fh.truncate(64 << 30)
    started = time.time()
    _, summary = job(
        "caption", subset, tmp_path / "out", decode_timeout=timeout, use_feature_cache=False
    )
    rows = read_rows(tmp_path / "out", summary["job_id"])
    assert [r["video_id"] for r in rows] == ["zz_slow", *(Path(n).stem for n in fast)]
    assert rows[0]["error"] == "timeout" and all(r["status"] == "ok" for r in rows[1:])
    # The slow video's decoder decoded a fast one first, so the slow decode started after the
    # first decode started, and ended `timeout` later (Ray reports task events every second).
    deadline = time.time() + 30
    while time.time() < deadline:
        decodes = _task_spans("DecodeWorker.decode", started)
        encodes = _task_spans("EncodeWorker.encode", started)
        if len(decodes) >= len(fast) and encodes:
            break
        time.sleep(1)
    slow_done = min(start for start, _ in decodes) + timeout
    first_encode = min(start for start, _ in encodes)
    assert first_encode < slow_done, (started, decodes, encodes)


@pytest.mark.slow  # two jobs
def test_streamed_batches_give_the_rows_of_whole_shard_batches(ray_local, inputs_dir, tmp_path):
    """A shard encoded in the batches its decodes arrive in (no wait) has the rows, in the same
    order, of one encoded as one batch after all its decodes (a wait no decode outlasts)."""
    subset = tmp_path / "videos"
    subset.mkdir()
    names = sorted(n for n in os.listdir(inputs_dir) if not n.startswith("corrupt"))[:7]
    for name in [*names, "corrupt_truncated.mp4"]:
        (subset / name).write_bytes((inputs_dir / name).read_bytes())
    runs = {}
    for wait in (0.0, 3600.0):
        out = tmp_path / f"wait-{wait}"
        _, summary = job(
            "qa",
            subset,
            out,
            questions=QUESTIONS,
            encode_batch=4,
            encode_batch_wait_s=wait,
            use_feature_cache=False,
        )
        rows = read_rows(out, summary["job_id"])
        for r in rows:
            del r["timings"], r["workers"]
        runs[wait] = rows
    streamed, whole = runs[0.0], runs[3600.0]
    assert streamed == whole
    assert len(streamed) == 8 * len(QUESTIONS)
    # per shard: failed decodes first, then the others in plan order, questions in order
    from videopanda_cluster.jobs.ledger import Ledger
    from videopanda_cluster.storage.local import LocalStore

    ledger = Ledger.load(LocalStore(tmp_path / "wait-0.0", create=False), summary["job_id"])
    expected = []
    for shard in sorted(ledger.shard_ids(), key=int):
        planned = [v.video_id for v in ledger.shard_plan(shard)]
        failed = [v for v in planned if v == "corrupt_truncated"]
        for video in [*failed, *(v for v in planned if v not in failed)]:
            expected += [(video, q) for q in QUESTIONS]
    assert [(r["video_id"], r["question"]) for r in streamed] == expected
