"""Power sources: one small interface, real backends chosen by config, a fake only on request.

`open_power_source(spec)` turns a config string into a source:
  none                  -> None (no measurement; the loop uses the profile's energy model)
  sysfs[:NAME]          -> SysfsBattery (first Battery under /sys/class/power_supply, or NAME)
  ina219[:BUS[:ADDR]]   -> INA219 on /dev/i2c-BUS at ADDR (default 1:0x40)
  jetson                -> JetsonRails (INA3221, JetPack 4 iio or JetPack 5/6 hwmon)
  serial:PORT           -> SerialBridgeSource (firmware_bridge power monitor), e.g. serial:/dev/ttyUSB0
  fake                  -> FakePowerSource (tests and demos only; never a default)
A backend that is not there raises BackendMissingError naming the paths it looked for.
"""

from __future__ import annotations

from carboncp.runtime.errors import ConfigError
from carboncp.runtime.power.base import (
    ClosableSource,
    PowerReading,
    PowerSource,
    integrate_energy_j,
)
from carboncp.runtime.power.faults import FAULT_KINDS, SensorFault
from carboncp.runtime.power.meter import EnergyMeasurement, EnergyMeter

SPECS = ("none", "sysfs[:NAME]", "ina219[:BUS[:ADDR]]", "jetson", "serial:PORT", "fake")


def _int(text: str, key: str) -> int:
    try:
        return int(text, 0)
    except ValueError as exc:
        raise ConfigError(f"power spec {key!r}: {text!r} is not an integer") from exc


def open_power_source(spec: str, **kwargs: object) -> PowerSource | None:
    """Open the backend named by `spec` (see the module docstring); extra kwargs go to it.

    Parameters:
        spec: one of SPECS, e.g. "ina219:1:0x40" (BUS and ADDR decimal or 0x-prefixed); an
            empty spec is "none"; the kind is case-insensitive.
        **kwargs: keyword arguments of the backend's class (e.g. `clock`, `opener`).

    Returns:
        The opened source (close it, or use it as a context manager), or None for "none".

    Raises:
        ConfigError: unknown kind, a non-integer BUS/ADDR, "serial" without a port, or an
            invalid INA219 calibration.
        BackendMissingError: the backend's device, files or package are not there.
        PowerSourceError: the device is there but cannot be opened or set up (a SensorFault).
        TypeError: a keyword argument the backend does not take.
    """
    kind, _, arg = (spec or "none").strip().partition(":")
    kind = kind.lower()
    if kind == "none":
        return None
    if kind == "sysfs":
        from carboncp.runtime.power.sysfs import SysfsBattery

        return SysfsBattery(name=arg or None, **kwargs)  # type: ignore[arg-type]
    if kind == "ina219":
        from carboncp.runtime.power.ina219 import INA219

        parts = [p for p in arg.split(":") if p]
        bus = _int(parts[0], spec) if parts else 1
        addr = _int(parts[1], spec) if len(parts) > 1 else 0x40
        return INA219(bus, addr, **kwargs)  # type: ignore[arg-type]
    if kind == "jetson":
        from carboncp.runtime.power.jetson import JetsonRails

        return JetsonRails(**kwargs)  # type: ignore[arg-type]
    if kind == "serial":
        if not arg:
            raise ConfigError("power spec 'serial' needs a port, e.g. serial:/dev/ttyUSB0")
        from carboncp.runtime.power.serial_bridge import SerialBridgeSource

        return SerialBridgeSource(arg, **kwargs)  # type: ignore[arg-type]
    if kind == "fake":
        from carboncp.runtime.power.fake import FakePowerSource

        # from a config (`carboncp run --power fake`): every energy it gives is flagged
        kwargs.setdefault("energy_flag", "fake_power")
        return FakePowerSource(**kwargs)  # type: ignore[arg-type]
    raise ConfigError(f"unknown power source {spec!r}; expected one of: {', '.join(SPECS)}")


__all__ = [
    "FAULT_KINDS",
    "ClosableSource",
    "EnergyMeasurement",
    "EnergyMeter",
    "PowerReading",
    "PowerSource",
    "SensorFault",
    "integrate_energy_j",
    "open_power_source",
]
