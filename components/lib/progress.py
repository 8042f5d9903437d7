"""Progress lines for long loops: rate-limited so logs stay readable on KFP and in a terminal."""
from __future__ import annotations

import sys
import time


class Progress:
    """Prints `label: done/total (pct) rate/s` at most every `every_s` seconds, and once at the end."""

    def __init__(self, label: str, total: int, unit: str = "images", every_s: float = 5.0, stream=None):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.stream = stream or sys.stdout
        self.done = 0
        self.start = self._last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s and self.done < self.total:
            self._last = now
            self._print(now)

    def close(self) -> float:
        """Print the final line and return the elapsed seconds."""
        now = time.perf_counter()
        self._print(now)
        return now - self.start

    def _print(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
              f"{self.done / elapsed:.0f} {self.unit}/s, {elapsed:.1f}s", file=self.stream, flush=True)
