"""Carbon payload parsing: our format, the three public APIs, a bare number, and refusals."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from carboncp.runtime.errors import SignalError
from carboncp.runtime.signals.carbon import (
    LBS_PER_MWH_TO_G_PER_KWH,
    PayloadError,
    ReplayClock,
    format_carbon_payload,
    parse_carbon_payload,
)

NOW = datetime(2024, 3, 1, 12, 30, tzinfo=timezone.utc).timestamp()
T = "carboncp/carbon/DE"


def js(doc) -> bytes:
    return json.dumps(doc).encode()


def test_project_format_roundtrip_with_forecast():
    fc = [(NOW + 3600, 300.0), (NOW + 7200, 250.5)]
    raw = format_carbon_payload("DE", 412.25, NOW - 60, source="test", kind="marginal", forecast=fc)
    r = parse_carbon_payload(T, raw, NOW)
    assert (r.zone, r.gco2_per_kwh, r.ts_s, r.kind, r.source) == (
        "DE",
        412.25,
        NOW - 60,
        "marginal",
        "test",
    )
    assert r.forecast == fc and r.received_s == NOW and not r.replay


def test_epoch_and_naive_iso_timestamps():
    r = parse_carbon_payload(T, js({"zone": "DE", "gco2_per_kwh": 10, "ts": NOW - 5}), NOW)
    assert r.ts_s == NOW - 5
    r = parse_carbon_payload(
        T, js({"zone": "DE", "gco2_per_kwh": 10, "ts": "2024-03-01T12:00:00"}), NOW
    )
    assert r.ts_s == NOW - 1800


def test_electricity_maps_latest():
    doc = {
        "zone": "DE",
        "carbonIntensity": 302,
        "datetime": "2024-03-01T12:00:00.000Z",
        "updatedAt": "2024-03-01T12:05:11.000Z",
        "emissionFactorType": "lifecycle",
        "isEstimated": False,
    }
    r = parse_carbon_payload(T, js(doc), NOW)
    assert (r.gco2_per_kwh, r.ts_s, r.source, r.kind) == (
        302.0,
        NOW - 1800,
        "electricitymaps",
        "average",
    )


def test_uk_carbon_intensity_actual_then_forecast():
    doc = {"data": [{"from": "2024-03-01T12:00Z", "to": "2024-03-01T12:30Z",
                     "intensity": {"forecast": 180, "actual": 175, "index": "moderate"}}]}  # fmt: skip
    r = parse_carbon_payload("carboncp/carbon/GB", js(doc), NOW)
    assert (r.zone, r.gco2_per_kwh, r.ts_s) == ("GB", 175.0, NOW - 1800)
    doc["data"][0]["intensity"]["actual"] = None
    assert parse_carbon_payload("carboncp/carbon/GB", js(doc), NOW).gco2_per_kwh == 180.0


def test_watttime_v2_and_v3_converted_and_marginal():
    v2 = {"ba": "CAISO_NORTH", "freq": "300", "percent": "53", "moer": "850.5",
          "point_time": "2024-03-01T12:25:00.000Z"}  # fmt: skip
    r = parse_carbon_payload("carboncp/carbon/US-CAL-CISO", js(v2), NOW)
    assert r.kind == "marginal"
    assert r.gco2_per_kwh == pytest.approx(850.5 * 0.45359237)
    assert pytest.approx(453.59237 / 1000) == LBS_PER_MWH_TO_G_PER_KWH
    v3 = {"data": [{"point_time": "2024-03-01T12:25:00+00:00", "value": 1000.0}],
          "meta": {"region": "CAISO_NORTH", "signal_type": "co2_moer", "units": "lbs_co2_per_mwh"}}  # fmt: skip
    r = parse_carbon_payload("carboncp/carbon/US-CAL-CISO", js(v3), NOW)
    assert (r.kind, r.source) == ("marginal", "watttime:CAISO_NORTH")
    assert r.gco2_per_kwh == pytest.approx(453.59237)


def test_bare_number_takes_topic_zone_and_receipt_time():
    r = parse_carbon_payload(T, b" 421.5\n", NOW)
    assert (r.zone, r.gco2_per_kwh, r.ts_s, r.source) == ("DE", 421.5, NOW, "bare")
    with pytest.raises(PayloadError) as exc:
        parse_carbon_payload("other/topic", b"421.5", NOW)
    assert exc.value.reason == "missing"


def good(**kw):
    doc = {"zone": "DE", "gco2_per_kwh": 300, "ts": NOW - 10, "source": "t", "kind": "average"}
    doc.update(kw)
    return js(doc)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (T, b"x" * 20000, "too_large"),
        (T, b"\xff\xfe\x00", "encoding"),
        (T, b"", "parse"),
        (T, b"{not json", "parse"),
        (T, b"[1, 2]", "type"),
        (T, b'"text"', "type"),
        (T, b"NaN", "nan"),
        (T, b"1e999", "nan"),
        (T, good(gco2_per_kwh="abc"), "parse"),
        (T, good(gco2_per_kwh=[1]), "type"),
        (T, good(gco2_per_kwh=True), "type"),
        (T, good(gco2_per_kwh=-1), "range"),
        (T, good(gco2_per_kwh=1e6), "range"),
        (T, good(ts=NOW + 3600), "future"),
        (T, good(ts=NOW - 86400), "stale"),
        (T, good(ts="yesterday"), "bad_ts"),
        (T, good(ts=NOW * 1000), "bad_ts"),  # milliseconds
        (T, good(zone="FR"), "zone_mismatch"),
        (T, good(zone="../../x"), "type"),
        (T, good(kind="weird"), "kind"),
        (T, good(replay=True), "replay"),
        (T, good(forecast=[[NOW, -5]]), "range"),
        (T, good(forecast="soon"), "type"),
        (T, js({"zone": "DE"}), "missing"),
        (T, b"[" * 5000 + b"]" * 5000, "parse"),  # recursion depth
        ("carboncp/carbon/bad zone", b"100", "bad_topic"),
    ],
)
def test_refusals_carry_reason(topic, payload, reason):
    with pytest.raises(SignalError) as exc:
        parse_carbon_payload(topic, payload, NOW)
    assert isinstance(exc.value, PayloadError)
    assert exc.value.reason == reason, str(exc.value)


def test_replay_allowed_against_a_replay_clock():
    trace_t = datetime(2023, 9, 11, tzinfo=timezone.utc).timestamp()
    wall = [1000.0]
    clock = ReplayClock(trace_t, speed=3600, wall=lambda: wall[0])
    raw = format_carbon_payload("DE", 432.09, trace_t, replay=True)
    wall[0] += 0.5  # half an hour of trace time later
    r = parse_carbon_payload(T, raw, clock(), allow_replay=True, max_age_s=3600)
    assert r.replay and r.received_s == pytest.approx(trace_t + 1800)
    wall[0] += 1.0
    with pytest.raises(PayloadError, match="stale"):
        parse_carbon_payload(T, raw, clock(), allow_replay=True, max_age_s=3600)
    # the same old value against wall time is stale even when replays are allowed
    with pytest.raises(PayloadError, match="stale"):
        parse_carbon_payload(T, raw, NOW, allow_replay=True)
