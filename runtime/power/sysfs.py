"""Linux `power_supply` battery (laptops, phones, UPS HATs with a kernel driver).

Units are the kernel's: µV, µA, µW, µWh, µAh (Documentation/ABI/testing/sysfs-class-power).
Absent attributes are normal and give None fields. `status` sets the direction: a discharging
battery's power is the device's draw; while charging (or full on external power) the battery
does not measure the device, so the reading is flagged and the meter uses the modelled energy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from carboncp.runtime.errors import BackendMissingError
from carboncp.runtime.power.base import ClosableSource, PowerReading
from carboncp.runtime.power.faults import Opener, SensorFault, read_number, read_text

DEFAULT_ROOT = "/sys/class/power_supply"


def find_battery(root: str = DEFAULT_ROOT, opener: Opener | None = None) -> str:
    """Name of the first supply under `root` whose `type` is Battery (system scope).

    Raises:
        BackendMissingError: `root` cannot be listed, or holds no such battery.
    """
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise BackendMissingError(
            f"no power_supply directory at {root} ({exc.strerror}); use --power none or another"
        ) from exc
    for name in names:
        kind = _maybe_text(os.path.join(root, name, "type"), opener)
        scope = _maybe_text(os.path.join(root, name, "scope"), opener)
        if kind == "Battery" and scope != "Device":  # scope=Device: a mouse's battery
            return name
    raise BackendMissingError(
        f"no battery in {root}: looked for {root}/*/type == 'Battery' among {names or 'nothing'}"
    )


def _maybe_text(path: str, opener: Opener | None) -> str | None:
    try:
        return read_text(path, opener)
    except SensorFault:
        return None


class SysfsBattery(ClosableSource):
    """One battery under /sys/class/power_supply; `root` and `opener` are injectable for tests.

    A reading's power_mw is |power_now| (µW / 1000), else |voltage_now| * |current_now|;
    soc_pct is energy_now/energy_full or charge_now/charge_full, else `capacity`. Flags:
    "charging" while charging, "external_power" when Full or Not charging (the meter then
    uses the modelled energy).

    Parameters:
        root: the power_supply directory.
        name: the supply's directory name; None takes the first system Battery (`find_battery`).
        opener: opens an attribute file for reading (tests).
        clock: timestamps readings (time.monotonic seconds).

    Raises:
        BackendMissingError: no `root` directory, no battery in it, or no supply `name`.

    `read()` raises SensorFault (a PowerSourceError) when an attribute cannot be read or
    parsed, or neither power_now nor voltage_now + current_now exists.
    """

    name = "sysfs"

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        name: str | None = None,
        *,
        opener: Opener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock)
        self.root = root
        self._opener = opener
        self.battery = name or find_battery(root, opener)
        self.path = os.path.join(root, self.battery)
        if not os.path.isdir(self.path):
            raise BackendMissingError(f"no power supply {self.path}; look in {root} for names")
        self.last_status: str | None = None

    def _f(self, attr: str) -> str:
        return os.path.join(self.path, attr)

    def _opt(self, attr: str) -> float | None:
        """A numeric attribute, or None when the driver does not provide it."""
        path = self._f(attr)
        if not os.path.exists(path):
            return None
        return read_number(path, self._opener)

    def _read(self) -> PowerReading:
        t = self.clock()
        status = read_text(self._f("status"), self._opener)
        self.last_status = status
        uv = self._opt("voltage_now")
        ua = self._opt("current_now")
        uw = self._opt("power_now")
        voltage_mv = None if uv is None else abs(uv) / 1000.0
        current_ma = None if ua is None else abs(ua) / 1000.0  # sign convention varies by driver
        if uw is not None:
            power_mw = abs(uw) / 1000.0
        elif voltage_mv is not None and current_ma is not None:
            power_mw = voltage_mv * current_ma / 1000.0
        else:
            raise SensorFault(
                "missing", f"{self.path}: neither power_now nor voltage_now+current_now", self.path
            )
        soc = self._soc()
        flags: tuple[str, ...] = ()
        if status == "Charging":
            flags = ("charging",)
        elif status in ("Full", "Not charging"):
            flags = ("external_power",)
        return PowerReading(
            t, power_mw, voltage_mv, current_ma, soc, f"sysfs:{self.battery}", flags
        )

    def _soc(self) -> float | None:
        for now_attr, full_attr in (("energy_now", "energy_full"), ("charge_now", "charge_full")):
            now, full = self._opt(now_attr), self._opt(full_attr)
            if now is not None and full:
                return max(0.0, min(100.0, 100.0 * now / full))
        return self._opt("capacity")

    def _describe(self) -> str:
        return f"{self.battery} at {self.path} status={self.last_status}"
