"""An in-memory power source for tests: a constant, a function of time, or a scripted list.

Only `open_power_source("fake")` or direct construction makes one; it is never a default and
never stands in for a missing backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from carboncp.runtime.power.base import ClosableSource, PowerReading


class FakePowerSource(ClosableSource):
    """`power_mw` constant or `profile(t_s) -> power_mw`; `script` items (a float or an Exception)
    are consumed first, one per read, so tests can inject faults at known points.

    Parameters:
        power_mw: the constant power when neither `profile` nor the script gives one.
        profile: power_mw as a function of the clock's time.
        script: per read, a power_mw, an exception to raise, or a PowerReading to return.
        voltage_mv: reported voltage (current_ma = power_mw / voltage_mv * 1000); with None
            or 0, current_ma is None.
        clock: timestamps readings (time.monotonic seconds).

    `read()` raises whatever exception the script holds for that read.
    """

    name = "fake"

    def __init__(
        self,
        power_mw: float = 1000.0,
        *,
        profile: Callable[[float], float] | None = None,
        script: Iterable[float | BaseException | PowerReading] = (),
        voltage_mv: float | None = 5000.0,
        clock: Callable[[], float] = time.monotonic,
        energy_flag: str | None = None,
    ) -> None:
        super().__init__(clock)
        self.energy_flag = energy_flag  # added to the meter's measurement flags
        self.power_mw, self.profile, self.voltage_mv = power_mw, profile, voltage_mv
        self.script = list(script)
        self.reads = 0

    def fail_next(self, *items: float | BaseException | PowerReading) -> None:
        """Append `items` to the script (consumed by the next reads, in order)."""
        self.script.extend(items)

    def _read(self) -> PowerReading:
        self.reads += 1
        t = self.clock()
        item: float | BaseException | PowerReading | None = (
            self.script.pop(0) if self.script else None
        )
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, PowerReading):
            return item
        p = item if item is not None else (self.profile(t) if self.profile else self.power_mw)
        i = None if not self.voltage_mv else p / self.voltage_mv * 1000.0
        return PowerReading(t, p, self.voltage_mv, i, None, "fake")

    def _describe(self) -> str:
        return f"power_mw={self.power_mw} reads={self.reads} scripted={len(self.script)}"
