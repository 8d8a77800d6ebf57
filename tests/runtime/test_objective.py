"""Objective config: defaults, TOML loading, validation errors naming the key, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from carboncp.runtime.decision.objective import RADIO_MODELS, Objective, load_objective
from carboncp.runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "objective.example.toml"


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "obj.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_derived_deadline() -> None:
    o = load_objective(None)
    assert o == Objective()
    assert o.alpha == 0.1
    assert o.effective_deadline_ms == o.slo_ms
    assert Objective(slo_ms=None).effective_deadline_ms == 1000.0
    assert Objective(slo_ms=200.0, deadline_ms=120.0).effective_deadline_ms == 120.0


def test_shipped_example_loads_and_round_trips_through_json() -> None:
    o = load_objective(EXAMPLE)
    assert o.radio == "wifi" and o.slo_ms == 300.0
    back = Objective.from_dict(json.loads(json.dumps(o.to_dict())))
    assert back == o


def test_objective_table_and_off_values(tmp_path: Path) -> None:
    o = load_objective(
        _toml(
            tmp_path,
            '[objective]\nslo_ms = "off"\nradio = "lte"\n[objective.reference]\nrtt_ms = 50\n',
        )
    )
    assert o.slo_ms is None and o.radio == "lte"
    assert o.reference["rtt_ms"] == 50 and o.reference["device_gco2_per_kwh"] == 300.0
    assert Objective.from_dict(o.to_dict()) == o


@pytest.mark.parametrize(
    "text,key",
    [
        ("w_carbn = 1.0\n", "w_carbn"),
        ("[reference]\nbandwith_mbps = 3\n", "reference.bandwith_mbps"),
        ('radio = "5g"\n', "radio"),
        ("alpha = 0.0\n", "alpha"),
        ("alpha = 1.0\n", "alpha"),
        ("alpha = 1.5\n", "alpha"),
        ("alpha = -0.1\n", "alpha"),
        ("w_latency = -1\n", "w_latency"),
        ('w_battery = "high"\n', "w_battery"),
        ("w_carbon = 0\nw_latency = 0\nw_battery = 0\n", "w_carbon"),
        ("slo_ms = 0\n", "slo_ms"),
        ("deadline_ms = -5\n", "deadline_ms"),
        ("battery_low_pct = 120\n", "battery_low_pct"),
        ("radio_cap_mbps = 0\n", "radio_cap_mbps"),
        ('device_carbon = "fixed"\n', "device_fixed_gco2_per_kwh"),
        ('device_carbon = "grid"\n', "device_carbon"),
        ("e_net_j_per_bit = nan\n", "e_net_j_per_bit"),
        ("[reference]\nrtt_ms = -1\n", "reference.rtt_ms"),
        ('deadline_rule = "soon"\n', "deadline_rule"),
        ('deadline_rule = "slack"\nslo_ms = "off"\n', "deadline_rule"),
        ("extra = 1\n[objective]\nalpha = 0.1\n", "extra"),
    ],
)
def test_invalid_keys_are_config_errors_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    p = _toml(tmp_path, text)
    with pytest.raises(ConfigError, match=f"'{key}'") as err:
        load_objective(p)
    assert str(p) in str(err.value)


def test_unreadable_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such objective file"):
        load_objective(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_objective(_toml(tmp_path, "w_carbon = = 1\n"))


def test_radio_model_is_capped_above_the_cap() -> None:
    o = Objective(radio="wifi")
    a, b = RADIO_MODELS["wifi"]
    assert (a, b) == (283.17, 132.86)
    assert o.radio_power_mw(2.0) == pytest.approx(283.17 * 2 + 132.86)
    assert o.radio_power_mw(50.0) == pytest.approx(283.17 * 10 + 132.86)
    assert Objective(radio="lte").radio_power_mw(1.0) == pytest.approx(438.39 + 1288.04)
    assert Objective(radio="3g").radio_power_mw(1.0) == pytest.approx(868.98 + 817.88)
    assert Objective(radio_cap_mbps=100.0).radio_power_mw(50.0) == pytest.approx(
        283.17 * 50 + 132.86
    )


def test_battery_shape() -> None:
    o = Objective(battery_low_pct=40.0, battery_k=3.0, battery_protect_below_pct=None)
    assert o.battery_shape(80.0) == 1.0
    assert o.battery_shape(40.0) == 1.0
    assert o.battery_shape(20.0) == pytest.approx(1.0 + 0.5 * 3.0)
    assert o.battery_shape(0.0) == pytest.approx(4.0)
