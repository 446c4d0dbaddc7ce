"""The console script: samples, inspect (JSON contract), demo."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from videopanda_cluster.video.extract import PreprocessOptions, extract
from videopanda_cluster.video.sampling import sample_positions

INSPECT_KEYS = {
    "num_frames",
    "fps",
    "duration",
    "sampled_indices",
    "sampled_pts",
    "source_size",
    "valid_box",
    "token_grid",
    "tokens_per_frame",
    "decoder",
}


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = shutil.which("videopanda") or sys.executable
    cmd = [exe, *args] if exe != sys.executable else [exe, "-m", "videopanda_cluster.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("name", "grid"),
    [("hd_1280x720_90f_30fps.mp4", [9, 16]), ("portrait_720x1280_45f_30fps.mp4", [16, 9])],
)
def test_inspect_json(corpus, name, grid):
    out = _cli("inspect", str(corpus / name), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info.keys() >= INSPECT_KEYS
    assert info["token_grid"] == grid
    h, w = grid
    assert info["tokens_per_frame"] == 1 + h * (w + 1)
    assert info["sampled_indices"] == sample_positions(info["num_frames"], info["fps"])
    assert len(info["sampled_pts"]) == len(info["sampled_indices"])
    assert info["decoder"].startswith("pyav-")


def test_inspect_bad_input_prints_error_object(bad_files, corpus):
    out = _cli("inspect", str(bad_files["not_a_video"]), "--json")
    assert out.returncode != 0
    assert json.loads(out.stdout)["error"] == "not_a_video"
    long = corpus / "long_176x144_2min_25fps.mp4"
    out = _cli("inspect", str(long), "--json", "--timeout", "0.001")
    assert out.returncode != 0 and json.loads(out.stdout)["error"] == "timeout"


@pytest.mark.slow  # scripts/check.sh leaves it to the full suite
def test_samples_command_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert _cli("samples", str(d), "--seed", "3").returncode == 0
    manifest = json.loads((a / "manifest.json").read_text())
    assert {p.name for p in a.iterdir()} == {r["name"] for r in manifest} | {"manifest.json"}
    # The scenes are identical; the encoded pixels may differ by a unit in rare places because
    # x264 output varies slightly from run to run on some short clips.
    for row in manifest:
        x, y = (extract(d / row["name"], PreprocessOptions(isolate=False)) for d in (a, b))
        assert x.provenance == y.provenance, row["name"]
        diff = np.abs(x.frames.astype(int) - y.frames.astype(int))
        assert diff.max() <= 3 and (diff > 0).mean() < 1e-3, row["name"]
    from videopanda_cluster.video.samples import _Scene

    scene, again = _Scene(320, 240, seed=3), _Scene(320, 240, seed=3)
    for i in (0, 7, 99):
        np.testing.assert_array_equal(scene.render(i), again.render(i))
    assert {p.rsplit(".", 1)[1] for p in (r["name"] for r in manifest)} >= {"mp4", "mkv", "webm"}


ACCURACY = re.compile(
    r"^accuracy on (?P<clips>\d+) clips of its world: QA (?P<right>\d+)/(?P<total>\d+) "
    r"\((?:\d+\.\d%)\), caption facts precision (?:\d+\.\d%|n/a) recall \d+\.\d%; "
    r"(?P<files>\d+) robustness files: (?P<answered>\d+) answered, (?P<failed>\d+) with error "
    r"rows$",
    re.MULTILINE,
)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow  # scripts/check.sh leaves it to the full suite
def test_demo_runs_the_main_job(tmp_path):
    directory, store = tmp_path / "demo", tmp_path / "store"
    out = _cli("demo", "--directory", str(directory), "--output", str(store), timeout=900)
    assert out.returncode == 0, out.stderr
    from videopanda_cluster.bundled import has_small_model
    from videopanda_cluster.demo import (
        NO_TRUTH,
        ODD_TITLE,
        WORLD_TITLE,
        DemoCorpus,
        score_demo,
        write_demo,
    )
    from videopanda_cluster.eval.run import read_result_rows
    from videopanda_cluster.storage.open import open_store

    # says which model answered: the shipped one, or that the fallback is untrained
    assert ("videopanda-small, bundled" if has_small_model() else "tiny RANDOM") in out.stdout
    videos = write_demo(tmp_path / "again")  # the corpus is the same files every time
    assert _files(directory) == _files(tmp_path / "again")
    world = [v for v in videos if v.has_truth]
    odd = [v for v in videos if not v.has_truth]
    assert len(world) == DemoCorpus().clips and len(odd) >= 3
    asked = sum(len(v.questions) for v in world)
    rows = []
    for kind, per_kind in (("caption", len(videos)), ("qa", sum(len(v.questions) for v in videos))):
        [job] = (store / "jobs").glob(f"{kind}-*")
        summary = json.loads((job / "summary.json").read_text())
        assert summary["progress"]["committed_videos"] == len(videos)
        assert summary["progress"]["rows"] == per_kind
        rows += read_result_rows(open_store(str(store)), job.name)
    # both tables: every clip's question marked, every odd file's rows without ground truth
    assert WORLD_TITLE in out.stdout and ODD_TITLE in out.stdout
    assert out.stdout.count("✓") + out.stdout.count("✗") == asked
    assert out.stdout.count(NO_TRUTH) == sum(1 + len(v.questions) for v in odd)
    # one accuracy line, counting the whole corpus, the same as the result rows give
    [line] = [m for m in ACCURACY.finditer(out.stdout)]
    assert (int(line["clips"]), int(line["total"]), int(line["files"])) == (
        len(world),
        asked,
        len(odd),
    )
    assert int(line["right"]) == out.stdout.count("✓")
    assert int(line["answered"]) + int(line["failed"]) == len(odd)
    assert line[0] == score_demo(videos, rows).line()

    # a rerun after the model's files changed in place (the bundled model updated by a pull)
    # starts new jobs beside the first ones, which keep their results, instead of refusing
    from videopanda_cluster.cluster.driver import default_checkpoint
    from videopanda_cluster.model.tiny import ensure_tiny_checkpoint

    model = tmp_path / "model"
    shutil.copytree(default_checkpoint()[0], model)
    demo = ("demo", "--directory", str(directory), "--output", str(store))
    first = _cli(*demo, "--checkpoint", str(model), timeout=900)
    assert first.returncode == 0, first.stderr
    before = {job.name for job in (store / "jobs").iterdir()}
    shutil.rmtree(model)
    shutil.copytree(ensure_tiny_checkpoint(tmp_path / "tiny", image_size=224), model)
    again = _cli(*demo, "--checkpoint", str(model), timeout=900)
    assert again.returncode == 0, again.stderr
    jobs = {job.name for job in (store / "jobs").iterdir()}
    assert before < jobs and len(jobs) == len(before) + 2
    for name in before:
        assert len(read_result_rows(open_store(str(store)), name)) > 0
