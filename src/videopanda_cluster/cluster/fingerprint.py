"""Content hashes for provenance and cache keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import torch

    from ..video.probe import Deadline

CHUNK = 1 << 20


def stream_sha256(
    stream: BinaryIO,
    deadline: Deadline | None = None,
    copy_to: BinaryIO | None = None,
    chunk: int = CHUNK,
) -> str:
    """sha256 of a readable stream, read in ``chunk``-byte pieces from the start.

    ``deadline`` is checked between chunks (it raises a ``timeout`` VideoDecodeError). With
    ``copy_to``, every chunk is also written there: one read both hashes and copies the stream.
    """
    digest = hashlib.sha256()
    stream.seek(0)
    while data := stream.read(chunk):
        if deadline is not None:
            deadline.check()
        digest.update(data)
        if copy_to is not None:
            copy_to.write(data)
    stream.seek(0)
    return digest.hexdigest()


def checkpoint_fingerprint(folder: str | Path) -> str:
    """A cheap identity of a checkpoint folder: config.json plus, for each weight file, its name,
    size and the sha256 of its first and last MiB (hashing 13 GB of weights would take minutes)."""
    from ..model.checkpoint import checkpoint_files

    folder = Path(folder)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for file in checkpoint_files(folder):
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(CHUNK)
            fh.seek(max(0, size - CHUNK))
            tail = fh.read(CHUNK)
        digest.update(json.dumps([file.name, size]).encode())
        digest.update(hashlib.sha256(head + tail).digest())
    return digest.hexdigest()


def module_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
