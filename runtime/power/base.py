"""The power-source interface and energy integration over an inference window."""

from __future__ import annotations

import itertools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PowerReading:
    """One timestamped reading; fields a backend cannot measure are None."""

    t_s: float  # host time.monotonic() seconds at which the reading was taken
    power_mw: float | None
    voltage_mv: float | None = None
    current_ma: float | None = None
    soc_pct: float | None = None  # battery state of charge, where the source knows it
    source: str = ""
    flags: tuple[str, ...] = ()  # e.g. ("modelled",) when a fallback produced it


class PowerSource(ABC):
    """A backend that can be read now. `close()` is idempotent; use as a context manager."""

    name: str = "power"

    @abstractmethod
    def read(self) -> PowerReading:
        """Take one reading now. Raises PowerSourceError on a fault the caller must handle.

        Returns:
            A `PowerReading` stamped with the host's time.monotonic() seconds (`t_s`); fields
            the backend cannot measure are None.

        Raises:
            PowerSourceError: the reading failed (a `SensorFault` with its `kind`), or the
                source is closed.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, idempotent by contract
        """Release the device; safe to call twice. `read()` raises PowerSourceError after."""

    def __enter__(self) -> PowerSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def integrate_energy_j(readings: Sequence[PowerReading], t0_s: float, t1_s: float) -> float:
    """Energy in joules over [t0_s, t1_s] by the trapezoid rule on the readings' power.

    Power is held constant beyond the first and last reading (clamped), readings without
    power are skipped. Raises ValueError when no usable reading exists or the window is empty.
    """
    if not (math.isfinite(t0_s) and math.isfinite(t1_s)) or t1_s < t0_s:
        raise ValueError(f"bad energy window [{t0_s}, {t1_s}]")
    pts = sorted((r.t_s, r.power_mw) for r in readings if r.power_mw is not None)
    if not pts:
        raise ValueError("no power readings to integrate")
    if t1_s == t0_s:
        return 0.0

    def power_at(t: float) -> float:
        if t <= pts[0][0]:
            return pts[0][1]
        if t >= pts[-1][0]:
            return pts[-1][1]
        lo, hi = 0, len(pts) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if pts[mid][0] <= t:
                lo = mid
            else:
                hi = mid
        (ta, pa), (tb, pb) = pts[lo], pts[hi]
        return pa if tb == ta else pa + (pb - pa) * (t - ta) / (tb - ta)

    knots = [t0_s] + [t for t, _ in pts if t0_s < t < t1_s] + [t1_s]
    total_mj = 0.0
    for a, b in itertools.pairwise(knots):
        total_mj += 0.5 * (power_at(a) + power_at(b)) * (b - a)
    return total_mj / 1000.0


class ClosableSource(PowerSource):
    """gpiozero-style device plumbing: idempotent `close()`, `closed`, and a repr showing state.

    Subclasses implement `_read()`, optionally `_close()` (called once) and `_describe()`.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._closed = False
        self.clock = clock  # timestamps readings; injectable so tests can step time

    @property
    def closed(self) -> bool:
        return self._closed

    def read(self) -> PowerReading:
        if self._closed:
            from carboncp.runtime.errors import PowerSourceError

            raise PowerSourceError(f"{self!r} is closed")
        return self._read()

    @abstractmethod
    def _read(self) -> PowerReading: ...

    def _close(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close()

    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        name = type(self).__name__
        if self._closed:
            return f"<{name} closed>"
        desc = self._describe()
        return f"<{name} {desc}>" if desc else f"<{name}>"
