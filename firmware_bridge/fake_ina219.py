"""A fake INA219 register model and a fake MCU clock, for tests and the simulator only.

The fake answers the same I2C calls as machine.I2C (readfrom_mem_into, writeto_mem) and
derives its registers the way the chip does (datasheet SBOS448 section 8.5): the shunt and
bus ADCs convert once per conversion cycle; Current = Shunt * Cal / 4096;
Power = Current * Bus / 5000; CNVR is set by a new conversion and cleared by reading the
power register. The load it measures is a known function of world time, so the true energy
over any window is known in closed form (`SineLoad.energy_j`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from .firmware import ina219 as chip


class SineLoad:
    """bus_v(t) = volts; current_a(t) = mean_a + amp_a * sin(2 pi freq_hz t + phase)."""

    def __init__(
        self, volts: float = 5.1, mean_a: float = 0.8, amp_a: float = 0.4, freq_hz: float = 2.0
    ) -> None:
        self.volts, self.mean_a, self.amp_a, self.freq_hz = volts, mean_a, amp_a, freq_hz
        self.phase = 0.3

    def bus_v(self, t_s: float) -> float:
        return self.volts

    def current_a(self, t_s: float) -> float:
        return self.mean_a + self.amp_a * math.sin(2 * math.pi * self.freq_hz * t_s + self.phase)

    def power_w(self, t_s: float) -> float:
        return self.bus_v(t_s) * self.current_a(t_s)

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Exact integral of power over [t0_s, t1_s]."""
        w = 2 * math.pi * self.freq_hz
        cos_term = math.cos(w * t1_s + self.phase) - math.cos(w * t0_s + self.phase)
        return self.volts * (self.mean_a * (t1_s - t0_s) - self.amp_a / w * cos_term)


class FakeMcuClock:
    """MicroPython's tick API over world time, with an offset, a drift and a wrap period."""

    def __init__(
        self,
        world: Callable[[], float] = time.monotonic,
        start_us: int = 0,
        drift_ppm: float = 0.0,
        period_log2: int = 30,
    ) -> None:
        self.world = world
        self.period = 1 << period_log2
        self.period_log2 = period_log2
        self._t0 = world()
        self._start = start_us
        self._rate = 1e6 * (1 + drift_ppm * 1e-6)

    def ticks_us(self) -> int:
        return (self._start + int((self.world() - self._t0) * self._rate)) % self.period

    def ticks_diff(self, a: int, b: int) -> int:
        half = self.period // 2
        return ((a - b + half) % self.period) - half

    def ticks_add(self, a: int, delta: int) -> int:
        return (a + delta) % self.period

    def sleep_us(self, us: int) -> None:
        time.sleep(us / 1e6)


class FakeINA219:
    """Register model of one INA219 on a fake I2C bus (thread-safe)."""

    def __init__(
        self,
        load: SineLoad,
        shunt_ohms: float = 0.1,
        world: Callable[[], float] = time.monotonic,
        address: int = 0x40,
    ) -> None:
        self.load, self.shunt_ohms, self.world, self.address = load, shunt_ohms, world, address
        self.regs = {chip.REG_CONFIG: 0x399F, chip.REG_CAL: 0}  # power-on defaults
        self.fail = False  # set True to make every transfer raise OSError (EIO), like a loose wire
        self.transfers = 0
        self._k = None
        self._cnvr = 0
        self._latched = (0, 0, False)  # shunt_raw, bus_raw, ovf
        self._lock = threading.Lock()

    # -- machine.I2C API -------------------------------------------------------------
    def writeto_mem(self, addr: int, reg: int, data: bytes) -> None:
        with self._lock:
            self._check(addr)
            value = (data[0] << 8) | data[1]
            if reg == chip.REG_CAL:
                value &= 0xFFFE  # bit 0 is not implemented
            if reg in (chip.REG_CONFIG, chip.REG_CAL):
                self.regs[reg] = value

    def readfrom_mem_into(self, addr: int, reg: int, buf: bytearray) -> None:
        with self._lock:
            self._check(addr)
            value = self._read(reg)
            buf[0], buf[1] = value >> 8, value & 0xFF

    # -- model -----------------------------------------------------------------------
    def _check(self, addr: int) -> None:
        self.transfers += 1
        if self.fail or addr != self.address:
            raise OSError(5, "EIO")  # what machine.I2C raises on a NACK

    def _convert(self) -> None:
        config = self.regs[chip.REG_CONFIG]
        conv_s = chip.conversion_time_us(config) / 1e6
        now = self.world()
        k = math.floor(now / conv_s)
        if k == self._k:
            return
        self._k = k
        t = (k - 0.5) * conv_s  # mid-point of the conversion that just completed
        pga = (config >> 11) & 0x3
        full_scale = 4000 * (1 << pga)  # +-40 mV * 2**pga in 10 uV units
        shunt = round(self.load.current_a(t) * self.shunt_ohms / 1e-5)
        ovf = abs(shunt) > full_scale
        shunt = max(-full_scale, min(full_scale, shunt))
        bus = max(0, min(8191, round(self.load.bus_v(t) / 0.004)))
        self._latched = (shunt, bus, ovf)
        self._cnvr = 1

    def _read(self, reg: int) -> int:
        self._convert()
        shunt, bus, ovf = self._latched
        cal = self.regs[chip.REG_CAL]
        current = int(shunt * cal / 4096)  # truncates toward zero like the chip
        if reg == chip.REG_SHUNT:
            return shunt & 0xFFFF
        if reg == chip.REG_BUS:
            return (bus << 3) | (self._cnvr << 1) | int(ovf)
        if reg == chip.REG_CURRENT:
            return current & 0xFFFF
        if reg == chip.REG_POWER:
            self._cnvr = 0
            return min(0xFFFF, abs(current) * bus // 5000)
        return self.regs.get(reg, 0)
