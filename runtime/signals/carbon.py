"""Carbon-intensity signals: parse and validate one MQTT payload (no network here).

Accepted payloads (units converted once, here, to gCO2eq/kWh):
- this project's JSON: {"zone", "gco2_per_kwh", "ts" (ISO 8601 or epoch s), "source",
  "kind": "average"|"marginal", "basis": "direct"|"lifecycle" (default direct),
  optional "forecast": [{"ts", "gco2_per_kwh"}...] or [[ts, v]...],
  optional "replay": true (a value replayed from a historical trace; see below)};
- Electricity Maps `carbon-intensity/latest` {"zone", "carbonIntensity", "datetime",
  "emissionFactorType"}, `/history` {"zone", "history": [...]} and `/forecast`
  {"zone", "forecast": [...]}; `emissionFactorType` absent means lifecycle (the API's default);
- UK Carbon Intensity API: {"data": [{"from", "intensity": {"actual", "forecast"}}]}
  (actual when present, else forecast); average, direct;
- WattTime: v2 {"ba", "moer", "point_time"} or v3 {"data": [{"point_time", "value"}],
  "meta": {"region", "signal_type", "units": "lbs_co2_per_mwh"}} (historical or forecast);
  lbs/MWh x 0.45359237 = g/kWh; `co2_moer` (and v2) is marginal, `co2_aoer` average;
- a bare number (g/kWh, timestamped on receipt; zone from the topic; average, direct).

A payload with several points (a forecast, a history) yields its *current* point: the newest
one whose time is not after the receiver's clock (the earliest when all are later); the points
after it are the reading's forecast. At most MAX_POINTS points and MAX_PAYLOAD_BYTES bytes
(64 KiB: a WattTime 24 h forecast, 288 points, is about 21.5 KB).

Each reading has a *signal*, "<kind>/<basis>": average/direct, average/lifecycle or
marginal/direct. A receiver passes the signals it decides on (`signals=`, the bundle's by
default, docs/BUNDLE.md); any other is refused as `signal_kind`, so a lifecycle or marginal
value never enters a decision calibrated on direct average intensities unless configured.

Validation order: size -> parse -> types -> finite -> range (0..2000 g/kWh) -> zone (after
the receiver's zone map, e.g. DE -> DE-LU) -> signal -> replay -> timestamp not more than
`max_future_s` ahead and not older than `max_age_s`. Every refusal is a `PayloadError` (a
SignalError) with a short `reason` code that the subscriber counts. ISO 8601 timestamps are
parsed here (not with `datetime.fromisoformat`, whose accepted forms changed in Python 3.11),
so `2019-01-29T14:55:00.00Z` means the same on every supported Python.

Replayed traces carry old timestamps (2023). Staleness is judged against `now_s`, which the
caller takes from its clock: wall time on a device, or a `ReplayClock` (trace time advancing at
`speed` x wall time) in the demo. A payload marked `"replay": true` is refused unless the caller
allows replays (`allow_replay=True`), so a device in production never takes replayed values
for live ones.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from carboncp.runtime.errors import SignalError

TOPIC_PREFIX = "carboncp/carbon/"
MAX_PAYLOAD_BYTES = 65_536
MAX_GCO2_PER_KWH = 2000.0
MAX_POINTS = 1024  # points in one payload (WattTime: 288 per day at 5 min)
MAX_FORECAST_POINTS = MAX_POINTS
DEFAULT_MAX_FUTURE_S = 60.0  # clock skew tolerated between a publisher and the device
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237  # 453.59237 g/lb over 1000 kWh/MWh
ZONE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KINDS = ("average", "marginal")
BASES = ("direct", "lifecycle")
SIGNALS = ("average/direct", "average/lifecycle", "marginal/direct", "marginal/lifecycle")
DEFAULT_SIGNAL = "average/direct"

REASONS = (
    "too_large", "encoding", "parse", "type", "missing", "nan", "range", "bad_ts",
    "future", "stale", "zone_mismatch", "bad_topic", "kind", "signal_kind", "replay",
)  # fmt: skip

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?)?"
    r"\s*(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$"
)


class PayloadError(SignalError):
    """A carbon payload was refused; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class CarbonReading:
    """One validated carbon-intensity value for a grid zone."""

    zone: str
    gco2_per_kwh: float
    ts_s: float  # epoch seconds the value is for (trace time for replays)
    source: str
    kind: str  # "average" | "marginal"
    received_s: float  # the receiver's clock when it arrived
    forecast: list[tuple[float, float]] | None = None  # (ts_s, gco2_per_kwh)
    replay: bool = False
    basis: str = "direct"  # "direct" (operational) | "lifecycle"

    @property
    def signal(self) -> str:
        return f"{self.kind}/{self.basis}"


class ReplayClock:
    """Trace time that advances `speed` times faster than wall time from `start_s`."""

    def __init__(self, start_s: float, speed: float = 1.0, wall: Any = time.time) -> None:
        self.start_s, self.speed, self._wall = float(start_s), float(speed), wall
        self._wall0 = wall()

    def __call__(self) -> float:
        return self.start_s + (self._wall() - self._wall0) * self.speed


def zone_from_topic(topic: str) -> str:
    if not topic.startswith(TOPIC_PREFIX):
        raise PayloadError("bad_topic", f"topic {topic[:80]!r} is not under {TOPIC_PREFIX}")
    zone = topic[len(TOPIC_PREFIX) :]
    if not ZONE_RE.match(zone):
        raise PayloadError("bad_topic", f"topic zone {zone[:80]!r} is not a zone id")
    return zone


def check_signals(signals: Collection[str], what: str = "carbon_signals") -> tuple[str, ...]:
    """The signal names, checked ("average/direct", ...); ValueError naming the bad one."""
    if isinstance(signals, str) or not signals:
        raise ValueError(f"{what} must be a non-empty list of {', '.join(SIGNALS)}")
    for s in signals:
        if s not in SIGNALS:
            raise ValueError(f"{what}: {s!r} is not one of {', '.join(SIGNALS)}")
    return tuple(dict.fromkeys(signals))


def _to_float(value: Any, reason: str, what: str, *, text_ok: bool = False) -> float:
    """float(value) for a JSON number; anything else (text unless `text_ok`, or an integer
    too large for a float, which JSON allows) is a PayloadError, never a bare exception."""
    if isinstance(value, str) and not text_ok:
        raise PayloadError("type", f"{what} is text ({value[:20]!r}); send a JSON number")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PayloadError("type", f"{what} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except (ValueError, OverflowError) as exc:
        raise PayloadError(reason, f"{what}={str(value)[:40]!r} is not a number") from exc


def parse_iso(text: str) -> float:
    """ISO 8601 date-time (naive = UTC; 'Z' or +HH:MM; 1-9 fraction digits) -> epoch seconds.
    The same on Python 3.10 and 3.12; ValueError when it is not such a date-time."""
    m = _ISO_RE.match(text.strip())
    if m is None:
        raise ValueError(f"{text[:40]!r} is not ISO 8601")
    y, mo, d, h, mi, s, frac, _z, sign, oh, om = m.groups()
    dt = datetime(
        int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), tzinfo=timezone.utc
    )
    t = dt.timestamp() + (float("0." + frac) if frac else 0.0)
    if sign:
        if int(oh) > 23 or int(om) > 59:
            raise ValueError(f"{text[:40]!r}: bad UTC offset")
        off = int(oh) * 3600 + int(om) * 60
        t += -off if sign == "+" else off
    return t


def parse_ts(value: Any, what: str = "ts") -> float:
    """ISO 8601 (naive = UTC) or epoch seconds -> epoch seconds."""
    if isinstance(value, bool):
        raise PayloadError("bad_ts", f"{what} is a boolean")
    if isinstance(value, (int, float)):
        t = _to_float(value, "bad_ts", what)
    elif isinstance(value, str) and 0 < len(value) <= 64:
        try:
            t = float(value)
        except ValueError:
            try:
                t = parse_iso(value)
            except (ValueError, OverflowError) as exc:
                raise PayloadError("bad_ts", f"{what} {value[:40]!r} is not ISO 8601") from exc
    else:
        raise PayloadError("bad_ts", f"{what} must be ISO 8601 text or epoch seconds")
    if not math.isfinite(t) or not 0 <= t < 1e11:  # 1e11 s: year 5138; ms would land here
        raise PayloadError("bad_ts", f"{what}={value!r} is not epoch seconds")
    return t


def check_value(value: Any, what: str = "gco2_per_kwh", *, text_ok: bool = False) -> float:
    v = value if isinstance(value, float) else _to_float(value, "parse", what, text_ok=text_ok)
    if not math.isfinite(v):
        raise PayloadError("nan", f"{what} is {v}")
    if not 0.0 <= v <= MAX_GCO2_PER_KWH:
        raise PayloadError("range", f"{what}={v:g} outside 0..{MAX_GCO2_PER_KWH:g} g/kWh")
    return v


def _get(d: Any, key: str, what: str) -> Any:
    if not isinstance(d, dict) or key not in d or d[key] is None:
        raise PayloadError("missing", f"no {what}")
    return d[key]


def _str(d: dict, key: str, default: str) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or len(v) > 128:
        raise PayloadError("type", f"{key} must be a short string")
    return v


def _forecast(items: Any) -> list[tuple[float, float]] | None:
    if items is None:
        return None
    if not isinstance(items, list) or len(items) > MAX_POINTS:
        raise PayloadError("type", f"forecast must be a list of at most {MAX_POINTS}")
    out = []
    for it in items:
        if isinstance(it, dict):
            ts, v = _get(it, "ts", "forecast ts"), _get(it, "gco2_per_kwh", "forecast value")
        elif isinstance(it, list) and len(it) == 2:
            ts, v = it
        else:
            raise PayloadError("type", "forecast items are {ts, gco2_per_kwh} or [ts, value]")
        out.append((parse_ts(ts, "forecast ts"), check_value(v, "forecast gco2_per_kwh")))
    return out


def _points(
    items: list, ts_key: str, value_of: Any, now_s: float, what: str
) -> tuple[Any, Any, list[tuple[float, float]] | None]:
    """(value, ts, forecast) of a provider's list of points: the current point (the newest
    not after `now_s`, else the earliest) and, as the forecast, the points after it."""
    if not items:
        raise PayloadError("missing", f"{what} is empty")
    if len(items) > MAX_POINTS:
        raise PayloadError("too_large", f"{what} has {len(items)} points > {MAX_POINTS}")
    pts = []
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise PayloadError("type", f"{what}[{i}] is not an object")
        pts.append((parse_ts(_get(it, ts_key, f"{what}[{i}].{ts_key}"), f"{what} {ts_key}"), it))
    pts.sort(key=lambda p: p[0])
    past = [k for k, (t, _) in enumerate(pts) if t <= now_s]
    cur = past[-1] if past else 0
    ts, item = pts[cur]
    later = [(t, check_value(value_of(it), f"{what} value")) for t, it in pts[cur + 1 :]]
    return value_of(item), ts, later or None


def _basis(doc: dict, key: str, default: str) -> str:
    basis = _str(doc, key, default).lower()
    if basis not in BASES:
        raise PayloadError("kind", f"{key} {basis[:20]!r} is not one of {BASES}")
    return basis


def _adapt(doc: Any, topic_zone: str | None, now_s: float) -> dict[str, Any]:
    """Normalise any accepted JSON shape to {zone, value, ts, source, kind, basis, forecast,
    replay}."""
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return {"zone": topic_zone, "value": doc, "ts": None, "source": "bare",
                "kind": "average", "basis": "direct"}  # fmt: skip
    if not isinstance(doc, dict):
        raise PayloadError("type", f"payload is JSON {type(doc).__name__}, not an object")
    if "gco2_per_kwh" in doc:  # this project's format
        kind = _str(doc, "kind", "average")
        if kind not in KINDS:
            raise PayloadError("kind", f"kind {kind[:20]!r} is not one of {KINDS}")
        replay = doc.get("replay", False)
        if not isinstance(replay, bool):
            raise PayloadError("type", "replay must be true or false")
        return {
            "zone": doc.get("zone", topic_zone),
            "value": doc["gco2_per_kwh"],
            "ts": _get(doc, "ts", "ts"),
            "source": _str(doc, "source", "carboncp"),
            "kind": kind,
            "basis": _basis(doc, "basis", "direct"),
            "forecast": _forecast(doc.get("forecast")),
            "replay": replay,
        }
    if any(k in doc for k in ("carbonIntensity", "history")) or (
        "forecast" in doc and "zone" in doc
    ):  # Electricity Maps carbon-intensity/latest, /history, /forecast
        forecast = None
        if "carbonIntensity" in doc:
            value, ts = doc["carbonIntensity"], _get(doc, "datetime", "datetime")
        else:
            key = "history" if "history" in doc else "forecast"
            items = doc[key]
            if not isinstance(items, list):
                raise PayloadError("type", f"{key} must be a list")
            value, ts, forecast = _points(
                items, "datetime", lambda it: it.get("carbonIntensity"), now_s, key
            )
        return {
            "zone": doc.get("zone", topic_zone),
            "value": value,
            "ts": ts,
            "source": "electricitymaps",
            "kind": "average",
            # the API's default factors are lifecycle ones: absent means lifecycle
            "basis": _basis(doc, "emissionFactorType", "lifecycle"),
            "forecast": forecast,
        }
    if "moer" in doc:  # WattTime v2 index (moer is documented as text)
        return {
            "zone": topic_zone,
            "value": _lbs(doc["moer"]),
            "ts": _get(doc, "point_time", "point_time"),
            "source": f"watttime:{_str(doc, 'ba', '')}",
            "kind": "marginal",
            "basis": "direct",
        }
    data = doc.get("data")
    if isinstance(data, list):
        if not data or not isinstance(data[0], dict):
            raise PayloadError("missing", "data[0] missing")
        first = data[0]
        if "intensity" in first:  # UK Carbon Intensity API
            value, ts, forecast = _points(data, "from", _uk_value, now_s, "data")
            return {"zone": topic_zone or "GB", "value": value, "ts": ts,
                    "source": "carbonintensity.org.uk", "kind": "average", "basis": "direct",
                    "forecast": forecast}  # fmt: skip
        meta_doc = doc.get("meta")
        meta: dict[str, Any] = meta_doc if isinstance(meta_doc, dict) else {}
        if "value" in first and "point_time" in first:  # WattTime v3 historical or forecast
            units = str(meta.get("units", "lbs_co2_per_mwh"))
            if "lbs" not in units:
                raise PayloadError("type", f"WattTime units {units[:30]!r} are not lbs/MWh")
            signal_type = _str(meta, "signal_type", "co2_moer")
            if signal_type not in ("co2_moer", "co2_aoer"):
                raise PayloadError("kind", f"WattTime signal_type {signal_type[:30]!r}")
            value, ts, forecast = _points(
                data, "point_time", lambda it: _lbs(it.get("value")), now_s, "data"
            )
            return {
                "zone": topic_zone,
                "value": value,
                "ts": ts,
                "source": f"watttime:{_str(meta, 'region', '')}",
                "kind": "average" if signal_type == "co2_aoer" else "marginal",
                "basis": "direct",
                "forecast": forecast,
            }
    raise PayloadError("missing", "no gco2_per_kwh, carbonIntensity, moer or data[0] in payload")


def _uk_value(item: dict) -> Any:
    intensity = _get(item, "intensity", "data[].intensity")
    actual = intensity.get("actual") if isinstance(intensity, dict) else None
    return actual if actual is not None else _get(intensity, "forecast", "intensity")


def _lbs(v: Any) -> float:
    if v is None:
        raise PayloadError("missing", "no WattTime value")
    return _to_float(v, "parse", "moer", text_ok=True) * LBS_PER_MWH_TO_G_PER_KWH


def parse_carbon_payload(
    topic: str,
    payload: bytes,
    now_s: float,
    *,
    expected_zone: str | None = None,
    max_age_s: float = 7200.0,
    max_future_s: float = DEFAULT_MAX_FUTURE_S,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    allow_replay: bool = False,
    signals: Collection[str] | None = None,
    zone_map: Mapping[str, str] | None = None,
) -> CarbonReading:
    """Validate one payload received on `topic` at clock time `now_s`; raise PayloadError.

    `signals`: the accepted "<kind>/<basis>" signals (None: any); `zone_map`: payload zone ->
    the receiver's zone (e.g. {"DE": "DE-LU"})."""
    if len(payload) > max_bytes:
        raise PayloadError("too_large", f"{len(payload)} bytes > {max_bytes}")
    topic_zone = zone_from_topic(topic) if topic.startswith(TOPIC_PREFIX) else None
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise PayloadError("encoding", "payload is not UTF-8") from exc
    if not text:
        raise PayloadError("parse", "empty payload")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("parse", f"not JSON or a number: {text[:40]!r}") from exc
    f = _adapt(doc, topic_zone, now_s)
    value = check_value(f["value"])
    ts = now_s if f["ts"] is None else parse_ts(f["ts"])
    zone = f["zone"]
    if not isinstance(zone, str) or not ZONE_RE.match(zone):
        raise PayloadError(
            "missing" if zone is None else "type", f"zone {str(zone)[:40]!r} invalid"
        )
    if zone_map:
        zone = zone_map.get(zone, zone)
    want = expected_zone or topic_zone
    if want is not None and zone != want:
        raise PayloadError(
            "zone_mismatch",
            f"payload zone {zone!r} on the topic for {want!r} (map it with carbon_zone_map)",
        )
    signal = f"{f['kind']}/{f['basis']}"
    if signals is not None and signal not in signals:
        raise PayloadError(
            "signal_kind",
            f"a {signal} value from {f['source']}; this device decides on "
            f"{', '.join(signals)} (carbon_signals accepts others)",
        )
    replay = bool(f.get("replay", False))
    if replay and not allow_replay:
        raise PayloadError(
            "replay", "a replayed trace value; this receiver accepts live values only"
        )
    if ts - now_s > max_future_s:
        raise PayloadError(
            "future", f"ts is {ts - now_s:.0f} s in the future (> {max_future_s:g} s: clock skew?)"
        )
    if now_s - ts > max_age_s:
        raise PayloadError("stale", f"ts is {now_s - ts:.0f} s old (max_age_s={max_age_s:g})")
    return CarbonReading(
        zone, value, ts, f["source"], f["kind"], now_s, f.get("forecast"), replay, f["basis"]
    )


def format_carbon_payload(
    zone: str,
    gco2_per_kwh: float,
    ts_s: float,
    *,
    source: str = "carboncp",
    kind: str = "average",
    basis: str = "direct",
    forecast: list[tuple[float, float]] | None = None,
    replay: bool = False,
) -> bytes:
    """This project's JSON payload (the inverse of parse_carbon_payload for our format)."""
    doc: dict[str, Any] = {
        "zone": zone,
        "gco2_per_kwh": round(float(gco2_per_kwh), 3),
        "ts": datetime.fromtimestamp(ts_s, tz=timezone.utc).isoformat().replace("+00:00", "Z"),
        "source": source,
        "kind": kind,
        "basis": basis,
    }
    if forecast:
        doc["forecast"] = [[t, round(v, 3)] for t, v in forecast]
    if replay:
        doc["replay"] = True
    return json.dumps(doc, separators=(",", ":")).encode()
