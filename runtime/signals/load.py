"""The device's CPU load, one of the context's signals."""

from __future__ import annotations

import os


class LoadSampler:
    """Device load u in [0, 1]: busy share of CPU time since the last call (/proc/stat), or the
    1-minute load average over the CPU count, or `fixed` when given (emulation, tests)."""

    def __init__(self, fixed: float | None = None, proc: str = "/proc"):
        self.fixed = fixed
        self.proc = proc
        self._last: tuple[int, int] | None = None
        self.errors = 0

    def _stat(self) -> tuple[int, int]:
        with open(os.path.join(self.proc, "stat"), encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle

    def __call__(self) -> float:
        if self.fixed is not None:
            return self.fixed
        try:
            total, idle = self._stat()
            last, self._last = self._last, (total, idle)
            if last is not None and total > last[0]:
                return min(1.0, max(0.0, 1.0 - (idle - last[1]) / (total - last[0])))
            with open(os.path.join(self.proc, "loadavg"), encoding="ascii") as f:
                la = float(f.read().split()[0])
            return min(1.0, max(0.0, la / (os.cpu_count() or 1)))
        except (OSError, ValueError, IndexError):
            self.errors += 1  # a missing /proc is not a reason to stop: assume idle
            return 0.0
