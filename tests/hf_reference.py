"""The real ``transformers`` video processors, run where they can import: a side virtual
environment with the CUDA build of torch and its ``torchvision`` (docs/backends.md,
"Preprocessing without torchvision").

The project's environment has the CPU build of torch, beside which the registry's
``torchvision`` wheels do not import, and ``transformers``' video processors need
``torchvision``. :func:`reference_python` makes (once, under ``.cache/``) a venv with
:data:`PACKAGES` from the package registry; :func:`run_reference` runs a script in it on inputs
passed as a ``.npz`` + JSON and returns its ``.npz`` + JSON outputs. Tests that need it are
skipped with the reason when the venv cannot be made (set ``VIDEOPANDA_HF_REFERENCE=require`` to
make that a failure, as CI does).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# transformers as in pyproject.toml; torch/torchvision: a pair that imports together, per machine
# (x86_64: a CUDA build, 5.6 GB, that runs on the CPU; aarch64: a CPU build)
TORCH_PAIR = {
    "x86_64": ("torch==2.14.1", "torchvision==0.29.1"),
    "aarch64": ("torch==2.9.1", "torchvision==0.24.1"),
}
PACKAGES = (
    *TORCH_PAIR.get(platform.machine(), TORCH_PAIR["x86_64"]),
    f"transformers=={version('transformers')}",  # the project's pin
)
VENV = Path(os.environ.get("VIDEOPANDA_HF_REFERENCE_VENV", ROOT / ".cache" / "hf-reference-venv"))
_STAMP = VENV / "videopanda-packages.txt"


def reference_python() -> Path:
    """The side venv's python, made on first use (about 80 s from the local wheel cache) by one
    test process at a time (parallel test workers wait for the first one's)."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / f"{VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _make_venv()


def _make_venv() -> Path:
    python = VENV / "bin" / "python"
    wanted = "\n".join(PACKAGES)
    if python.exists() and _STAMP.exists() and _STAMP.read_text() == wanted:
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PACKAGES],
            check=True,
            capture_output=True,
            text=True,
        )
        subprocess.run(
            [str(python), "-c", "import torchvision, transformers"], check=True, capture_output=True
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        reason = f"the reference venv ({' '.join(PACKAGES)}) cannot be made: {detail[-400:]}"
        if os.environ.get("VIDEOPANDA_HF_REFERENCE") == "require":
            pytest.fail(reason)
        pytest.skip(reason)
    _STAMP.write_text(wanted)
    return python


def run_reference(
    script: str, arrays: dict[str, np.ndarray], args: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run ``script`` in the side venv. It finds ``ARRAYS`` (a dict of numpy arrays) and ``ARGS``
    (JSON) defined, and sets ``OUT_ARRAYS`` (dict of numpy arrays) and ``OUT`` (JSON-able)."""
    python = reference_python()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.savez(work / "in.npz", **arrays)
        (work / "in.json").write_text(json.dumps(args))
        program = (
            "import json, numpy as np\n"
            f"ARRAYS = dict(np.load({str(work / 'in.npz')!r}))\n"
            f"ARGS = json.loads(open({str(work / 'in.json')!r}).read())\n"
            "OUT_ARRAYS, OUT = {}, None\n"
            f"{script}\n"
            f"np.savez({str(work / 'out.npz')!r}, **OUT_ARRAYS)\n"
            f"open({str(work / 'out.json')!r}, 'w').write(json.dumps(OUT))\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["HF_HUB_OFFLINE"] = "1"
        done = subprocess.run(
            [str(python), "-c", program], capture_output=True, text=True, env=env, cwd=tmp
        )
        if done.returncode != 0:
            raise AssertionError(f"reference script failed:\n{done.stderr[-3000:]}")
        out = dict(np.load(work / "out.npz"))
        return out, json.loads((work / "out.json").read_text())
