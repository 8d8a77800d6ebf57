"""Carbon payloads at the edges of what is accepted (docs/FAULTS.md): 0 g/kWh is a real value
(Ontario, Norway, Québec report it) and must be accepted like 2000, the top of the range;
every documented limit is exact (the last accepted value and the first refused one)."""

from __future__ import annotations

import json

import pytest
from carboncp.runtime.signals.carbon import (
    PayloadError,
    check_signals,
    check_value,
    format_carbon_payload,
    parse_carbon_payload,
    parse_iso,
    parse_ts,
)

NOW = 1_700_000_000.0
TOPIC = "carboncp/carbon/CA-ON"


def _parse(doc, **kw):
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_carbon_payload(TOPIC, payload, NOW, **kw)


def _reason(doc, **kw) -> str:
    with pytest.raises(PayloadError) as e:
        _parse(doc, **kw)
    return e.value.reason


@pytest.mark.parametrize("value", [0, 0.0, 1e-9, 2000, 2000.0])
def test_zero_and_the_top_of_the_range_are_accepted(value) -> None:
    r = _parse({"zone": "CA-ON", "gco2_per_kwh": value, "ts": NOW - 60})
    assert r.gco2_per_kwh == float(value) and r.zone == "CA-ON"
    assert _parse(value).gco2_per_kwh == float(value)  # a bare number
    assert check_value(value) == float(value)


@pytest.mark.parametrize("value", [-1e-9, -1, 2000.001, 1e308])
def test_outside_the_range_is_refused(value) -> None:
    assert _reason({"zone": "CA-ON", "gco2_per_kwh": value, "ts": NOW}) == "range"
    with pytest.raises(PayloadError, match="range"):
        check_value(value)


def test_zero_through_other_providers() -> None:
    em = {"zone": "CA-ON", "carbonIntensity": 0, "datetime": "2023-11-14T22:00:00Z",
          "emissionFactorType": "direct"}  # fmt: skip
    assert parse_carbon_payload(TOPIC, json.dumps(em).encode(), 1_699_999_200.0).gco2_per_kwh == 0
    wt = {"ba": "X", "moer": "0", "point_time": NOW - 10}
    assert _parse(wt).gco2_per_kwh == 0.0
    # WattTime's lbs/MWh: 1000 lbs/MWh = 453.59237 g/kWh exactly
    assert _parse({"ba": "X", "moer": 1000, "point_time": NOW}).gco2_per_kwh == pytest.approx(
        453.59237, rel=1e-15
    )


def test_payload_size_limit_is_exact() -> None:
    from carboncp.runtime.signals.carbon import MAX_PAYLOAD_BYTES

    assert MAX_PAYLOAD_BYTES == 65_536  # docs/FAULTS.md
    body = b"400"
    exact = body + b" " * (MAX_PAYLOAD_BYTES - len(body))
    assert _parse(exact).gco2_per_kwh == 400.0
    assert _reason(exact + b" ") == "too_large"
    assert _reason(b"400", max_bytes=2) == "too_large"
    assert _parse(b"400", max_bytes=3).gco2_per_kwh == 400.0


def test_timestamp_limits_are_exact() -> None:
    assert parse_ts(0) == 0.0 and parse_ts("0") == 0.0
    assert parse_ts(1e11 - 1) == 1e11 - 1
    for bad in (1e11, -1, -1e-9, float("nan"), float("inf"), "", "x" * 65, True):
        with pytest.raises(PayloadError) as e:
            parse_ts(bad)
        assert e.value.reason == "bad_ts", bad
    iso = "2023-11-14T22:13:20.000000000000000000000000000000000000000000000000000Z"
    assert len(iso) == 72
    with pytest.raises(PayloadError):
        parse_ts(iso)  # longer than 64 characters
    sixty_four = "1" * 10 + " " * 54
    assert len(sixty_four) == 64 and parse_ts(sixty_four) == 1_111_111_111.0
    assert parse_ts("2023-11-14T22:13:20Z") == NOW
    assert parse_ts("2023-11-14T22:13:20") == NOW  # naive = UTC


def test_iso_offsets_exact() -> None:
    assert parse_iso("2023-11-14T23:13:20+01:00") == NOW
    assert parse_iso("2023-11-14T21:13:20-01:00") == NOW
    assert parse_iso("2023-11-15T22:12:20+23:59") == NOW
    assert parse_iso("2023-11-14T22:43:20+00:30") == NOW
    assert parse_iso("2023-11-14T22:13:20.25Z") == NOW + 0.25
    for bad in ("2023-11-14T22:13:20+24:00", "2023-11-14T22:13:20+00:60", "yesterday"):
        with pytest.raises(ValueError):
            parse_iso(bad)


def test_future_and_stale_limits_are_exact() -> None:
    doc = {"zone": "CA-ON", "gco2_per_kwh": 10}
    assert _parse({**doc, "ts": NOW + 60}, max_future_s=60).ts_s == NOW + 60
    assert _reason({**doc, "ts": NOW + 61}, max_future_s=60) == "future"
    assert _parse({**doc, "ts": NOW + 60}).ts_s == NOW + 60  # the default skew: 60 s
    assert _reason({**doc, "ts": NOW + 61}) == "future"
    assert _parse({**doc, "ts": NOW - 7200}).ts_s == NOW - 7200  # the default age: 2 h
    assert _reason({**doc, "ts": NOW - 7201}) == "stale"
    assert _reason({**doc, "ts": NOW - 11}, max_age_s=10) == "stale"


def test_string_and_forecast_limits_are_exact() -> None:
    doc = {"zone": "CA-ON", "gco2_per_kwh": 10, "ts": NOW}
    assert _parse({**doc, "source": "s" * 128}).source == "s" * 128
    assert _reason({**doc, "source": "s" * 129}) == "type"
    pts = [[NOW + 60 * i, 5.0] for i in range(1024)]
    assert len(_parse({**doc, "forecast": pts}).forecast) == 1024
    assert _reason({**doc, "forecast": [*pts, [NOW, 1.0]]}) == "type"
    assert _reason({**doc, "forecast": "soon"}) == "type"
    assert _parse({**doc, "forecast": [{"ts": NOW, "gco2_per_kwh": 0}]}).forecast == [(NOW, 0.0)]
    assert _reason({**doc, "forecast": [[NOW, 2001]]}) == "range"
    r = _parse(doc)
    assert r.forecast is None and r.replay is False and r.signal == "average/direct"


def test_check_signals() -> None:
    assert check_signals(["average/direct", "average/direct"]) == ("average/direct",)
    for bad in ([], "average/direct", ["average/nothing"]):
        with pytest.raises(ValueError):
            check_signals(bad)  # type: ignore[arg-type]


def test_reading_defaults_and_replay_clock() -> None:
    import dataclasses

    from carboncp.runtime.signals.carbon import CarbonReading, ReplayClock

    r = CarbonReading("CA-ON", 0.0, NOW, "s", "average", NOW)
    assert r.replay is False and r.forecast is None and r.basis == "direct"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.gco2_per_kwh = 1.0  # type: ignore[misc]
    wall = iter([100.0, 110.0, 130.0])
    clock = ReplayClock(5000.0, wall=lambda: next(wall))
    assert clock() == 5010.0 and clock() == 5030.0  # speed 1 by default
    fast = ReplayClock(0.0, speed=60.0, wall=iter([0.0, 2.0]).__next__)
    assert fast() == 120.0


def test_text_numbers_only_where_a_provider_sends_text() -> None:
    with pytest.raises(PayloadError) as e:
        check_value("400")
    assert e.value.reason == "type"
    assert check_value("400", text_ok=True) == 400.0
    assert _reason({"zone": "CA-ON", "gco2_per_kwh": "400", "ts": NOW}) == "type"
    assert _parse({"ba": "X", "moer": "1000", "point_time": NOW}).gco2_per_kwh == pytest.approx(
        453.59237
    )  # WattTime documents moer as text


def test_forecast_items_must_be_pairs() -> None:
    doc = {"zone": "CA-ON", "gco2_per_kwh": 10, "ts": NOW}
    assert _reason({**doc, "forecast": [[NOW, 1.0, 2.0]]}) == "type"
    assert _reason({**doc, "forecast": [(NOW,)]}) == "type"
    assert _parse({**doc, "forecast": [[NOW + 60, 1.5]]}).forecast == [(NOW + 60, 1.5)]


def _em_history(times: list[float], values: list[float]) -> dict:
    from datetime import datetime, timezone

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()

    return {"zone": "CA-ON", "emissionFactorType": "direct",
            "history": [{"datetime": iso(t), "carbonIntensity": v}
                        for t, v in zip(times, values, strict=True)]}  # fmt: skip


def test_provider_point_lists_limits_and_the_current_point() -> None:
    times = [NOW - 3600.0 * (1023 - i) for i in range(1024)]
    big = {"max_bytes": 1_000_000}
    r = _parse(_em_history(times, [float(i % 500) for i in range(1024)]), **big)
    assert r.gco2_per_kwh == 1023 % 500 and r.ts_s == NOW  # the newest not after now
    assert _reason(
        _em_history([NOW - 3600.0 * (1024 - i) for i in range(1025)], [1.0] * 1025), **big
    ) in (
        "too_large",
        "stale",
    )
    assert _reason(_em_history([NOW - 1.0] * 1025, [1.0] * 1025), **big) == "too_large"
    # no point in the past: the earliest is current, the later ones are its forecast
    r = _parse(_em_history([NOW + 3600.0, NOW + 30.0], [7.0, 0.0]))
    assert (r.gco2_per_kwh, r.ts_s) == (0.0, NOW + 30.0) and r.forecast == [(NOW + 3600.0, 7.0)]


def test_uk_payload_off_the_carbon_topics_is_gb() -> None:
    doc = {"data": [{"from": "2023-11-14T22:13Z", "intensity": {"actual": 0, "forecast": 10}}]}
    r = parse_carbon_payload("uk/intensity", json.dumps(doc).encode(), NOW + 20)
    assert (r.zone, r.gco2_per_kwh) == ("GB", 0.0)


def test_timestamps_of_other_types_and_lengths_are_payload_errors() -> None:
    """A non-text, non-number ts is a PayloadError (never a bare TypeError from len() or
    float()); a 65-character text is refused before it is read even when it is a number,
    and the empty text is refused as 'not text or epoch seconds', not parsed."""
    for bad in (None, [1], {"t": 1}, [], b"1"):
        with pytest.raises(PayloadError) as e:
            parse_ts(bad)
        assert e.value.reason == "bad_ts" and "must be ISO 8601 text or epoch seconds" in str(
            e.value
        ), bad
    assert parse_ts("0" * 63 + "1") == 1.0  # 64 characters: read
    for bad in ("0" * 64 + "1", ""):  # 65 characters (a valid number), and empty
        with pytest.raises(PayloadError) as e:
            parse_ts(bad)
        assert "must be ISO 8601 text or epoch seconds" in str(e.value), bad


def test_a_point_list_with_only_one_of_wattimes_keys_is_an_unknown_shape() -> None:
    """WattTime v3 points carry both 'value' and 'point_time'; a data[0] with only one of
    them is not WattTime (nor any other known shape): refused as missing the value keys."""
    for first in ({"value": 300.0}, {"point_time": "2023-11-14T22:13:20Z"}):
        with pytest.raises(PayloadError) as e:
            _parse({"data": [first]})
        assert e.value.reason == "missing"
        assert "no gco2_per_kwh, carbonIntensity, moer or data[0]" in str(e.value), first


def test_formatted_payload_rounds_values_to_three_decimals() -> None:
    doc = json.loads(
        format_carbon_payload("CA-ON", 123.456789, NOW, forecast=[(NOW + 3600, 98.765432)])
    )
    assert doc["gco2_per_kwh"] == 123.457
    assert doc["forecast"] == [[NOW + 3600, 98.765]]
    assert doc["ts"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize("data", [[], [5], ["x", {"intensity": {}}]])
def test_an_empty_or_non_object_data_list_is_a_missing_point(data) -> None:
    """`data` must hold an object first: an empty list, or a number or string in its place,
    is the documented "missing" error, not a crash on data[0]."""
    with pytest.raises(PayloadError, match=r"data\[0\] missing") as e:
        _parse({"data": data})
    assert e.value.reason == "missing"
