"""TI INA219 current/power monitor on Linux I2C (/dev/i2c-N), no driver package required.

Register map and calibration follow the TI datasheet (SBOS448): registers are 16-bit
big-endian; Current_LSB = max_expected_a / 2^15; Cal = trunc(0.04096 / (Current_LSB * R_shunt));
Power_LSB = 20 * Current_LSB; bus voltage LSB 4 mV in bits 15..3, CNVR = bit 1 (a conversion
finished since the last power-register read), OVF = bit 0 (the power/current math overflowed:
the current register is then meaningless and is never returned as a value).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Protocol

from carboncp.runtime.errors import BackendMissingError, ConfigError
from carboncp.runtime.power.base import ClosableSource, PowerReading
from carboncp.runtime.power.faults import SensorFault, fault_from_oserror

REG_CONFIG = 0x00
REG_SHUNT = 0x01
REG_BUS = 0x02
REG_POWER = 0x03
REG_CURRENT = 0x04
REG_CALIBRATION = 0x05

# 32 V bus range, PGA /8 (+-320 mV shunt), 12-bit bus and shunt ADC, continuous shunt+bus.
CONFIG_32V_320MV_12BIT = 0x399F
CONFIG_RESET = 0x8000
PGA_SHUNT_LIMIT_V = 0.32
I2C_SLAVE = 0x0703  # linux/i2c-dev.h


class I2CBus(Protocol):
    """What the INA219 needs of an I2C bus (16-bit big-endian register access)."""

    def read_u16(self, address: int, register: int) -> int: ...

    def write_u16(self, address: int, register: int, value: int) -> None: ...

    def close(self) -> None: ...


class LinuxI2C:
    """/dev/i2c-N through the i2c-dev ioctl: pointer write then 2-byte read (no smbus2 needed)."""

    def __init__(self, bus: int = 1, device: str | None = None) -> None:
        self.device = device or f"/dev/i2c-{bus}"
        try:
            self._fd: int | None = os.open(self.device, os.O_RDWR)
        except FileNotFoundError as exc:
            raise BackendMissingError(
                f"no I2C bus at {self.device}: enable I2C (raspi-config) or pick another bus"
            ) from exc
        except OSError as exc:
            raise fault_from_oserror(exc, self.device) from exc
        self._addr: int | None = None

    def _select(self, address: int) -> int:
        import fcntl

        if self._fd is None:
            raise SensorFault("io", f"{self.device} is closed", self.device)
        if self._addr != address:
            fcntl.ioctl(self._fd, I2C_SLAVE, address)
            self._addr = address
        return self._fd

    def read_u16(self, address: int, register: int) -> int:
        try:
            fd = self._select(address)
            os.write(fd, bytes([register]))
            data = os.read(fd, 2)
        except OSError as exc:
            raise fault_from_oserror(exc, self.device) from exc
        if len(data) != 2:
            raise SensorFault(
                "empty", f"{self.device}: short read ({len(data)} bytes)", self.device
            )
        return (data[0] << 8) | data[1]

    def write_u16(self, address: int, register: int, value: int) -> None:
        try:
            os.write(self._select(address), bytes([register, (value >> 8) & 0xFF, value & 0xFF]))
        except OSError as exc:
            raise fault_from_oserror(exc, self.device) from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def calibration(shunt_ohms: float, max_expected_a: float) -> tuple[int, float, float]:
    """(calibration register, current_lsb_a, power_lsb_w) per the datasheet, section 8.5.1."""
    if not (shunt_ohms > 0 and max_expected_a > 0):
        raise ConfigError("ina219: shunt_ohms and max_expected_a must be > 0")
    if max_expected_a * shunt_ohms > PGA_SHUNT_LIMIT_V * (1 + 1e-9):
        raise ConfigError(
            f"ina219: max_expected_a*shunt_ohms = {max_expected_a * shunt_ohms:.3f} V exceeds the "
            f"{PGA_SHUNT_LIMIT_V} V shunt range; lower max_expected_a or use a smaller shunt"
        )
    current_lsb = max_expected_a / 32768.0
    cal = math.trunc(0.04096 / (current_lsb * shunt_ohms))
    cal &= 0xFFFE  # bit 0 is read-only
    if not 0 < cal <= 0xFFFE:
        raise ConfigError(f"ina219: calibration {cal} out of range; check shunt_ohms")
    # The register was truncated: derive the LSB the chip actually uses from it.
    current_lsb = 0.04096 / (cal * shunt_ohms)
    return cal, current_lsb, 20.0 * current_lsb


def _signed16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


class INA219(ClosableSource):
    """An INA219 at `address` on I2C `bus`; `i2c` injects a bus (tests, smbus2 adapters).

    Opening writes the configuration (32 V, ±320 mV, 12-bit, continuous) and the calibration.
    A reading has power_mw, voltage_mv (bus) and current_ma; it is flagged "repeat" when no
    new conversion finished within `ready_timeout_s`.

    Parameters:
        bus: the Linux I2C bus number (/dev/i2c-BUS); unused when `i2c` is given.
        address: the chip's 7-bit I2C address.
        shunt_ohms: the shunt resistor.
        max_expected_a: the largest current to measure (sets the LSBs); with shunt_ohms it
            must stay within the 0.32 V shunt range.
        i2c: an `I2CBus` to use instead of opening /dev/i2c-BUS (not closed by `close()`).
        ready_timeout_s: how long `read()` waits for a new conversion.
        clock: timestamps readings (time.monotonic seconds).

    Raises:
        ConfigError: shunt_ohms or max_expected_a is <= 0, or their product exceeds 0.32 V.
        BackendMissingError: /dev/i2c-BUS does not exist.
        SensorFault: the bus cannot be opened or the chip does not take the configuration.

    `read()` raises SensorFault: kind "overflow" (the chip flagged math overflow), "io"
    (the chip lost its calibration, which is rewritten, or a bus error), "missing",
    "permission" or "empty" (a failed or short I2C transfer).
    """

    name = "ina219"

    def __init__(
        self,
        bus: int = 1,
        address: int = 0x40,
        shunt_ohms: float = 0.1,
        max_expected_a: float = 3.2,
        i2c: I2CBus | None = None,
        *,
        ready_timeout_s: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock)
        self.bus, self.address = bus, address
        self.shunt_ohms, self.max_expected_a = shunt_ohms, max_expected_a
        self.cal, self.current_lsb_a, self.power_lsb_w = calibration(shunt_ohms, max_expected_a)
        self.ready_timeout_s = ready_timeout_s
        self._owns_bus = i2c is None
        self._i2c: I2CBus = i2c if i2c is not None else LinuxI2C(bus)
        self.overflows = 0
        self.last_power_mw: float | None = None
        try:
            self._i2c.write_u16(address, REG_CONFIG, CONFIG_32V_320MV_12BIT)
            self._i2c.write_u16(address, REG_CALIBRATION, self.cal)
        except BaseException:
            self.close()
            raise

    def _read(self) -> PowerReading:
        flags: tuple[str, ...] = ()
        deadline = time.monotonic() + self.ready_timeout_s
        bus_raw = self._i2c.read_u16(self.address, REG_BUS)
        while not bus_raw & 0x2 and time.monotonic() < deadline:
            time.sleep(0.0002)
            bus_raw = self._i2c.read_u16(self.address, REG_BUS)
        if not bus_raw & 0x2:
            flags = ("repeat",)  # no new conversion yet: values are the previous conversion's
        if bus_raw & 0x1:
            self.overflows += 1
            raise SensorFault(
                "overflow",
                f"ina219@{self.bus}:{self.address:#04x}: math overflow (current beyond "
                f"{self.max_expected_a} A or shunt range)",
            )
        t = self.clock()
        voltage_mv = (bus_raw >> 3) * 4.0
        cal_back = self._i2c.read_u16(self.address, REG_CALIBRATION)
        if cal_back != self.cal:  # the chip was reset (brown-out): calibration is gone
            self._i2c.write_u16(self.address, REG_CALIBRATION, self.cal)
            raise SensorFault("io", f"ina219@{self.bus}:{self.address:#04x}: lost calibration")
        current_ma = (
            _signed16(self._i2c.read_u16(self.address, REG_CURRENT)) * self.current_lsb_a * 1e3
        )
        power_mw = (
            self._i2c.read_u16(self.address, REG_POWER) * self.power_lsb_w * 1e3
        )  # clears CNVR
        self.last_power_mw = power_mw
        return PowerReading(t, power_mw, voltage_mv, current_ma, None, "ina219", flags)

    def _close(self) -> None:
        if self._owns_bus:
            self._i2c.close()

    def _describe(self) -> str:
        return (
            f"bus={self.bus} address={self.address:#04x} shunt={self.shunt_ohms} ohm "
            f"cal={self.cal} power_mw={self.last_power_mw}"
        )
