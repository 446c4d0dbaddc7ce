"""Models shipped with the package: ``videopanda-small``, trained from random weights on the
synthetic corpus by ``scripts/train-small-model.sh`` (its README.md is the model card)."""

from __future__ import annotations

from pathlib import Path

SMALL_MODEL_DIR = Path(__file__).resolve().parent / "videopanda-small"
SMALL_MODEL_ID = "videopanda-small (bundled)"


def has_small_model() -> bool:
    return (SMALL_MODEL_DIR / "model.safetensors").is_file()


def small_model() -> Path:
    """The bundled small model's folder (HF layout, loads with ``VideoPanda.from_pretrained``)."""
    if not has_small_model():
        raise FileNotFoundError(
            f"the bundled model is missing from {SMALL_MODEL_DIR}; "
            "scripts/train-small-model.sh builds it"
        )
    return SMALL_MODEL_DIR
