"""Video-LLM backends: the registry from a checkpoint folder's ``config.json`` ``model_type`` to
the backend that runs it (``base.py`` is the interface; docs/backends.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import DecodedVideo, UnsupportedModel, VideoBackend

__all__ = ["BACKENDS", "DecodedVideo", "UnsupportedModel", "VideoBackend", "backend_kind",
           "load_backend"]  # fmt: skip


def _video_panda(folder: str | Path, **kwargs: Any) -> VideoBackend:
    from .video_panda import VideoPandaBackend

    return VideoPandaBackend.load(folder, **kwargs)


def _qwen2_vl(folder: str | Path, **kwargs: Any) -> VideoBackend:
    from .qwen2_vl import Qwen2VLBackend

    return Qwen2VLBackend.load(folder, **kwargs)


def _qwen2_5_vl(folder: str | Path, **kwargs: Any) -> VideoBackend:
    from .qwen2_vl import Qwen2_5_VLBackend

    return Qwen2_5_VLBackend.load(folder, **kwargs)


# model_type of config.json -> the loader of its backend
BACKENDS: dict[str, Callable[..., VideoBackend]] = {
    "videopanda": _video_panda,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
}


def backend_kind(folder: str | Path, requested: str | None = None) -> str:
    """The backend of a checkpoint folder: ``requested`` if given, else its ``model_type``.
    Raises :class:`UnsupportedModel` (one line) for one that no backend runs, and
    FileNotFoundError without a config.json."""
    if requested is not None:
        kind = requested
    else:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in {folder}")
        try:
            kind = str(json.loads(path.read_text()).get("model_type") or "")
        except (ValueError, AttributeError) as exc:
            raise UnsupportedModel(f"{path}: not a JSON object ({exc})") from None
    if kind not in BACKENDS:
        raise UnsupportedModel(
            f"{folder}: no backend for model_type {kind or '(none)'!r}; supported: "
            f"{', '.join(sorted(BACKENDS))}"
        )
    return kind


def load_backend(folder: str | Path, *, kind: str | None = None, **kwargs: Any) -> VideoBackend:
    """The backend for ``folder`` (``kind`` overrides its ``model_type``); ``kwargs`` go to its
    loader (``device``, ``with_llm``, ``attention``)."""
    return BACKENDS[backend_kind(folder, kind)](folder, **kwargs)
