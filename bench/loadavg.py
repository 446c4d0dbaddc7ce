"""The machine's load, printed beside every figure the benchmarks take on a shared machine."""

from __future__ import annotations

import os


def load() -> float:
    """The 1-minute load average, rounded to 2 places."""
    return round(os.getloadavg()[0], 2)
