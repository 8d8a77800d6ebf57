"""NVIDIA Jetson on-board INA3221 rails, found by probing files (as jetson-stats does).

JetPack 4 (L4T staging iio driver):
  /sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_N, in_power{N}_input (mW),
  in_voltage{N}_input (mV), in_current{N}_input (mA)
JetPack 5/6 (mainline hwmon driver):
  /sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in{N}_label, in{N}_input (mV), curr{N}_input (mA)
The total is `VDD_IN` (or `POM_5V_IN` on older modules); without either, the sum of the rails.
Rails labelled `NC` (not connected) and the hwmon shunt-sum channel (in7, "sum of shunt
voltages") are skipped, and so are rails whose files fail to read at start-up.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from carboncp.runtime.errors import BackendMissingError
from carboncp.runtime.power.base import ClosableSource, PowerReading
from carboncp.runtime.power.faults import Opener, SensorFault, read_number, read_text

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
SHUNT_SUM_CHANNEL = 7
IIO_GLOB = "bus/i2c/drivers/ina3221x/*/iio:device*"
HWMON_GLOB = "bus/i2c/drivers/ina3221/*/hwmon/hwmon*"


@dataclass(frozen=True)
class Rail:
    label: str
    voltage_path: str
    current_path: str
    power_path: str | None  # iio has a power file; hwmon power = V * I


def _probe_iio(folder: str, opener: Opener | None) -> list[Rail]:
    rails = []
    for path in sorted(glob.glob(os.path.join(folder, "rail_name_*"))):
        n = path.rsplit("_", 1)[1]
        rails.append(
            Rail(
                read_text(path, opener) or "",
                os.path.join(folder, f"in_voltage{n}_input"),
                os.path.join(folder, f"in_current{n}_input"),
                os.path.join(folder, f"in_power{n}_input"),
            )
        )
    return rails


def _probe_hwmon(folder: str, opener: Opener | None) -> list[Rail]:
    rails = []
    for path in sorted(glob.glob(os.path.join(folder, "in*_label"))):
        m = re.fullmatch(r"in(\d+)_label", os.path.basename(path))
        if not m or int(m.group(1)) == SHUNT_SUM_CHANNEL:
            continue
        n = m.group(1)
        label = read_text(path, opener) or ""
        if "sum of shunt" in label.lower():
            continue
        rails.append(
            Rail(
                label,
                os.path.join(folder, f"in{n}_input"),
                os.path.join(folder, f"curr{n}_input"),
                None,
            )
        )
    return rails


class JetsonRails(ClosableSource):
    """Power from the Jetson's INA3221 rails; `rails` holds every usable rail, `total` the one used.

    A reading is the `total` rail's power_mw, voltage_mv and current_ma (source
    "jetson:VDD_IN"), or without a total rail the sum of the rails' power_mw (flag
    "rail_sum"). `skipped` maps each unused rail to the reason.

    Parameters:
        root: the sysfs mount to probe (tests point it at a fake tree).
        opener: opens a rail file for reading (tests).
        clock: timestamps readings (time.monotonic seconds).

    Raises:
        BackendMissingError: no rail under `root` could be read.

    `read()` raises SensorFault (a PowerSourceError) when a rail file it needs fails to read
    or parse.
    """

    name = "jetson"

    def __init__(
        self,
        root: str = "/sys",
        *,
        opener: Opener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock)
        self.root = root
        self._opener = opener
        self.skipped: dict[str, str] = {}
        found: list[Rail] = []
        for folder in sorted(glob.glob(os.path.join(root, IIO_GLOB))):
            found += _probe_iio(folder, opener)
        for folder in sorted(glob.glob(os.path.join(root, HWMON_GLOB))):
            found += _probe_hwmon(folder, opener)
        self.rails: dict[str, Rail] = {}
        for rail in found:
            if not rail.label or rail.label.upper().startswith("NC"):
                self.skipped[rail.label or rail.voltage_path] = "not connected"
                continue
            try:
                self._read_rail(rail)
            except SensorFault as exc:  # jetson-stats: skip rails that fail to read
                self.skipped[rail.label] = f"{exc.kind}: {exc}"
                continue
            self.rails.setdefault(rail.label, rail)
        if not self.rails:
            raise BackendMissingError(
                f"no readable INA3221 rails: looked for {os.path.join(root, IIO_GLOB)}/rail_name_N "
                f"and {os.path.join(root, HWMON_GLOB)}/inN_label"
                + (f" (skipped: {self.skipped})" if self.skipped else "")
            )
        self.total = next((n for n in TOTAL_RAILS if n in self.rails), None)
        self.last_power_mw: float | None = None

    def _read_rail(self, rail: Rail) -> tuple[float, float, float]:
        v = read_number(rail.voltage_path, self._opener)
        i = read_number(rail.current_path, self._opener)
        p = read_number(rail.power_path, self._opener) if rail.power_path else v * i / 1000.0
        return v, i, p

    def _read(self) -> PowerReading:
        t = self.clock()
        if self.total is not None:
            v, i, p = self._read_rail(self.rails[self.total])
            self.last_power_mw = p
            return PowerReading(t, p, v, i, None, f"jetson:{self.total}")
        p = sum(self._read_rail(r)[2] for r in self.rails.values())
        self.last_power_mw = p
        return PowerReading(t, p, None, None, None, "jetson:sum", ("rail_sum",))

    def read_rails(self) -> dict[str, float]:
        """power_mw per rail now (rails that fail this time are left out)."""
        out = {}
        for label, rail in self.rails.items():
            try:
                out[label] = self._read_rail(rail)[2]
            except SensorFault:
                continue
        return out

    def _describe(self) -> str:
        return f"root={self.root} total={self.total or 'sum'} rails={list(self.rails)} power_mw={self.last_power_mw}"
