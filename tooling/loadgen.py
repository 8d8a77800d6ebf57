"""Background CPU load for profiling the slow-down g(u) (docs/METHOD.md §3).

`BackgroundLoad(level)` keeps `level * n_cpus` cores busy while it is open: one process per
busy core, each running a duty-cycled busy loop (busy for `duty * period_s`, then asleep for
the rest of the period; `duty` = 1 for whole cores, the fraction for the last one). The
processes are started with multiprocessing ("spawn": they share no state with the caller)
and are always stopped (event, then terminate, then kill) when the context exits, even on
an exception.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from typing import Any

PERIOD_S = 0.02


def n_cpus() -> int:
    """CPUs this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _busy(stop: Any, duty: float, period_s: float) -> None:
    x = 0
    while not stop.is_set():
        end = time.perf_counter() + duty * period_s
        while time.perf_counter() < end:
            x += 1  # pure arithmetic: one core busy, no memory traffic to speak of
        if duty < 1.0:
            time.sleep((1.0 - duty) * period_s)


class BackgroundLoad:
    """Keep `level` (0..1) of this machine's CPUs busy while the context is open."""

    def __init__(self, level: float, cpus: int | None = None, period_s: float = PERIOD_S) -> None:
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"load level must be in [0, 1], got {level}")
        self.level = level
        self.cores = level * (cpus or n_cpus())
        self.period_s = period_s
        self._procs: list[Any] = []
        self._stop: Any = None

    def duties(self) -> list[float]:
        whole = math.floor(self.cores + 1e-9)
        frac = self.cores - whole
        return [1.0] * whole + ([frac] if frac > 1e-3 else [])

    def __enter__(self) -> BackgroundLoad:
        duties = self.duties()
        if not duties:
            return self
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        try:
            for d in duties:
                p = ctx.Process(target=_busy, args=(self._stop, d, self.period_s), daemon=True)
                p.start()
                self._procs.append(p)
            time.sleep(0.2)  # let the loops reach steady state
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        for p in self._procs:
            p.join(timeout=2.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():  # pragma: no cover - terminate is enough for a busy loop
                p.kill()
                p.join()
        self._procs.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def __repr__(self) -> str:
        return (
            f"BackgroundLoad(level={self.level}, cores={self.cores:g}, running={len(self._procs)})"
        )
