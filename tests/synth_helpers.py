"""A small synthetic corpus for tests that need scene ground truth and a letterbox."""

from __future__ import annotations

from pathlib import Path

from videopanda_cluster.train.synth import SynthOptions, write_synth

# 128x96 frames are letterboxed at 112 and 224 px; large shapes span several STAB cells
LETTERBOXED = SynthOptions(width=128, height=96, radius=(0.16, 0.24), travel=(0.6, 1.0))


def letterboxed_corpus(root: Path, seed: int, videos: int) -> Path:
    """Write a ``videopanda synth`` corpus of LETTERBOXED clips to ``root``."""
    write_synth(root, seed=seed, videos=videos, options=LETTERBOXED)
    return root
