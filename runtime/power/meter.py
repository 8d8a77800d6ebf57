"""Energy over an inference window from a background sampler, with a modelled fallback.

A thread reads the source at `rate_hz` into a bounded ring buffer; every reading passes
parse -> finite -> range -> staleness (`check_reading`). A failed reading is counted by kind and
never stops the sampler. `energy_j(t0_s, t1_s)` integrates the window by the trapezoid rule
(or asks a streaming source such as the serial bridge for its own full-rate integral); when the
window saw a fault, or has no samples, or the battery was charging, the caller's modelled energy
is used and the measurement is flagged (docs/FAULTS.md).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from carboncp.runtime.power.base import PowerReading, PowerSource, integrate_energy_j
from carboncp.runtime.power.faults import SensorFault, check_reading

# Readings with these flags do not measure the device's draw (the battery is being charged).
NOT_DEVICE_DRAW = ("charging", "external_power")


def _window(buf: deque, key: Callable[[Any], float], lo: float, hi: float) -> list:
    """Items of a time-ordered ring buffer with lo <= key <= hi, scanning back from the newest
    (windows are recent: this stays O(window), not O(buffer))."""
    out = []
    for item in reversed(buf):
        t = key(item)
        if t < lo:
            break
        if t <= hi:
            out.append(item)
    out.reverse()
    return out


@dataclass(frozen=True)
class EnergyMeasurement:
    """Energy over [t0_s, t1_s]; `energy_j` is None only when no measurement and no model exist."""

    energy_j: float | None
    samples: int
    flags: tuple[str, ...] = ()
    t0_s: float = 0.0
    t1_s: float = 0.0

    @property
    def modelled(self) -> bool:
        return "modelled" in self.flags


@dataclass
class MeasureWindow:
    """Yielded by `EnergyMeter.measure()`; set `modelled_j` inside the block if known late."""

    t0_s: float
    t1_s: float | None = None
    modelled_j: float | None = None
    modelled_power_mw: float | None = None
    result: EnergyMeasurement | None = None


class EnergyMeter:
    """Background sampler over a PowerSource. `start()`, then `energy_j()` or `measure()`;
    `close()` is idempotent and closes the source too when `owns_source`.

    As a context manager it starts on entry and closes on exit. Failed readings are counted
    in `fault_counts` by SensorFault kind and never stop the sampler.

    Parameters:
        source: the power source to read.
        rate_hz: readings per second (> 0).
        fallback_power_mw: the modelled power when a window has no usable measurement and the
            caller gives no model; None leaves such a window's energy_j None.
        max_power_mw: readings beyond ±this are faults (kind "range").
        max_age_s: readings older than this are faults (kind "stale"); None uses
            max(1 s, 10 sample periods).
        buffer_s: how many seconds of readings the ring buffer keeps.
        owns_source: close the source in `close()`.
        clock: the clock windows are given in (time.monotonic seconds, as `PowerReading.t_s`).

    Raises:
        ValueError: rate_hz is not > 0.
    """

    def __init__(
        self,
        source: PowerSource,
        rate_hz: float = 200.0,
        fallback_power_mw: float | None = None,
        *,
        max_power_mw: float = 500_000.0,
        max_age_s: float | None = None,
        buffer_s: float = 120.0,
        owns_source: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.source, self.rate_hz = source, float(rate_hz)
        self.period_s = 1.0 / self.rate_hz
        self.fallback_power_mw = fallback_power_mw
        self.max_power_mw = max_power_mw
        self.max_age_s = max_age_s if max_age_s is not None else max(1.0, 10 * self.period_s)
        self.owns_source, self.clock = owns_source, clock
        size = int(self.rate_hz * buffer_s) + 2
        self._samples: deque[PowerReading] = deque(maxlen=size)
        self._faults: deque[tuple[float, str]] = deque(maxlen=size)
        self.fault_counts: Counter[str] = Counter()
        self.reads = 0
        self.last_fault: str | None = None
        self._last_tick_s = float("-inf")
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> EnergyMeter:
        """Start the sampler thread (once; later calls do nothing) and return self.

        Raises:
            RuntimeError: the meter is closed.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="carboncp-energy", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the sampler (waiting up to 2 s for it) and, when `owns_source`, close the
        source. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self.owns_source:
            self.source.close()

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        """Whether the sampler thread is running."""
        return self._thread is not None and self._thread.is_alive()

    # -- sampling --------------------------------------------------------------------------
    def sample_once(self) -> PowerReading | None:
        """Take and check one reading now (the sampler thread calls this); never raises."""
        now = self.clock()
        try:
            r = check_reading(
                self.source.read(), now, max_power_mw=self.max_power_mw, max_age_s=self.max_age_s
            )
        except SensorFault as exc:
            self._fault(now, exc.kind, str(exc))
            return None
        except Exception as exc:  # a backend bug must not kill the sampler
            self._fault(now, "io", f"{type(exc).__name__}: {exc}")
            return None
        with self._cond:
            self.reads += 1
            self._samples.append(r)
            self._last_tick_s = max(now, r.t_s)
            self._cond.notify_all()
        return r

    def _fault(self, now: float, kind: str, message: str) -> None:
        with self._cond:
            self.fault_counts[kind] += 1
            self.last_fault = message
            self._faults.append((now, kind))
            self._last_tick_s = now
            self._cond.notify_all()

    def _run(self) -> None:
        next_t = self.clock()
        while not self._stop.is_set():
            self.sample_once()
            next_t += self.period_s
            delay = next_t - self.clock()
            if delay < -self.period_s:  # fell behind (slow source): do not try to catch up
                next_t = self.clock()
                delay = 0.0
            if delay > 0:
                self._stop.wait(delay)

    # -- energy ----------------------------------------------------------------------------
    def energy_j(
        self,
        t0_s: float,
        t1_s: float,
        *,
        modelled_j: float | None = None,
        modelled_power_mw: float | None = None,
        wait: bool = True,
    ) -> EnergyMeasurement:
        """Energy over [t0_s, t1_s] (clock seconds), measured or, on a fault, modelled.
        A source with an `energy_flag` (the fake that `power = "fake"` opens) adds it to every
        measurement's flags, so records never pass a fake's energy off as measured.

        Parameters:
            t0_s, t1_s: the window, in the meter's clock seconds (t0_s <= t1_s).
            modelled_j: the energy to report when the window cannot be measured.
            modelled_power_mw: else, the power to model it with (energy = power * duration).
            wait: when the sampler runs, wait (at most 3 sample periods) for a reading past
                t1_s.

        Returns:
            An `EnergyMeasurement`: measured (the trapezoid integral of the window's readings,
            or a streaming source's own integral) when the window saw no fault and no
            "charging"/"external_power" reading, and has samples (or the source streams);
            else flagged "modelled" with the reasons ("sensor_fault:<kind>", "charging",
            "external_power", "no_samples") and modelled_j, else modelled_power_mw, else
            `fallback_power_mw` over the window, else energy_j None (flag "no_energy").

        Raises:
            ValueError: t1_s < t0_s.
        """
        m = self._energy_j(t0_s, t1_s, modelled_j, modelled_power_mw, wait)
        flag = getattr(self.source, "energy_flag", None)
        if flag:
            m = replace(m, flags=(*m.flags, flag))
        return m

    def _energy_j(
        self,
        t0_s: float,
        t1_s: float,
        modelled_j: float | None,
        modelled_power_mw: float | None,
        wait: bool,
    ) -> EnergyMeasurement:
        if t1_s < t0_s:
            raise ValueError(f"bad energy window [{t0_s}, {t1_s}]")
        margin = 2 * self.period_s
        with self._cond:
            if wait and self.alive:  # let the sampler take one reading past the window's end
                self._cond.wait_for(lambda: self._last_tick_s >= t1_s, timeout=3 * self.period_s)
            readings = _window(self._samples, lambda r: r.t_s, t0_s - margin, t1_s + margin)
            faults = _window(self._faults, lambda f: f[0], t0_s - margin, t1_s + margin)
            kinds = sorted({k for _, k in faults})
        flags = [f"sensor_fault:{k}" for k in kinds]
        draw = [f for f in NOT_DEVICE_DRAW if any(f in r.flags for r in readings)]
        flags += draw
        if not kinds and not draw:
            stream = getattr(self.source, "energy_between", None)
            try:
                if stream is not None:
                    e, n = stream(t0_s, t1_s)
                    return EnergyMeasurement(e, n, (), t0_s, t1_s)
                if readings:
                    e = integrate_energy_j(readings, t0_s, t1_s)
                    return EnergyMeasurement(e, len(readings), (), t0_s, t1_s)
                flags.append("no_samples")
            except SensorFault as exc:
                self._fault(self.clock(), exc.kind, str(exc))
                flags.append(f"sensor_fault:{exc.kind}")
        return self._modelled(t0_s, t1_s, len(readings), flags, modelled_j, modelled_power_mw)

    def _modelled(
        self,
        t0_s: float,
        t1_s: float,
        n: int,
        flags: list[str],
        modelled_j: float | None,
        modelled_power_mw: float | None,
    ) -> EnergyMeasurement:
        dt = t1_s - t0_s
        if modelled_j is not None:
            e: float | None = modelled_j
        elif modelled_power_mw is not None:
            e = modelled_power_mw * dt / 1000.0
        elif self.fallback_power_mw is not None:
            e = self.fallback_power_mw * dt / 1000.0
        else:
            e = None
            flags.append("no_energy")
        return EnergyMeasurement(e, n, ("modelled", *flags), t0_s, t1_s)

    @contextmanager
    def measure(
        self,
        *,
        modelled_j: float | None = None,
        modelled_power_mw: float | None = None,
        wait: bool = True,
    ) -> Iterator[MeasureWindow]:
        """`with meter.measure() as w: run()` then `w.result` is the EnergyMeasurement.

        With `wait` the exit waits (at most 3 sample periods) for a reading past the window's
        end; on a latency-critical path pass wait=False, or call `energy_j(t0, t1)` later.

        Parameters:
            modelled_j, modelled_power_mw, wait: as for `energy_j` (the models can also be set
                on the yielded `MeasureWindow` inside the block).

        Yields:
            The `MeasureWindow`; its `result` is set on exit, also when the block raises.
        """
        w = MeasureWindow(self.clock(), modelled_j=modelled_j, modelled_power_mw=modelled_power_mw)
        try:
            yield w
        finally:
            w.t1_s = self.clock()
            w.result = self.energy_j(
                w.t0_s,
                w.t1_s,
                modelled_j=w.modelled_j,
                modelled_power_mw=w.modelled_power_mw,
                wait=wait,
            )

    def latest(self) -> PowerReading | None:
        """The newest checked reading, or None before the first."""
        with self._cond:
            return self._samples[-1] if self._samples else None

    @property
    def stats(self) -> dict:
        """reads, faults (count per kind), buffered readings, rate_hz and alive."""
        return {
            "reads": self.reads,
            "faults": dict(self.fault_counts),
            "buffered": len(self._samples),
            "rate_hz": self.rate_hz,
            "alive": self.alive,
        }

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self.alive else "stopped")
        return (
            f"<EnergyMeter {state} source={self.source!r} rate_hz={self.rate_hz} "
            f"reads={self.reads} faults={dict(self.fault_counts)}>"
        )
