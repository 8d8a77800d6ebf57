"""Settings of `carboncp run`: a TOML file and the command line (the command line wins).

Keys (TOML at the top level or under [run]; CLI flags use dashes):
  bundle, server, token, broker, broker_username, broker_password, tls_ca, device_id,
  carbon_ttl_s, carbon_fallback_gco2_per_kwh, carbon_wait_s, carbon_max_future_s,
  carbon_signals, carbon_zone_map, device_zone, server_zone, power, power_rate_hz,
  mode, policy, online, alpha, seed, input, count, interval_s, log, backend, max_loaded_heads,
  local_tail,
  deadline_ms, float16, device_load, battery_pct, probe, probe_after_s, probe_backoff_max_s,
  probe_gate,
  shape_trace, shape_scale, shape_rtt_ms
Every value is checked at start-up; an error names the key and where it came from.
See deploy/run.example.toml.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from carboncp.runtime.checks import check_number, read_toml_table
from carboncp.runtime.errors import ConfigError

MODES = ("A", "M", "R")
# The table policy's online recalibration (docs/METHOD.md §6.3-6.4; decision/policy.ONLINE).
ONLINE = ("aci", "weighted", "split")
BACKENDS = ("litert", "executorch")
_POLICY_RE = re.compile(r"^(table|argmin|local|server|fixed:\d+)$")
_ZONE_RE = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")
# Numeric settings' ranges (check_number keywords); None stays allowed where the default is.
_RANGES: dict[str, dict[str, Any]] = {
    "count": {"lo": 1},
    "max_loaded_heads": {"lo": 0},
    "seed": {"lo": 0},  # numpy's generators take no negative seed
    "interval_s": {"lo": 0, "hi": 86400},  # a day: beyond it the sleep overflows the clock
    "shape_rtt_ms": {"lo": 0},
    "carbon_fallback_gco2_per_kwh": {"lo": 0},
    "shape_scale": {"lo": 0, "lo_open": True},
    "power_rate_hz": {"lo": 0, "hi": 10000, "lo_open": True},  # INA219 converts at <= 2 kHz
    "carbon_ttl_s": {"lo": 0, "lo_open": True},
    "carbon_wait_s": {"lo": 0, "hi": 60},
    "carbon_max_future_s": {"lo": 0, "hi": 3600},
    "deadline_ms": {"lo": 0, "lo_open": True, "hi": 3_600_000},  # an hour; 1e300 overflows timeouts
    "probe_after_s": {"lo": 0, "lo_open": True, "hi": 86400},
    "probe_backoff_max_s": {"lo": 0, "lo_open": True, "hi": 86400},
    "device_load": {"lo": 0, "hi": 1},
    "battery_pct": {"lo": 0, "hi": 100},
    "alpha": {"lo": 0, "hi": 1, "lo_open": True, "hi_open": True},
}


@dataclass
class RunSettings:
    bundle: str | None = None
    server: str | None = None  # http://HOST:PORT; None = local only
    token: str | None = None
    broker: str | None = None  # mqtt://HOST:PORT (mqtts:// for TLS); None = fixed carbon values
    broker_username: str | None = None
    broker_password: str | None = None
    tls_ca: str | None = None
    device_id: str = "device"
    carbon_ttl_s: float = 7200.0
    carbon_fallback_gco2_per_kwh: float = 400.0
    # Before the first inference, wait up to this long for the retained values of both zones
    # (they arrive right after subscribing), so that it does not run on the fallback.
    carbon_wait_s: float = 3.0
    carbon_max_future_s: float = 60.0  # a value stamped further ahead is refused ('future')
    # Signals accepted ("average/direct", "average/lifecycle", "marginal/direct"); None: the
    # bundle's own (docs/BUNDLE.md, default average/direct). Others are refused 'signal_kind'.
    carbon_signals: list[str] | None = None
    carbon_zone_map: dict[str, str] | None = None  # payload zone -> topic zone, {"DE" = "DE-LU"}
    device_zone: str = "DE-LU"
    server_zone: str = "GB"
    power: str = "none"
    power_rate_hz: float = 100.0
    mode: str = "A"
    policy: str = "table"  # table | argmin | local | server | fixed:P
    # The table's online recalibration: aci (default), weighted (weighted CP from a window of
    # recent contexts, ACI below its ESS floor) or split (the table's fixed q̂).
    online: str = "aci"
    alpha: float | None = None
    seed: int = 0
    input: str = "random"  # a folder of .npy (or PNG/JPEG with Pillow) images, or "random"
    count: int = 100
    interval_s: float = 0.0
    log: str | None = None
    backend: str = "litert"
    # LiteRT heads kept loaded (0 = all). Each holds its weights twice (file + XNNPACK's
    # packed copy: ~100 MB for ResNet-18's full head), so 1 keeps the process near 150 MB;
    # changing to another head then costs a reload (~80 ms here). The decision usually
    # alternates between one head and p = 0 (no head), which needs no reload.
    max_loaded_heads: int = 1
    local_tail: bool = False  # finish a failed offload with the device's own ExecuTorch tail
    deadline_ms: float | None = None  # None = the bundle objective's deadline
    float16: bool = False
    device_load: float | None = None  # None = measured from /proc; a number fixes it (emulation)
    battery_pct: float = 100.0
    # The bandwidth probe (docs/METHOD.md §2): when no transfer or probe has measured the link
    # for probe_after_s, a 32 KiB probe before the next decision; each probe doubles the wait
    # (at most probe_backoff_max_s) until a transfer succeeds. probe = false turns it off.
    # probe_gate: a due probe runs only when it can pay for itself (its value to the decisions
    # it informs exceeds its energy; runtime/decision/probe_value.py); false: always.
    probe: bool = True
    probe_gate: bool = True
    probe_after_s: float = 10.0
    probe_backoff_max_s: float = 300.0
    shape_trace: str | None = None
    shape_scale: float = 1.0
    shape_rtt_ms: float = 0.0


KEYS = tuple(f.name for f in fields(RunSettings))


def read_toml(path: str | Path) -> dict[str, Any]:
    """The run settings in a TOML file (top level or under [run])."""
    return read_toml_table(path, "run", f"--config {path}: no such file")


def load_settings(
    config: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunSettings:
    """Settings from the TOML file (if any) updated by the non-None overrides, validated."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if config is not None:
        for key, v in read_toml(config).items():
            if key not in KEYS:
                raise ConfigError(f"{config}: unknown key '{key}' (known: {', '.join(KEYS)})")
            values[key] = v
            origin[key] = str(config)
    for key, v in (overrides or {}).items():
        if key not in KEYS:
            raise ConfigError(f"unknown setting '{key}'")
        if v is not None:
            values[key] = v
            origin[key] = "command line"
    s = RunSettings()
    for key, v in values.items():
        setattr(s, key, _coerce(key, v, origin[key]))
    _validate(s, origin)
    return s


def _coerce(key: str, v: Any, where: str) -> Any:
    if key == "carbon_signals":  # a TOML list, or "a,b" on the command line
        items = [x.strip() for x in v.split(",")] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ConfigError(f"setting '{key}' from {where}: {v!r} is not a list of names")
        return items
    if key == "carbon_zone_map":  # a TOML table, or "DE=DE-LU,FR=FR" on the command line
        if isinstance(v, str):
            pairs = [x.split("=", 1) for x in v.split(",") if x.strip()]
            if not all(len(p) == 2 for p in pairs):
                raise ConfigError(f"setting '{key}' from {where}: {v!r} is not ZONE=ZONE,...")
            v = {a.strip(): b.strip() for a, b in pairs}
        if not isinstance(v, dict) or not all(
            isinstance(a, str) and isinstance(b, str) for a, b in v.items()
        ):
            raise ConfigError(f"setting '{key}' from {where}: {v!r} is not a table of zones")
        return dict(v)
    want = {f.name: f.type for f in fields(RunSettings)}[key]
    kind = str(want)
    try:
        if "bool" in kind:
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
                return v.lower() in ("true", "1", "yes")
            raise TypeError
        if "int" in kind and "float" not in kind:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise TypeError
            return int(v)
        if "float" in kind:
            if isinstance(v, bool):
                raise TypeError
            f = float(v)
            if not math.isfinite(f):
                raise TypeError
            return f
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise TypeError
        return str(v)
    except (TypeError, ValueError):
        raise ConfigError(f"setting '{key}' from {where}: {v!r} is not a valid {kind}") from None


def _validate(s: RunSettings, origin: dict[str, str]) -> None:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"setting '{key}' ({origin.get(key, 'default')}): {msg}")

    if not s.bundle:
        raise bad("bundle", 'a bundle folder is required (--bundle DIR or bundle = "DIR")')
    if s.mode not in MODES:
        raise bad("mode", f"{s.mode!r} is not one of {MODES}")
    if not _POLICY_RE.match(s.policy):
        raise bad("policy", f"{s.policy!r} must be table, argmin, local, server or fixed:P")
    if s.online not in ONLINE:
        raise bad("online", f"{s.online!r} is not one of {ONLINE}")
    if s.backend not in BACKENDS:
        raise bad("backend", f"{s.backend!r} is not one of {BACKENDS}")
    for key, rule in _RANGES.items():
        try:
            check_number(getattr(s, key), "value", none_ok=True, **rule)
        except ConfigError as exc:
            raise bad(key, str(exc).removeprefix("value ")) from None
    for key in ("device_zone", "server_zone"):
        if not _ZONE_RE.match(getattr(s, key)):
            raise bad(key, f"{getattr(s, key)!r} is not a zone name (letters, digits, - and _)")
    _validate_carbon(s, bad)
    if s.server is not None and not re.match(r"^http://[^/\s]+(:\d+)?/?$", s.server):
        raise bad("server", f"{s.server!r} must look like http://HOST:PORT")
    if s.broker is not None and not re.match(r"^mqtts?://[^/\s]+(:\d+)?/?$", s.broker):
        raise bad("broker", f"{s.broker!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
    if s.input != "random" and not Path(s.input).is_dir():
        raise bad("input", f"{s.input!r} is neither 'random' nor a folder")
    if s.shape_trace is not None and not Path(s.shape_trace).is_file():
        from carboncp.runtime.signals.traces import shipped_bandwidth_names

        if s.shape_trace not in shipped_bandwidth_names():
            raise bad(
                "shape_trace",
                f"{s.shape_trace!r} is neither a file nor a shipped trace "
                f"({', '.join(shipped_bandwidth_names())})",
            )


def _validate_carbon(s: RunSettings, bad: Any) -> None:
    """device_id, tls_ca, carbon_signals and carbon_zone_map (the MQTT side's settings)."""
    from carboncp.runtime.signals.carbon import ZONE_RE, check_signals
    from carboncp.runtime.signals.mqtt import DEVICE_ID_RULE

    if not ZONE_RE.match(s.device_id):
        raise bad(
            "device_id",
            f"{s.device_id!r} cannot be an MQTT topic level ({DEVICE_ID_RULE}; no '/', '+', "
            "'#' or spaces)",
        )
    if s.tls_ca is not None and not Path(s.tls_ca).is_file():
        raise bad("tls_ca", f"{s.tls_ca}: no such file (the CA certificate of the broker, PEM)")
    if s.carbon_signals is not None:
        try:
            s.carbon_signals = list(check_signals(s.carbon_signals, "value"))
        except ValueError as exc:
            raise bad("carbon_signals", str(exc).removeprefix("value")) from None
    for src, dst in (s.carbon_zone_map or {}).items():
        if not ZONE_RE.match(src) or not ZONE_RE.match(dst):
            raise bad("carbon_zone_map", f"{src!r} = {dst!r}: both must be zone names")
