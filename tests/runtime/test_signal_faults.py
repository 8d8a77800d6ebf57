"""Fuzzed MQTT carbon payloads: whatever JSON arrives, parse_carbon_payload raises only
PayloadError (counted by reason), never a bare exception that paho would swallow."""

from __future__ import annotations

import json

import pytest
from carboncp.runtime.signals.carbon import PayloadError, parse_carbon_payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOPIC = "carboncp/carbon/GB"
HUGE = 10**400  # a valid JSON integer that no float holds

KEYS = [
    "zone", "gco2_per_kwh", "ts", "source", "kind", "forecast", "replay", "carbonIntensity",
    "datetime", "moer", "point_time", "ba", "data", "intensity", "actual", "from", "meta",
    "units", "region", "value",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-HUGE, max_value=HUGE),
    st.sampled_from([HUGE, -HUGE, 2**1024]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["2023-09-11T12:00:00Z", "9999-12-31T23:59:59-14:00", "1e400", "nan", "GB"]),
)
DOCS = st.recursive(
    SCALARS,
    lambda c: st.one_of(
        st.lists(c, max_size=4), st.dictionaries(st.sampled_from(KEYS), c, max_size=6)
    ),
    max_leaves=12,
)


@pytest.mark.parametrize(
    "payload",
    [
        {"zone": "GB", "gco2_per_kwh": 100, "ts": HUGE},
        {"zone": "GB", "gco2_per_kwh": HUGE, "ts": 1.7e9},
        {"zone": "GB", "gco2_per_kwh": 100, "ts": 1.7e9, "forecast": [[HUGE, 1]]},
        {"zone": "GB", "gco2_per_kwh": 100, "ts": 1.7e9, "forecast": [[1.7e9, HUGE]]},
        {"moer": HUGE, "point_time": 1.7e9},
        HUGE,
    ],
)
def test_integers_too_large_for_a_float_are_payload_errors(payload) -> None:
    with pytest.raises(PayloadError):
        parse_carbon_payload(TOPIC, json.dumps(payload).encode(), 1.7e9)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=DOCS, topic=st.sampled_from([TOPIC, "carboncp/carbon/DE-LU", "carboncp/carbon/", "x/y"]))
def test_any_json_is_accepted_or_a_payload_error(doc, topic) -> None:
    payload = json.dumps(doc, allow_nan=True).encode()
    try:
        r = parse_carbon_payload(
            topic, payload, 1.7e9, allow_replay=True, max_age_s=1e12, max_future_s=1e12
        )
    except PayloadError:
        return
    assert r.gco2_per_kwh >= 0 and r.zone
