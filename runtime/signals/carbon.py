"""Carbon-intensity signals: parse and validate one MQTT payload (no network here).

Accepted payloads (units converted once, here, to gCO2eq/kWh):
- this project's JSON: {"zone", "gco2_per_kwh", "ts" (ISO 8601 or epoch s), "source",
  "kind": "average"|"marginal", optional "forecast": [{"ts", "gco2_per_kwh"}...] or [[ts, v]...],
  optional "replay": true (a value replayed from a historical trace; see below)};
- Electricity Maps `carbon-intensity/latest`: {"zone", "carbonIntensity", "datetime"};
- UK Carbon Intensity API: {"data": [{"from", "intensity": {"actual", "forecast"}}]}
  (actual when present, else forecast);
- WattTime: v2 {"ba", "moer", "point_time"} or v3 {"data": [{"point_time", "value"}],
  "meta": {"region", "units": "lbs_co2_per_mwh"}}; lbs/MWh x 0.45359237 = g/kWh, kind marginal;
- a bare number (g/kWh, timestamped on receipt; zone from the topic).

Validation order: size -> parse -> types -> finite -> range (0..2000 g/kWh) -> timestamp not
in the future (beyond `max_future_s` skew) and not older than `max_age_s` -> zone matches the
topic. Every refusal is a `PayloadError` (a SignalError) with a short `reason` code that the
subscriber counts.

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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from carboncp.runtime.errors import SignalError

TOPIC_PREFIX = "carboncp/carbon/"
MAX_PAYLOAD_BYTES = 16_384
MAX_GCO2_PER_KWH = 2000.0
MAX_FORECAST_POINTS = 512
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237  # 453.59237 g/lb over 1000 kWh/MWh
ZONE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KINDS = ("average", "marginal")

REASONS = (
    "too_large", "encoding", "parse", "type", "missing", "nan", "range", "bad_ts",
    "future", "stale", "zone_mismatch", "bad_topic", "kind", "replay",
)  # fmt: skip


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


def _to_float(value: Any, reason: str, what: str) -> float:
    """float(value) for a JSON number or numeric text; anything else (including an integer
    too large for a float, which JSON allows) is a PayloadError, never a bare exception."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PayloadError("type", f"{what} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except (ValueError, OverflowError) as exc:
        raise PayloadError(reason, f"{what}={str(value)[:40]!r} is not a number") from exc


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
                dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError as exc:
                raise PayloadError("bad_ts", f"{what} {value[:40]!r} is not ISO 8601") from exc
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            t = dt.timestamp()
    else:
        raise PayloadError("bad_ts", f"{what} must be ISO 8601 text or epoch seconds")
    if not math.isfinite(t) or not 0 <= t < 1e11:  # 1e11 s: year 5138; ms would land here
        raise PayloadError("bad_ts", f"{what}={value!r} is not epoch seconds")
    return t


def check_value(value: Any, what: str = "gco2_per_kwh") -> float:
    v = _to_float(value, "parse", what)
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
    if not isinstance(items, list) or len(items) > MAX_FORECAST_POINTS:
        raise PayloadError("type", f"forecast must be a list of at most {MAX_FORECAST_POINTS}")
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


def _adapt(doc: Any, topic_zone: str | None) -> dict[str, Any]:
    """Normalise any accepted JSON shape to {zone, value, ts, source, kind, forecast, replay}."""
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return {"zone": topic_zone, "value": doc, "ts": None, "source": "bare", "kind": "average"}
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
            "forecast": _forecast(doc.get("forecast")),
            "replay": replay,
        }
    if "carbonIntensity" in doc:  # Electricity Maps carbon-intensity/latest
        return {
            "zone": doc.get("zone", topic_zone),
            "value": doc["carbonIntensity"],
            "ts": _get(doc, "datetime", "datetime"),
            "source": "electricitymaps",
            "kind": "average",
        }
    if "moer" in doc:  # WattTime v2 index
        return {
            "zone": topic_zone,
            "value": _lbs(doc["moer"]),
            "ts": _get(doc, "point_time", "point_time"),
            "source": f"watttime:{_str(doc, 'ba', '')}",
            "kind": "marginal",
        }
    data = doc.get("data")
    if isinstance(data, list):
        if not data or not isinstance(data[0], dict):
            raise PayloadError("missing", "data[0] missing")
        first = data[0]
        if "intensity" in first:  # UK Carbon Intensity API
            intensity = _get(first, "intensity", "data[0].intensity")
            actual = intensity.get("actual") if isinstance(intensity, dict) else None
            value = actual if actual is not None else _get(intensity, "forecast", "intensity")
            return {
                "zone": topic_zone or "GB",
                "value": value,
                "ts": _get(first, "from", "data[0].from"),
                "source": "carbonintensity.org.uk",
                "kind": "average",
            }
        meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
        if "value" in first and "point_time" in first:  # WattTime v3
            units = str(meta.get("units", "lbs_co2_per_mwh"))
            if "lbs" not in units:
                raise PayloadError("type", f"WattTime units {units[:30]!r} are not lbs/MWh")
            return {
                "zone": topic_zone,
                "value": _lbs(first["value"]),
                "ts": first["point_time"],
                "source": f"watttime:{_str(meta, 'region', '')}",
                "kind": "marginal",
            }
    raise PayloadError("missing", "no gco2_per_kwh, carbonIntensity, moer or data[0] in payload")


def _lbs(v: Any) -> float:
    return _to_float(v, "parse", "moer") * LBS_PER_MWH_TO_G_PER_KWH


def parse_carbon_payload(
    topic: str,
    payload: bytes,
    now_s: float,
    *,
    expected_zone: str | None = None,
    max_age_s: float = 7200.0,
    max_future_s: float = 300.0,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    allow_replay: bool = False,
) -> CarbonReading:
    """Validate one payload received on `topic` at clock time `now_s`; raise PayloadError."""
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
    f = _adapt(doc, topic_zone)
    value = check_value(f["value"])
    ts = now_s if f["ts"] is None else parse_ts(f["ts"])
    zone = f["zone"]
    if not isinstance(zone, str) or not ZONE_RE.match(zone):
        raise PayloadError(
            "missing" if zone is None else "type", f"zone {str(zone)[:40]!r} invalid"
        )
    want = expected_zone or topic_zone
    if want is not None and zone != want:
        raise PayloadError("zone_mismatch", f"payload zone {zone!r} on the topic for {want!r}")
    replay = bool(f.get("replay", False))
    if replay and not allow_replay:
        raise PayloadError(
            "replay", "a replayed trace value; this receiver accepts live values only"
        )
    if ts - now_s > max_future_s:
        raise PayloadError("future", f"ts is {ts - now_s:.0f} s in the future (clock skew?)")
    if now_s - ts > max_age_s:
        raise PayloadError("stale", f"ts is {now_s - ts:.0f} s old (max_age_s={max_age_s:g})")
    return CarbonReading(zone, value, ts, f["source"], f["kind"], now_s, f.get("forecast"), replay)


def format_carbon_payload(
    zone: str,
    gco2_per_kwh: float,
    ts_s: float,
    *,
    source: str = "carboncp",
    kind: str = "average",
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
    }
    if forecast:
        doc["forecast"] = [[t, round(v, 3)] for t, v in forecast]
    if replay:
        doc["replay"] = True
    return json.dumps(doc, separators=(",", ":")).encode()
