"""Sensor faults and the checked read of one sysfs-style number file.

Every reading goes through parse -> finite -> range -> staleness (docs/METHOD.md Appendix B.2). A fault
raises `SensorFault` with a short `kind` from `FAULT_KINDS`; the energy meter counts it by kind,
falls back to the modelled energy and flags the measurement `sensor_fault:<kind>` (docs/FAULTS.md).
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable
from typing import IO

from carboncp.runtime.errors import PowerSourceError
from carboncp.runtime.power.base import PowerReading

# kind -> what happened; the fallback for all of them is the modelled energy, flagged.
FAULT_KINDS = {
    "missing": "the file or device is gone (ENOENT/ENODEV/ENXIO)",
    "permission": "permission denied (EACCES/EPERM)",
    "empty": "the file was empty or the read returned no bytes",
    "parse": "not a number",
    "nan": "NaN or infinite",
    "range": "outside the physically plausible range",
    "stale": "the reading is older than max_age_s",
    "overflow": "the sensor flagged an arithmetic/ADC overflow",
    "io": "any other OS error (EIO, timeout)",
}

Opener = Callable[[str], IO[str]]


class SensorFault(PowerSourceError):
    """One failed reading. `kind` is a key of FAULT_KINDS; `path` names what was read."""

    def __init__(self, kind: str, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind if kind in FAULT_KINDS else "io"
        self.path = path


def _default_opener(path: str) -> IO[str]:
    return open(path, encoding="ascii", errors="replace")


def fault_from_oserror(exc: OSError, path: str) -> SensorFault:
    """Map an OSError to a fault kind, naming the path."""
    if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or isinstance(exc, FileNotFoundError):
        kind = "missing"
    elif exc.errno in (errno.EACCES, errno.EPERM) or isinstance(exc, PermissionError):
        kind = "permission"
    else:
        kind = "io"
    return SensorFault(kind, f"{path}: {exc.strerror or exc}", path)


def read_number(path: str, opener: Opener | None = None) -> float:
    """Read one number from a sysfs-style file: parse, then finite. Raises SensorFault."""
    try:
        with (opener or _default_opener)(path) as fh:
            text = fh.read()
    except OSError as exc:
        raise fault_from_oserror(exc, path) from exc
    text = text.strip().split(" ")[0] if text else ""
    if not text:
        raise SensorFault("empty", f"{path}: empty read", path)
    try:
        value = float(text)
    except ValueError as exc:
        raise SensorFault("parse", f"{path}: not a number: {text[:40]!r}", path) from exc
    if not math.isfinite(value):
        raise SensorFault("nan", f"{path}: non-finite value {text[:40]!r}", path)
    return value


def read_text(path: str, opener: Opener | None = None) -> str | None:
    """Read a short text attribute; None when the file is absent (absent files are normal)."""
    try:
        with (opener or _default_opener)(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise fault_from_oserror(exc, path) from exc


def check_reading(
    reading: PowerReading,
    now_s: float,
    *,
    max_power_mw: float = 1_000_000.0,
    max_age_s: float = 2.0,
) -> PowerReading:
    """Finite -> range -> staleness on a reading a backend returned. Raises SensorFault."""
    where = reading.source or "power source"
    for name in ("power_mw", "voltage_mv", "current_ma", "soc_pct"):
        v = getattr(reading, name)
        if v is not None and not math.isfinite(v):
            raise SensorFault("nan", f"{where}: {name} is {v}")
    if "overflow" in reading.flags:
        raise SensorFault("overflow", f"{where}: sensor overflow flag set")
    p = reading.power_mw
    if p is None:
        raise SensorFault("empty", f"{where}: reading carries no power")
    if not (-max_power_mw <= p <= max_power_mw):
        raise SensorFault("range", f"{where}: power_mw={p} outside +-{max_power_mw}")
    if reading.soc_pct is not None and not (0.0 <= reading.soc_pct <= 100.0):
        raise SensorFault("range", f"{where}: soc_pct={reading.soc_pct} outside 0..100")
    if not math.isfinite(reading.t_s) or now_s - reading.t_s > max_age_s:
        raise SensorFault("stale", f"{where}: reading is {now_s - reading.t_s:.3f} s old")
    if reading.t_s - now_s > 1.0:
        raise SensorFault(
            "stale", f"{where}: reading is from the future ({reading.t_s - now_s:.3f} s)"
        )
    return reading


def path_exists(path: str) -> bool:
    return os.path.exists(path)
