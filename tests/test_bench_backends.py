"""bench/backends.py: its ``--quick`` run measures every visual path on the same frames, counts
their visual tokens, and gives the ratios to Video-Panda."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "backends.py"
MODELS = ["video_panda", "video_llava", "qwen2_vl"]


@pytest.fixture(scope="module")
def bench_module():
    """The script as a module (registered: its dataclasses look themselves up; bench/ on the
    path while it imports, for its helpers)."""
    spec = importlib.util.spec_from_file_location("bench_backends", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPT.parent))
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def quick_run() -> tuple[subprocess.CompletedProcess, dict]:
    """``backends.py --quick --repeats 2 --threads 1`` in a fresh interpreter (src/ only)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeats", "2", "--threads", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stdout.strip().splitlines()
    return proc, json.loads(lines[-1]) if proc.returncode == 0 and lines else {}


@pytest.mark.slow
def test_quick_run_measures_every_model_on_the_same_frames(quick_run):
    proc, result = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["sizes"] == "quick (tiny)"
    assert (result["threads"], result["repeats"]) == (1, 2)
    video = result["video"]
    assert video["shape"] == [8, 112, 112, 3] and len(video["sha256"]) == 64
    rows = result["models"]
    assert [r["model"] for r in rows] == MODELS
    for row in rows:
        assert row["frames"] == {"shape": video["shape"], "sha256": video["sha256"]}
        assert row["ms_per_video"] > 0 and row["params"] > 0 and isinstance(row["load"], float)
        assert row["llm_width"] == 64
    tokens = {r["model"]: r["visual_tokens"] for r in rows}
    # Video-Panda at 112: 8 frames of 1 + 4·(4+1); Video-LLaVA at 56/14: 8 frames of 1 + 4·4;
    # Qwen2-VL: 112² fits its pixels, so 4 temporal patches of (8·8) / 2² merged tokens
    assert tokens == {"video_panda": 8 * 21, "video_llava": 8 * 17, "qwen2_vl": 4 * 16}
    assert [r["input_shape"] for r in rows] == [
        [8, 4, 112, 112],
        [1, 8, 3, 56, 56],
        [8, 3, 112, 112],
    ]
    panda = rows[0]
    for row in rows[1:]:
        ratio = result["ratios"][f"{row['model']}/video_panda"]
        assert ratio["tokens"] == round(row["visual_tokens"] / panda["visual_tokens"], 2)
        assert ratio["time"] == round(row["ms_per_video"] / panda["ms_per_video"], 2)
    table = proc.stdout.splitlines()
    assert any(line.startswith("video_llava/video_panda: time ") for line in table)
    assert sum(" | " in line for line in table) == 1 + len(MODELS)  # header and one row each
