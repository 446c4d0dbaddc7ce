"""Every transformers backend through the whole system: a ``qa`` job on a real local Ray and an
``eval run`` on tiny random folders (tests/hf_tiny.py) answer every question, rows record the
backend, and each answer equals the model's own ``generate`` on the real processor's outputs
for the frames the job sampled (the processor runs in the side venv of tests/hf_reference.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.eval_fixtures import make_benchmark_fixture
from tests.hf_reference import run_reference
from tests.hf_tiny import write_llava_next_video, write_qwen_folder, write_video_llava
from tests.test_backend_pipeline import pyav_frames
from tests.test_pipeline import job, read_rows
from videopanda_cluster.backends import backend_class
from videopanda_cluster.eval.run import read_result_rows, run_eval
from videopanda_cluster.storage.local import LocalStore

WRITERS = {
    "video_llava": write_video_llava,
    "llava_next_video": write_llava_next_video,
    "qwen2_vl": lambda folder: write_qwen_folder(folder, "qwen2_vl"),
    "qwen2_5_vl": lambda folder: write_qwen_folder(folder, "qwen2_5_vl"),
}
VIDEOS = [
    "sd_340x256_40f_10fps.webm",
    "qcif_176x144_5f_10fps.mp4",
    "rotated_320x240_20f_25fps_rot90.mkv",
]
QUESTIONS = ["what moves?", "what colour is the biggest shape?"]
NEW_TOKENS = 6

REFERENCE = """
import transformers
from transformers import AutoProcessor
OUT = {}
for tag, item in ARGS.items():
    proc = AutoProcessor.from_pretrained(item["folder"], local_files_only=True)
    turn = [{"type": "video"}, {"type": "text", "text": item["question"]}]
    text = proc.apply_chat_template([{"role": "user", "content": turn}], add_generation_prompt=True)
    enc = proc(text=[text], videos=[ARRAYS[item["frames"]]], return_tensors="pt")
    OUT[tag] = sorted(enc.keys())
    for key, value in enc.items():
        OUT_ARRAYS[f"{tag}|{key}"] = value.numpy()
"""


@pytest.fixture(scope="module")
def inputs(corpus, tmp_path_factory) -> dict[str, Any]:
    """The job's videos and the msvd-qa benchmark, shared by every backend."""
    root = tmp_path_factory.mktemp("backend-jobs")
    (root / "inputs").mkdir()
    for name in VIDEOS:
        (root / "inputs" / name).symlink_to(corpus / name)
    bench = make_benchmark_fixture("msvd-qa", root / "msvd", corpus, missing=0)
    return {"root": root, "bench": bench}


@pytest.fixture(scope="module", params=list(WRITERS))
def run(request, ray_local, inputs) -> dict[str, Any]:
    """One backend (a fixture per backend: each setup holds two jobs): its folder, the qa
    job's rows, the eval run's record and rows."""
    kind, root, bench = request.param, inputs["root"], inputs["bench"]
    folder = WRITERS[kind](root / kind)
    settings = {"checkpoint": str(folder), "num_frames": 4, "max_new_tokens": NEW_TOKENS}
    _, summary = job("qa", root / "inputs", root / "store", questions=QUESTIONS, **settings)
    record = run_eval("msvd-qa", bench["data_root"], str(root / "store"), **settings)
    return {
        "kind": kind,
        "folder": folder,
        "settings": settings,
        "rows": read_rows(root / "store", summary["job_id"]),
        "run": record,
        "eval_rows": read_result_rows(LocalStore(root / "store"), record["job_id"]),
        "bench": bench,
        "root": root,
    }


@pytest.mark.slow
def test_a_qa_job_and_an_eval_run_answer_every_question(run):
    kind = run["kind"]
    rows = run["rows"]
    assert len(rows) == len(VIDEOS) * len(QUESTIONS)
    assert all(r["status"] == "ok" and r["answer"] is not None for r in rows), rows
    cls = backend_class(run["folder"])
    for r in rows:
        assert r["model"]["backend"] == kind == cls.kind
        assert r["model"]["fingerprint"].startswith(f"{kind}/")
        assert r["provenance"]["frame_size"] and len(r["provenance"]["sampled_indices"]) == 4
        assert r["provenance"]["visual_tokens"] > 0
    answerable = sum(len(ids) for ids in run["bench"]["answerable"].values())
    counts = run["run"]["counts"]
    assert counts["answered"] == counts["items"] == answerable, counts
    assert run["run"]["model"]["backend"] == kind
    assert {r["model"]["backend"] for r in run["eval_rows"]} == {kind}


@pytest.fixture(scope="module")
def reference(run, corpus) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The real processor's inputs for every answered (video, question) of the backend's job,
    on the frames each row says were sampled."""
    arrays, args = {}, {}
    kind = run["kind"]
    for n, r in enumerate(run["rows"]):
        name = Path(r["uri"]).name
        frames = pyav_frames(corpus / name)
        key = f"{kind}-{n}"
        arrays[key] = np.stack([frames[i] for i in r["provenance"]["sampled_indices"]])
        args[key] = {"folder": str(run["folder"]), "question": r["question"], "frames": key}
    return run_reference(REFERENCE, arrays, args)


@pytest.mark.slow
def test_job_answers_equal_the_models_own_generate_on_the_processors_inputs(run, reference):
    import transformers

    arrays, keys = reference
    kind = run["kind"]
    cls = backend_class(run["folder"])
    model_cls = getattr(transformers, cls.model_class)
    model = model_cls.from_pretrained(run["folder"], local_files_only=True, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(run["folder"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for n, r in enumerate(run["rows"]):
        tag = f"{kind}-{n}"
        # token_type_ids: the tokenizer's, which these models' generate does not take
        inputs = {
            k: torch.from_numpy(arrays[f"{tag}|{k}"]) for k in keys[tag] if k != "token_type_ids"
        }
        out = model.eval().generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )
        new = out[0, inputs["input_ids"].shape[1] :]
        assert r["answer"] == tokenizer.decode(new, skip_special_tokens=True).strip(), json.dumps(
            {"video": r["video_id"], "question": r["question"]}
        )


@pytest.mark.slow
@pytest.mark.parametrize("run", ["video_llava"], indirect=True)
def test_caption_and_features_jobs_take_a_transformers_backend(run):
    """Video-LLaVA's folder in the other two job kinds, on the store its qa job filled: the
    features are the cached ones (same backend, frames and weights), the captions answered."""
    store, inputs, settings = run["root"] / "store", run["root"] / "inputs", run["settings"]
    _, features = job("features", inputs, store, **settings)
    _, captions = job("caption", inputs, store, **settings)
    for summary in (features, captions):
        rows = read_rows(store, summary["job_id"])
        assert len(rows) == len(VIDEOS)
        assert all(r["status"] == "ok" and r["feature_cache_hit"] for r in rows), rows
        assert {r["model"]["backend"] for r in rows} == {"video_llava"}
        assert {r["feature_key"] for r in rows} == {
            r["feature_key"] for r in run["rows"]
        }  # the qa job's entries
    assert all(r["answer"] for r in read_rows(store, captions["job_id"]))
