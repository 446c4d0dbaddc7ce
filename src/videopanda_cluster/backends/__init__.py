"""Video-LLM backends: the registry from a checkpoint folder's ``config.json`` ``model_type`` to
the backend class that runs it (``base.py`` is the interface; docs/backends.md).

The registry holds a function returning the class, so a backend's module (and torch) is imported
only when that backend is used; the driver plans with the class's ``frame_spec`` (JSON only)
before any model loads, the workers load the model with its ``load``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import DecodedVideo, UnsupportedModel, VideoBackend

__all__ = ["BACKENDS", "DecodedVideo", "UnsupportedModel", "VideoBackend", "backend_class",
           "backend_kind", "load_backend"]  # fmt: skip


def _lazy(module: str, name: str) -> Callable[[], type[VideoBackend]]:
    """A function returning backend class ``name`` of ``module``, imported when first called."""

    def backend() -> type[VideoBackend]:
        return getattr(importlib.import_module(f".{module}", __name__), name)

    return backend


# model_type of config.json -> its backend class (imported when called)
BACKENDS: dict[str, Callable[[], type[VideoBackend]]] = {
    "videopanda": _lazy("video_panda", "VideoPandaBackend"),
    "video_llava": _lazy("video_llava", "VideoLlavaBackend"),
    "llava_next_video": _lazy("llava_next_video", "LlavaNextVideoBackend"),
    "qwen2_vl": _lazy("qwen2_vl", "Qwen2VLBackend"),
    "qwen2_5_vl": _lazy("qwen2_vl", "Qwen2_5_VLBackend"),
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


def backend_class(folder: str | Path, requested: str | None = None) -> type[VideoBackend]:
    """The backend class of ``folder`` (:func:`backend_kind`); no model is loaded."""
    return BACKENDS[backend_kind(folder, requested)]()


def load_backend(folder: str | Path, *, kind: str | None = None, **kwargs: Any) -> VideoBackend:
    """The backend for ``folder`` (``kind`` overrides its ``model_type``); ``kwargs`` go to its
    ``load`` (``device``, ``with_llm``, ``attention``)."""
    return backend_class(folder, kind).load(folder, **kwargs)
