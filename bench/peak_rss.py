"""Peak resident set size of this process while some work runs, for the benchmarks' children.

The kernel's ru_maxrss is not used: a child inherits its parent's high-water mark.
"""

from __future__ import annotations

import threading

import psutil


class RssSampler(threading.Thread):
    """Highest resident set size seen while the work runs (sampled every ``interval`` s)."""

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def finish(self) -> int:
        """Stop sampling; the peak in bytes, the current RSS included."""
        self.stop.set()
        self.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return self.peak
