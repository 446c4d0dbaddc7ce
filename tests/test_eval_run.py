"""``run_eval`` end to end on a real local Ray with the tiny model: every benchmark's fixture."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.eval_fixtures import make_benchmark_fixture
from videopanda_cluster import __version__
from videopanda_cluster.eval.benchmarks import BenchmarkError, load_benchmark
from videopanda_cluster.eval.config import EvalConfig
from videopanda_cluster.eval.layout import BENCHMARKS, SUBSETS
from videopanda_cluster.eval.predictions import PREDICTION_FIELDS, read_reference_predictions
from videopanda_cluster.eval.run import load_run, read_result_rows, run_eval
from videopanda_cluster.storage.open import open_store

SETTINGS = {"max_new_tokens": 4, "decode_workers": 1, "shard_size": 2, "max_in_flight": 2}
ITEM_FIELDS = {
    "id", "subset", "video_name", "video_id", "uri", "question", "question2", "answer",
    "question_type", "status", "error", "message", "sampled_indices", "flipped", "backend",
    "fingerprint",
}  # fmt: skip
RUN_FIELDS = {
    "benchmark", "run_id", "job_id", "data_root", "model", "generation", "counts", "subsets",
}  # fmt: skip


def test_settings_run_eval_owns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="run_eval sets inputs, job_id itself"):
        run_eval("msvd-qa", tmp_path, str(tmp_path / "out"), inputs="x", job_id="y")


def test_a_benchmark_without_any_video_is_an_error(tmp_path):
    fx = make_benchmark_fixture("tgif-qa", tmp_path, None)
    shutil.rmtree(fx["video_dir"])
    with pytest.raises(BenchmarkError, match=r"no video found .* 7 questions .*/mp4/clip_a\.mp4"):
        run_eval("tgif-qa", tmp_path, str(tmp_path / "out"))


@pytest.fixture(scope="module")
def evals(ray_local, corpus, tmp_path_factory) -> Iterator[tuple[Path, dict]]:
    """Every benchmark run once into one store: (store dir, {name: (fixture, run.json)})."""
    root = tmp_path_factory.mktemp("eval")
    store = root / "store"
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(root / "tmp"))  # where run_eval puts manifests
        for name in BENCHMARKS:
            fx = make_benchmark_fixture(name, root / name, corpus, missing=1, corrupt=True)
            runs[name] = fx, run_eval(name, fx["data_root"], str(store), **SETTINGS)
        yield store, runs


def run_files(store: Path, run_id: str) -> dict[str, bytes]:
    folder = store / "eval" / run_id
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", BENCHMARKS)
@pytest.mark.slow
def test_predictions_are_reference_lines_of_the_answerable_items(evals, name):
    store, runs = evals
    fx, run = runs[name]
    items = {(i.subset, i.id): i for i in load_benchmark(name, fx["data_root"]).items}
    rows = {r["question_id"]: r for r in read_result_rows(open_store(str(store)), run["job_id"])}
    expected = {"run.json", "items.jsonl", "missing.json"}
    expected |= {f"predictions/{s}.jsonl" for s in SUBSETS[name]}
    assert set(run_files(store, run["run_id"])) == expected
    for subset in SUBSETS[name]:
        path = store / "eval" / run["run_id"] / "predictions" / f"{subset}.jsonl"
        records = read_reference_predictions(path.read_text(encoding="utf-8"), subset)
        assert [r["id"] for r in records] == fx["answerable"][subset]
        for record in records:
            item = items[(subset, record["id"])]
            assert list(record) == list(PREDICTION_FIELDS[subset])
            key = f"{subset}/{item.id}"
            if subset == "qa":
                assert (record["question"], record["answer"]) == (item.question, item.answer)
                assert record["pred"] == rows[key]["answer"]
            elif subset == "consistency":
                assert (record["Q1"], record["Q2"], record["A"]) == (
                    item.question, item.question2, item.answer
                )  # fmt: skip
                assert rows[f"{key}#1"]["question"] == item.question
                assert rows[f"{key}#2"]["question"] == item.question2
                assert record["pred1"] == rows[f"{key}#1"]["answer"]
                assert record["pred2"] == rows[f"{key}#2"]["answer"]
            else:
                assert (record["video_name"], record["Q"], record["A"]) == (
                    item.video_name, item.question, item.answer
                )  # fmt: skip
                assert record["pred"] == rows[key]["answer"]


@pytest.mark.parametrize("name", BENCHMARKS)
@pytest.mark.slow
def test_items_missing_and_run_json_account_for_every_item(evals, name):
    store, runs = evals
    fx, run = runs[name]
    loaded = load_run(open_store(str(store)), run["run_id"])
    assert loaded.run == run
    assert set(run) == RUN_FIELDS and run["benchmark"] == name
    assert run["subsets"] == list(SUBSETS[name]) and run["generation"]["max_new_tokens"] == 4
    assert run["model"]["checkpoint_hash"]
    assert run["model"]["backend"] == "videopanda"
    assert run["model"]["fingerprint"] == f"videopanda/{__version__}"
    items = loaded.items
    assert [(i["subset"], i["id"]) for i in items] == [
        (s, i) for s, ids in fx["ids"].items() for i in ids
    ]
    assert all(set(i) == ITEM_FIELDS for i in items)
    status = {(i["subset"], i["id"]): i for i in items}
    for subset, ids in fx["answerable"].items():
        for i in ids:
            item = status[(subset, i)]
            assert item["status"] == "ok" and item["error"] is None
            assert item["sampled_indices"] and item["video_id"] == item["video_name"]
            assert item["flipped"] is False  # the flip is off by default
            assert (item["backend"], item["fingerprint"]) == (
                "videopanda",
                run["model"]["fingerprint"],
            )
            assert item["uri"] == str(fx["files"][item["video_name"]])
    for subset, ids in fx["corrupt"].items():
        for i in ids:
            item = status[(subset, i)]
            assert (item["status"], item["error"]) == ("error", "not_a_video")
            assert item["message"] and item["sampled_indices"] is None
    missing = [(s, i) for s, ids in fx["missing"].items() for i in ids]
    assert [(m["subset"], m["id"]) for m in loaded.missing] == missing
    for m in loaded.missing:
        assert status[(m["subset"], m["id"])]["status"] == "missing"
        assert status[(m["subset"], m["id"])]["uri"] is None
        assert m["tried"][0] == str(fx["video_dir"] / f"{fx['prefix']}{m['video_name']}.mp4")
    answered = sum(len(ids) for ids in fx["answerable"].values())
    assert run["counts"] == {
        "items": len(items), "answered": answered, "missing": len(missing), "failed": 1
    }  # fmt: skip
    assert sum(len(p) for p in loaded.predictions.values()) == answered


@pytest.mark.slow
def test_rerun_recomputes_nothing_and_rewrites_the_same_files(evals):
    store, runs = evals
    assert len({run["job_id"] for _, run in runs.values()}) == len(BENCHMARKS)
    for name, (fx, run) in runs.items():
        before = run_files(store, run["run_id"])
        # an operational setting (more decode workers) is the same job
        again = run_eval(name, fx["data_root"], str(store), **{**SETTINGS, "decode_workers": 2})
        assert again == run
        summary = json.loads((store / "jobs" / run["job_id"] / "summary.json").read_text())
        assert summary["this_run"]["shards"] == 0
        assert summary["progress"]["committed_shards"] == summary["progress"]["total_shards"]
        assert run_files(store, run["run_id"]) == before


@pytest.mark.slow
def test_a_named_run_reuses_the_job_of_the_same_benchmark_and_settings(evals):
    store, runs = evals
    fx, run = runs["vcgbench"]
    named = run_eval("vcgbench", fx["data_root"], str(store), run_id="my-run.1", **SETTINGS)
    assert named["run_id"] == "my-run.1" and named["job_id"] == run["job_id"]
    files = run_files(store, "my-run.1")
    assert files.pop("run.json") != run_files(store, run["run_id"]).pop("run.json")
    assert files == {k: v for k, v in run_files(store, run["run_id"]).items() if k != "run.json"}
    with pytest.raises(ValueError, match=r"invalid run id '\.\./x'"):
        run_eval("vcgbench", fx["data_root"], str(store), run_id="../x", **SETTINGS)


@pytest.mark.slow
def test_a_reference_flip_run_draws_each_video_its_own_seeded_coin(evals):
    from videopanda_cluster.video.extract import PreprocessOptions
    from videopanda_cluster.video.load import load_video

    store, runs = evals
    fx, plain = runs["msvd-qa"]
    flip = {"flip": "reference", "seed": 2}
    run = run_eval("msvd-qa", fx["data_root"], str(store), **flip, **SETTINGS)
    assert run["job_id"] != plain["job_id"]
    items = [
        i for i in load_run(open_store(str(store)), run["run_id"]).items if i["status"] == "ok"
    ]
    coins: dict[str, set[bool]] = {}
    for item in items:
        coins.setdefault(item["video_name"], set()).add(item["flipped"])
    assert all(len(c) == 1 for c in coins.values())  # every question of a video: one coin
    assert {c for (c,) in coins.values()} == {True, False}  # each video its own coin
    for name, (flipped,) in coins.items():  # the library draws the same coin for the file
        options = PreprocessOptions(flip="reference", flip_seed=2, size=112, isolate=False)
        assert load_video(fx["files"][name], options).provenance.flipped == flipped


@pytest.mark.slow
def test_run_eval_defaults_to_the_reference_generation_limit(ray_local, corpus, tmp_path):
    """From Python as from `eval run`: at most EvalConfig's 1024 new tokens unless told."""
    fx = make_benchmark_fixture("msvd-qa", tmp_path / "msvd", corpus)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        settings = {k: v for k, v in SETTINGS.items() if k != "max_new_tokens"}
        run = run_eval("msvd-qa", fx["data_root"], str(tmp_path / "store"), **settings)
    assert run["generation"]["max_new_tokens"] == EvalConfig.max_new_tokens == 1024
