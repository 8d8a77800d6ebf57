"""Mapping the microcontroller's clock onto the host's monotonic clock.

A sample taken at MCU time m arrives at host time h = m + offset + drift*(m - m0) + latency,
where the USB/serial latency is positive and jittery (buffering, scheduling). The smallest
observed h - m over a stretch of time is the least-delayed frame, so the *lower envelope*
of h - m tracks offset + drift with the jitter removed (the min-offset idea used by
NTP-style clock filters). ClockMap keeps the minimum of h - m per time bucket, fits a line
through the recent bucket minima (least squares, slope clamped to a crystal's plausible
drift), then lowers the line until no minimum lies below it.
"""

from __future__ import annotations

import math
from collections import deque


class ClockMap:
    """host_s = mcu_s + offset(mcu_s); offset is a line fitted to the lower envelope."""

    def __init__(
        self, bucket_s: float = 0.25, window: int = 64, max_drift_ppm: float = 1000.0
    ) -> None:
        self.bucket_s = bucket_s
        self.max_drift = max_drift_ppm * 1e-6
        self._minima: deque[tuple[float, float]] = deque(maxlen=window)  # (mcu_s, offset_s)
        self._cur: list[float] | None = None  # [bucket index, mcu_s, offset_s] of open bucket
        self._fit: tuple[float, float, float] | None = None  # (m0, offset at m0, slope)

    @property
    def drift_ppm(self) -> float:
        """Slope of the offset: host seconds gained per MCU second, in ppm (negative when
        the MCU's crystal runs fast)."""
        return self._fit[2] * 1e6 if self._fit else 0.0

    def reset(self) -> None:
        self._minima.clear()
        self._cur = None
        self._fit = None

    def add(self, mcu_s: float, host_s: float) -> None:
        """One observation: a frame stamped mcu_s by the device arrived at host_s."""
        off = host_s - mcu_s
        idx = math.floor(mcu_s / self.bucket_s)
        cur = self._cur
        if cur is None or idx != cur[0]:
            if cur is not None:
                self._minima.append((cur[1], cur[2]))
                self._refit()
            self._cur = [idx, mcu_s, off]
        elif off < cur[2]:
            cur[1], cur[2] = mcu_s, off

    def _refit(self) -> None:
        pts = list(self._minima)
        if len(pts) < 4:
            m0, o0 = min(pts, key=lambda p: p[1])
            self._fit = (m0, o0, 0.0)
            return
        n = len(pts)
        mm = sum(p[0] for p in pts) / n
        mo = sum(p[1] for p in pts) / n
        sxx = sum((p[0] - mm) ** 2 for p in pts)
        sxy = sum((p[0] - mm) * (p[1] - mo) for p in pts)
        slope = sxy / sxx if sxx > 0 else 0.0
        slope = max(-self.max_drift, min(self.max_drift, slope))
        # lower the line onto the envelope: no bucket minimum may lie below it
        lift = max(mo + slope * (m - mm) - o for m, o in pts)
        self._fit = (mm, mo - lift, slope)

    def offset_s(self, mcu_s: float) -> float:
        cur = self._cur
        if self._fit is None:
            if cur is None:
                raise ValueError("no observations yet")
            return cur[2]
        m0, o0, slope = self._fit
        off = o0 + slope * (mcu_s - m0)
        if cur is not None:  # a newer, lower point than the fit knows about wins
            off = min(off, cur[2] + slope * (mcu_s - cur[1]))
        return off

    def to_host(self, mcu_s: float) -> float:
        return mcu_s + self.offset_s(mcu_s)
