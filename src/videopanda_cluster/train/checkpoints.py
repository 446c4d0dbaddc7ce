"""Training checkpoints in a Store: the HF-layout model folder plus ``trainer_state.pt``.

Layout: ``{prefix}/step-{step:08d}/`` holds ``config.json``, safetensors shards, tokenizer files
(loadable with ``VideoPanda.from_pretrained`` once downloaded) and ``trainer_state.pt``
(optimiser, scheduler, RNG states, step, statistics). ``trainer_state.pt`` is uploaded last, so a
checkpoint counts as complete only when it exists.
"""

from __future__ import annotations

import io
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import cast

import numpy as np
import torch

from ..model.checkpoint import checkpoint_files, internal_name, iter_tensors
from ..model.modeling import VideoPanda
from ..storage import Store

STATE_FILE = "trainer_state.pt"
_STEP = re.compile(r"step-(\d{8})$")


def checkpoint_prefix(prefix: str, step: int) -> str:
    return f"{prefix.rstrip('/')}/step-{step:08d}"


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states, as torch-loadable values."""
    # the global RandomState is MT19937, whose legacy state is this tuple
    kind, keys, pos, has_gauss, gauss = cast(
        tuple[str, np.ndarray, int, int, float], np.random.get_state()
    )
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    store: Store, prefix: str, step: int, model: VideoPanda, trainer_state: dict
) -> str:
    """Upload the model folder and then ``trainer_state.pt``; returns the checkpoint's prefix."""
    key = checkpoint_prefix(prefix, step)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for file in sorted(Path(tmp).iterdir()):
            store.put(f"{key}/{file.name}", file.read_bytes())
    buffer = io.BytesIO()
    torch.save(trainer_state, buffer)
    store.put(f"{key}/{STATE_FILE}", buffer.getvalue())
    return key


def latest_step(store: Store, prefix: str) -> int | None:
    """The step of the newest complete checkpoint under ``prefix``, or None."""
    steps = []
    for key in store.list(prefix.rstrip("/") + "/"):
        folder, _, name = key.rpartition("/")
        match = _STEP.search(folder)
        if name == STATE_FILE and match:
            steps.append(int(match.group(1)))
    return max(steps, default=None)


def download(store: Store, key: str, folder: Path) -> Path:
    """Copy every file under ``key/`` into ``folder`` (streamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in store.list(key + "/"):
        with store.open_read(item) as src, open(folder / item.rpartition("/")[2], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


def load_weights(model: VideoPanda, folder: str | Path) -> None:
    """Copy an HF-layout folder's tensors into ``model`` in place (every key must match)."""
    state = {}
    for file in checkpoint_files(folder):
        for key, tensor in iter_tensors(file):
            name = internal_name(key)
            if name is not None:
                state[name] = tensor
    model.load_state_dict(state, strict=True)


def load_checkpoint(store: Store, prefix: str, step: int, model: VideoPanda) -> dict:
    """Load checkpoint ``step`` into ``model``; returns its trainer state."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = download(store, checkpoint_prefix(prefix, step), Path(tmp))
        load_weights(model, folder)
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
