"""VideoPanda Cluster: distributed batch inference for the Video-Panda video-language model."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["VideoPanda", "VideoPandaConfig"]

if TYPE_CHECKING:
    from .model.config import VideoPandaConfig
    from .model.modeling import VideoPanda


def __getattr__(name: str):
    # Imported lazily so that `import videopanda_cluster` (and the CLI) stays light.
    if name == "VideoPanda":
        from .model.modeling import VideoPanda

        return VideoPanda
    if name == "VideoPandaConfig":
        from .model.config import VideoPandaConfig

        return VideoPandaConfig
    raise AttributeError(name)
