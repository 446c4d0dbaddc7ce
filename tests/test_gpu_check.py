"""bench/gpu_check.py: its CPU run (``--small``) works, checks what it says, and imports no Ray,
PyAV or sentencepiece."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
SECTIONS = {"header", "plan", "build", "stab", "generation", "memory", "greedy", "imports"}


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (registered: its dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """``gpu_check.py --small`` in a fresh interpreter whose PYTHONPATH is only src/."""
    out = tmp_path_factory.mktemp("gpu_check") / "small.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, json.loads(out.read_text()) if out.is_file() else {}


@pytest.mark.slow
def test_small_run_reports_every_section(small_run):
    proc, report = small_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(report) >= SECTIONS and report["failures"] == []
    plan = report["plan"]
    assert [row["batch"] for row in report["stab"]] == list(plan["stab_batches"])
    assert all(row["videos_per_s"] > 0 and len(row["loadavg"]) == 3 for row in report["stab"])
    cells = {(r["attention"], r["batch"], r["shared_prefix"]) for r in report["generation"]}
    shares = {False, True}
    want = {(a, b, s) for a in ("eager", "sdpa") for b in plan["generate_batches"] for s in shares}
    assert cells == want
    for row in report["generation"]:
        assert row["tokens"] == row["prompts"] * plan["max_new_tokens"] and row["tokens_per_s"] > 0
    assert report["memory"]["peak_bytes"] > 0
    fp32 = report["greedy"]["float32"]
    assert fp32["identical_answers"] == 1.0
    assert fp32["logits_max_abs_diff"] <= report["greedy"]["logits_rtol"] * fp32["logits_max_abs"]
    assert "bfloat16" in report["greedy"]


@pytest.mark.slow
def test_small_run_imports_neither_ray_nor_av(small_run):
    _, report = small_run
    assert {"ray", "av", "sentencepiece"} <= set(report["imports"]["checked"])
    assert report["imports"]["loaded"] == []


def test_forbidden_imports_are_detected(gpu_check):
    import av  # noqa: F401  (the suite imports it anyway; the check must see it)

    assert "av" in gpu_check.forbidden_imports()


def test_word_tokenizer_gives_one_word_per_generated_id(gpu_check):
    tokenizer = gpu_check.word_tokenizer(512)
    assert tokenizer.eos_token_id == 512  # outside the model's 512 outputs: never generated
    ids = list(range(512))
    assert len(tokenizer.decode(ids, skip_special_tokens=True).split()) == 512
    assert max(tokenizer(gpu_check.QUESTIONS[1]).input_ids) < 512
    assert 0 not in tokenizer(gpu_check.QUESTIONS[1]).input_ids  # its words are in the vocabulary
