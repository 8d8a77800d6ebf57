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
        (T, b"x" * 70000, "too_large"),
        (T, b"\xff\xfe\x00", "encoding"),
        (T, b"", "parse"),
        (T, b"{not json", "parse"),
        (T, b"[1, 2]", "type"),
        (T, b'"text"', "type"),
        (T, b"NaN", "nan"),
        (T, b"1e999", "nan"),
        (T, good(gco2_per_kwh="abc"), "type"),
        (T, good(gco2_per_kwh="300"), "type"),  # a number sent as text (issue 10, item 3)
        (T, good(gco2_per_kwh=[1]), "type"),
        (T, good(gco2_per_kwh=True), "type"),
        (T, good(gco2_per_kwh=-1), "range"),
        (T, good(gco2_per_kwh=1e6), "range"),
        (T, good(ts=NOW + 3600), "future"),
        (T, good(ts=NOW + 250), "future"),  # beyond the 60 s skew allowed by default
        (T, good(basis="hourly"), "kind"),
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


# -- issue 10: numbers as text, timestamps, real provider payloads, signal kinds -----------
def test_a_number_sent_as_text_is_refused_as_type_in_every_format():
    em = {"zone": "DE", "carbonIntensity": "300", "datetime": "2024-03-01T12:00:00.000Z",
          "emissionFactorType": "direct"}  # fmt: skip
    uk = {"data": [{"from": "2024-03-01T12:00Z", "intensity": {"forecast": "180"}}]}
    for topic, doc in ((T, em), ("carboncp/carbon/GB", uk), (T, {"zone": "DE",
                       "gco2_per_kwh": "300", "ts": NOW})):  # fmt: skip
        with pytest.raises(PayloadError) as exc:
            parse_carbon_payload(topic, js(doc), NOW)
        assert exc.value.reason == "type", doc
        assert "text" in str(exc.value)


def _utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-01-29T14:55:00.00Z", _utc(2019, 1, 29, 14, 55)),  # WattTime: 2 fraction digits
        ("2019-01-29T14:55:00.5Z", _utc(2019, 1, 29, 14, 55) + 0.5),
        ("2019-01-29T14:55:00.123456789Z", _utc(2019, 1, 29, 14, 55) + 0.123456789),
        ("2024-03-01T12:00:00.000Z", _utc(2024, 3, 1, 12)),  # Electricity Maps
        ("2024-03-01T12:00Z", _utc(2024, 3, 1, 12)),  # UK Carbon Intensity
        ("2024-03-01T12:25:00+00:00", _utc(2024, 3, 1, 12, 25)),  # WattTime v3
        ("2024-03-01T14:25:00+02:00", _utc(2024, 3, 1, 12, 25)),
        ("2024-03-01T07:25:00-0500", _utc(2024, 3, 1, 12, 25)),
        ("2024-03-01 12:00:00", _utc(2024, 3, 1, 12)),  # naive = UTC
        ("2024-03-01", _utc(2024, 3, 1)),
    ],
)
def test_iso_timestamps_parse_the_same_on_every_python(text, expected):
    """Parsed by our own grammar: Python 3.10's fromisoformat refuses several of these."""
    from carboncp.runtime.signals.carbon import parse_iso, parse_ts

    assert parse_iso(text) == pytest.approx(expected, abs=1e-6)
    assert parse_ts(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text", ["2024-13-01T00:00Z", "2024-03-01T25:00Z", "2024-03-01T12:00+25:00", "12:00", "x"]
)
def test_bad_iso_timestamps_are_bad_ts(text):
    with pytest.raises(PayloadError) as exc:
        parse_carbon_payload(T, good(ts=text), NOW)
    assert exc.value.reason == "bad_ts"


def watttime_v3(start_s: float, n: int, step_s: float = 300.0, value0: float = 800.0) -> dict:
    """A WattTime v3 /forecast (or /historical) answer as the provider documents it."""
    iso = lambda t: datetime.fromtimestamp(t, tz=timezone.utc).isoformat()  # noqa: E731
    return {
        "data": [
            {"point_time": iso(start_s + i * step_s), "value": value0 + i} for i in range(n)
        ],
        "meta": {
            "data_point_period_seconds": int(step_s), "region": "CAISO_NORTH", "warnings": [],
            "signal_type": "co2_moer", "model": {"date": "2023-03-01", "type": "binned_regression"},
            "units": "lbs_co2_per_mwh", "generated_at_period_seconds": 300,
            "generated_at": iso(start_s),
        },
    }  # fmt: skip


def test_watttime_24h_forecast_is_accepted_and_its_current_point_taken():
    doc = watttime_v3(NOW - 120, 288)  # generated 2 min ago: point 0 is the current one
    raw = json.dumps(doc, indent=2).encode()
    assert 20_000 < len(raw) < 65_536  # the 21.5 KB, over the old 16 KiB limit
    r = parse_carbon_payload("carboncp/carbon/US-CAL-CISO", raw, NOW, signals=None)
    assert r.gco2_per_kwh == pytest.approx(800.0 * LBS_PER_MWH_TO_G_PER_KWH)
    assert r.ts_s == pytest.approx(NOW - 120)
    assert r.signal == "marginal/direct"
    assert len(r.forecast) == 287
    assert r.forecast[-1][1] == pytest.approx(1087.0 * LBS_PER_MWH_TO_G_PER_KWH)


def test_watttime_v3_historical_uses_the_newest_point_not_data0():
    doc = watttime_v3(NOW - 3600, 12)  # an hour of history, oldest first
    r = parse_carbon_payload("carboncp/carbon/US-CAL-CISO", js(doc), NOW)
    assert r.ts_s == pytest.approx(NOW - 3600 + 11 * 300)
    assert r.gco2_per_kwh == pytest.approx(811.0 * LBS_PER_MWH_TO_G_PER_KWH)
    assert r.forecast is None
    doc["data"].reverse()  # newest first: the same point
    assert parse_carbon_payload("carboncp/carbon/US-CAL-CISO", js(doc), NOW).ts_s == r.ts_s


def test_watttime_aoer_is_average_and_other_signal_types_refused():
    doc = watttime_v3(NOW - 60, 1)
    doc["meta"]["signal_type"] = "co2_aoer"
    assert parse_carbon_payload(T, js(doc), NOW).signal == "average/direct"
    doc["meta"]["signal_type"] = "health_damage"
    with pytest.raises(PayloadError, match="kind"):
        parse_carbon_payload(T, js(doc), NOW)


def test_electricity_maps_emission_factor_type_is_the_basis():
    doc = {"zone": "GB", "carbonIntensity": 237, "datetime": "2024-03-01T12:00:00.000Z"}
    g = "carboncp/carbon/GB"
    assert parse_carbon_payload(g, js(doc), NOW).signal == "average/lifecycle"  # API default
    doc["emissionFactorType"] = "direct"
    assert parse_carbon_payload(g, js(doc), NOW).signal == "average/direct"
    doc["emissionFactorType"] = "lifecycle"
    with pytest.raises(PayloadError) as exc:
        parse_carbon_payload(g, js(doc), NOW, signals=("average/direct",))
    assert exc.value.reason == "signal_kind"
    assert "average/lifecycle" in str(exc.value) and "carbon_signals" in str(exc.value)
    assert parse_carbon_payload(g, js(doc), NOW, signals=("average/lifecycle",)).gco2_per_kwh == 237


def test_marginal_is_refused_where_average_is_decided_unless_configured():
    v2 = {"ba": "CAISO_NORTH", "moer": "850.5", "point_time": "2024-03-01T12:25:00.000Z"}
    topic = "carboncp/carbon/US-CAL-CISO"
    with pytest.raises(PayloadError, match="signal_kind"):
        parse_carbon_payload(topic, js(v2), NOW, signals=("average/direct",))
    both = ("average/direct", "marginal/direct")
    assert parse_carbon_payload(topic, js(v2), NOW, signals=both).kind == "marginal"


def test_electricity_maps_history_and_forecast_take_the_current_hour():
    iso = lambda t: datetime.fromtimestamp(t, tz=timezone.utc).isoformat()  # noqa: E731
    hour = NOW - 1800  # 12:00
    hist = {"zone": "DE", "emissionFactorType": "direct",
            "history": [{"carbonIntensity": 300 + k, "datetime": iso(hour - (23 - k) * 3600)}
                        for k in range(24)]}  # fmt: skip
    r = parse_carbon_payload(T, js(hist), NOW)
    assert (r.gco2_per_kwh, r.ts_s) == (323.0, hour)
    fc = {"zone": "DE", "emissionFactorType": "direct",
          "forecast": [{"carbonIntensity": 200 + k, "datetime": iso(hour + k * 3600)}
                       for k in range(72)]}  # fmt: skip
    r = parse_carbon_payload(T, js(fc), NOW)
    assert (r.gco2_per_kwh, r.ts_s, len(r.forecast)) == (200.0, hour, 71)


def test_uk_half_hours_take_the_current_one():
    iso = lambda t: datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")  # noqa: E731
    doc = {"data": [{"from": iso(NOW - 1800 * (2 - k)), "to": iso(NOW - 1800 * (1 - k)),
                     "intensity": {"forecast": 100 + k, "actual": None, "index": "low"}}
                    for k in range(4)]}  # fmt: skip
    r = parse_carbon_payload("carboncp/carbon/GB", js(doc), NOW)
    assert r.ts_s == pytest.approx(NOW)
    assert r.gco2_per_kwh == 102.0 and len(r.forecast) == 1


def test_zone_map_maps_a_provider_zone_onto_the_topic_zone():
    doc = {"zone": "DE", "carbonIntensity": 300, "datetime": "2024-03-01T12:00:00.000Z",
           "emissionFactorType": "direct"}  # fmt: skip
    topic = "carboncp/carbon/DE-LU"
    with pytest.raises(PayloadError) as exc:
        parse_carbon_payload(topic, js(doc), NOW)
    assert exc.value.reason == "zone_mismatch" and "carbon_zone_map" in str(exc.value)
    r = parse_carbon_payload(topic, js(doc), NOW, zone_map={"DE": "DE-LU"})
    assert (r.zone, r.gco2_per_kwh) == ("DE-LU", 300.0)
