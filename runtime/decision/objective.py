"""The objective config of docs/METHOD.md §3-4: weights, SLO, deadline, battery shaping, radio.

One TOML file (docs/objective.example.toml) sets it; the bundle stores it as its
'objective' section, and the cost model, labels and table are only valid for that config.
Changing it means relabelling and recalibrating.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from carboncp.runtime.checks import check_choice, check_number, read_toml_table
from carboncp.runtime.decision.context import CONTEXT_FIELDS
from carboncp.runtime.errors import ConfigError

# Huang et al., "A Close Examination of Performance and Power Characteristics of 4G LTE
# Networks", MobiSys 2012, uplink power model P = alpha_u * B + beta (mW, B in Mbit/s), as
# widely cited from that paper's power-model table (docs/METHOD.md §3). "ethernet" is ours: a
# wired PHY draws about the same whether or not it sends, and that draw is already in the
# board's idle power, so its marginal transmit power is taken as 0.
RADIO_MODELS: dict[str, tuple[float, float]] = {
    "wifi": (283.17, 132.86),
    "lte": (438.39, 1288.04),
    "3g": (868.98, 817.88),
    "ethernet": (0.0, 0.0),
}

# The 2012 fits were made on phones at a few Mbit/s; extrapolated linearly they overstate
# power on fast links (50 Mbit/s of WiFi would be 14 W, more than a whole Pi 4 draws). We
# hold the power constant above this rate: the model's own value at 10 Mbit/s (WiFi 2.96 W,
# LTE 5.67 W), the order of magnitude of the throughputs the fit covered. Energy per bit then
# keeps falling with B, as measured for modern WiFi/5G radios. Configurable (radio_cap_mbps).
DEFAULT_RADIO_CAP_MBPS = 10.0

# Edge server's marginal power while it runs a tail (not its whole draw). An estimate, not a
# measurement: a 2-socket x86 server of ~2020 draws ~100-150 W more at full load than idle
# across 20-40 cores (SPECpower_ssj2008 published results), i.e. about 4-8 W per busy
# core; a single-stream tail keeps one or two cores and the memory system busy, so 15 W.
# Measure it (RAPL, a wall meter) and set server_marginal_mw where you can.
DEFAULT_SERVER_MARGINAL_MW = 15000.0

# The fixed context at which the local-only (p = P) costs normalise J (docs/METHOD.md §4).
DEFAULT_REFERENCE: dict[str, float] = {
    "bandwidth_mbps": 10.0,
    "rtt_ms": 20.0,
    "device_load": 0.0,
    "server_load": 0.0,
    "device_gco2_per_kwh": 300.0,
    "server_gco2_per_kwh": 300.0,
    "battery_pct": 100.0,
}

DEFAULT_DEADLINE_NO_SLO_MS = 1000.0
# /2 added battery_protect_below_pct; a /1 objective (no such key) keeps its battery term on
# at every charge level.
OBJECTIVE_FORMAT = "carboncp-objective/2"
DEVICE_CARBON_MODES = ("live", "fixed")
DEADLINE_RULES = ("fixed", "slack")
_OPTIONAL = (
    "slo_ms",
    "battery_protect_below_pct",
    "deadline_ms",
    "early_abandon_ms",
    "server_marginal_mw",
    "device_fixed_gco2_per_kwh",
)


@dataclass(frozen=True)
class Objective:
    """Weights, constraints and physical options of the per-inference objective J.

    J(p, x) = w_carbon*C/C_ref + w_latency*T/T_ref + w_battery*dSoC*h(b)/dSoC_ref,
    with h(b) = 1 + max(0, (battery_low_pct - b)/battery_low_pct) * battery_k below
    battery_protect_below_pct and h(b) = 0 at or above it (None: the term acts at any b).

    The default is carbon-first (docs/METHOD.md §4): operational carbon subject to the hard
    SLO, no latency term, and the battery term only protecting a battery below 30%.
    Latency and battery weights remain an explicit trade-off (w_latency, w_battery, and
    battery_protect_below_pct = "off" for a battery term at every charge).
    """

    w_carbon: float = 1.0
    w_latency: float = 0.0
    w_battery: float = 0.2
    # Hard latency SLO T_max (ms): partitions above it are infeasible. None = no SLO.
    slo_ms: float | None = 300.0
    # Transfer deadline (ms from the start of the upload to the result back). None = the SLO
    # (a transfer still running when the whole SLO is spent has already violated it; cutting
    # it there bounds the damage), or 1000 ms without an SLO (outages need some deadline).
    deadline_ms: float | None = None
    # Abandon early: a transfer that will miss the deadline is abandoned after this many ms
    # (the device sees from the bytes sent so far that it cannot finish). On by default
    # because the runtime's offload client does exactly that (runtime/link/offload.py); None
    # ("off" in TOML) models a device that waits for the deadline.
    early_abandon_ms: float | None = 50.0
    # "fixed": the deadline above. "slack": abandon as soon as only local completion still
    # fits in the SLO: deadline = slo_ms - tau_d(P) * g_d(u) for the context's load (the
    # fixed deadline when that is <= 0, i.e. when local execution misses the SLO anyway).
    # A fallback then finishes at the SLO instead of past it (needs slo_ms).
    deadline_rule: str = "fixed"
    battery_low_pct: float = 30.0
    battery_k: float = 2.0
    # The battery term acts only below this state of charge (%): it protects a low battery
    # and does not trade carbon for battery drain otherwise. None ("off" in TOML): the
    # battery term acts at every charge level (the objective of bundles built before this
    # key existed, format carboncp-objective/1).
    battery_protect_below_pct: float | None = 30.0
    radio: str = "wifi"
    radio_cap_mbps: float = DEFAULT_RADIO_CAP_MBPS
    # Server marginal power override (mW); None = the profile's (measured or its default).
    server_marginal_mw: float | None = None
    # Network energy (J/bit) charged at the server's intensity; 0 = off (the default).
    e_net_j_per_bit: float = 0.0
    # Device carbon accounting: "live" uses the device zone's live intensity I_d as the
    # proxy for the grid that charged the battery; "fixed" uses device_fixed_gco2_per_kwh.
    device_carbon: str = "live"
    device_fixed_gco2_per_kwh: float | None = None
    reference: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REFERENCE))
    alpha: float = 0.1

    def __post_init__(self) -> None:
        _validate(self)

    def __hash__(self) -> int:  # the reference table is a dict: hash the serialised form
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # -- derived ---------------------------------------------------------------------------
    @property
    def effective_deadline_ms(self) -> float:
        if self.deadline_ms is not None:
            return float(self.deadline_ms)
        if self.slo_ms is not None:
            return float(self.slo_ms)
        return DEFAULT_DEADLINE_NO_SLO_MS

    @property
    def radio_coefficients(self) -> tuple[float, float]:
        """(alpha_u mW per Mbit/s, beta mW) of the radio's linear power model."""
        return RADIO_MODELS[self.radio]

    def radio_power_mw(self, bandwidth_mbps: float) -> float:
        a, b = RADIO_MODELS[self.radio]
        return a * min(max(bandwidth_mbps, 0.0), self.radio_cap_mbps) + b

    def battery_shape(self, battery_pct: float) -> float:
        """h(b): 0 at or above battery_protect_below_pct (the term is off there); else >= 1,
        growing as the battery empties below battery_low_pct."""
        protect = self.battery_protect_below_pct
        if protect is not None and battery_pct >= protect:
            return 0.0
        low = self.battery_low_pct
        return 1.0 + max(0.0, (low - battery_pct) / low) * self.battery_k

    def reference_row(self) -> tuple[float, ...]:
        return tuple(float(self.reference[f]) for f in CONTEXT_FIELDS)

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reference"] = dict(self.reference)
        d["format"] = OBJECTIVE_FORMAT
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "objective") -> Objective:
        d = dict(d)
        if d.pop("format", None) == "carboncp-objective/1":
            # Stored before the battery threshold existed: its battery term acted at every
            # charge level. Keep that objective (labels and tables were built for it).
            d.setdefault("battery_protect_below_pct", None)
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(
                    f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})"
                )
        # TOML has no null: "off" (or "none") switches an optional key off.
        for key in _OPTIONAL:
            if isinstance(d.get(key), str) and d[key].strip().lower() in ("off", "none"):
                d[key] = None
        if "reference" in d:
            ref = d["reference"]
            if not isinstance(ref, dict):
                raise ConfigError(f"{where}: 'reference' must be a table of context fields")
            for key in ref:
                if key not in CONTEXT_FIELDS:
                    raise ConfigError(
                        f"{where}: unknown key 'reference.{key}' (fields: {', '.join(CONTEXT_FIELDS)})"
                    )
            d["reference"] = {**DEFAULT_REFERENCE, **ref}
        try:
            return cls(**d)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def load_objective(path: str | Path | None) -> Objective:
    """The objective from a TOML file (keys as in docs/objective.example.toml); None = defaults.

    The file may hold the keys at the top level or under an `[objective]` table.
    """
    if path is None:
        return Objective()
    path = Path(path)
    data = read_toml_table(path, "objective", f"{path}: no such objective file")
    return Objective.from_dict(data, where=str(path))


# ------------------------------------------------------------------------------------------


def _num(obj: Objective, key: str, lo: float, lo_open: bool = False, none_ok: bool = False) -> None:
    check_number(getattr(obj, key), f"key '{key}'", lo=lo, lo_open=lo_open, none_ok=none_ok)


def _validate(o: Objective) -> None:
    for key in ("w_carbon", "w_latency", "w_battery", "battery_k", "e_net_j_per_bit"):
        _num(o, key, 0.0)
    if o.w_carbon + o.w_latency + o.w_battery <= 0:
        raise ConfigError("keys 'w_carbon', 'w_latency', 'w_battery': at least one must be > 0")
    for key in ("slo_ms", "deadline_ms", "early_abandon_ms", "server_marginal_mw"):
        _num(o, key, 0.0, lo_open=True, none_ok=True)
    check_number(o.battery_low_pct, "key 'battery_low_pct'", lo=0, hi=100, lo_open=True)
    check_number(
        o.battery_protect_below_pct,
        "key 'battery_protect_below_pct'",
        lo=0,
        hi=100,
        lo_open=True,
        none_ok=True,
    )
    _num(o, "radio_cap_mbps", 0.0, lo_open=True)
    check_choice(o.radio, "key 'radio'", RADIO_MODELS)
    check_choice(o.deadline_rule, "key 'deadline_rule'", DEADLINE_RULES)
    if o.deadline_rule == "slack" and o.slo_ms is None:
        raise ConfigError("key 'deadline_rule' = 'slack' needs a latency SLO (key 'slo_ms')")
    check_choice(o.device_carbon, "key 'device_carbon'", DEVICE_CARBON_MODES)
    if o.device_carbon == "fixed":
        if o.device_fixed_gco2_per_kwh is None:
            raise ConfigError(
                "key 'device_fixed_gco2_per_kwh' is required when device_carbon = 'fixed'"
            )
        _num(o, "device_fixed_gco2_per_kwh", 0.0)
    else:
        _num(o, "device_fixed_gco2_per_kwh", 0.0, none_ok=True)
    check_number(o.alpha, "key 'alpha'", lo=0, hi=1, lo_open=True, hi_open=True)
    if not isinstance(o.reference, dict):
        raise ConfigError("key 'reference' must be a table of context fields")
    for f in CONTEXT_FIELDS:
        check_number(o.reference.get(f), f"key 'reference.{f}'", lo=0)
    if o.reference["device_gco2_per_kwh"] <= 0 and o.device_carbon == "live":
        raise ConfigError("key 'reference.device_gco2_per_kwh' must be > 0 (it normalises carbon)")
