"""check_number: the one range rule behind TOML keys and command-line flags; and the
settings and commands that use it refuse NaN, infinities, negative counts/seeds, bad ports."""

from __future__ import annotations

import math

import pytest
from carboncp.runtime.checks import check_choice, check_number
from carboncp.runtime.cli import main as cli_main
from carboncp.runtime.device.settings import load_settings
from carboncp.runtime.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (math.nan, {}), (math.inf, {"lo": 0}), (-math.inf, {}), ("3", {}), (True, {}), (None, {}),
        (-1, {"lo": 0}), (0, {"lo": 0, "lo_open": True}), (1, {"hi": 1, "hi_open": True}),
        (2.5, {"integer": True}), (101, {"lo": 0, "hi": 100}),
    ],
)  # fmt: skip
def test_refused_values_name_the_key(value, rule) -> None:
    with pytest.raises(ConfigError, match=r"^--knob must be"):
        check_number(value, "--knob", **rule)


@pytest.mark.parametrize(
    ("value", "rule"),
    [(0, {"lo": 0}), (1e-9, {"lo": 0, "lo_open": True}), (100, {"lo": 0, "hi": 100}),
     (3.0, {"integer": True}), (None, {"none_ok": True})],
)  # fmt: skip
def test_accepted_values_come_back(value, rule) -> None:
    got = check_number(value, "--knob", **rule)
    assert got == value and (not rule.get("integer") or isinstance(got, int))


@pytest.mark.parametrize(
    ("key", "value"),
    [("seed", -1), ("interval_s", 1e300), ("power_rate_hz", 1e9), ("alpha", 1.0),
     ("count", 0), ("device_load", 1.5), ("deadline_ms", 0.0), ("battery_pct", -1.0),
     ("max_loaded_heads", -1)],
)  # fmt: skip
def test_run_settings_out_of_range(tmp_path, key, value) -> None:
    with pytest.raises(ConfigError, match=f"setting '{key}'"):
        load_settings(None, {"bundle": str(tmp_path), key: value})


def test_run_log_in_a_missing_folder_is_a_config_error(tiny_bundle, tmp_path, capsys) -> None:
    log = tmp_path / "no" / "such" / "run.jsonl"
    argv = ["run", "--bundle", str(tiny_bundle), "--policy", "local", "--count", "1"]
    assert cli_main([*argv, "--log", str(log), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "setting 'log'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "flags",
    [["--port", "70000"], ["--port", "-1"], ["--max-body-mb", "inf"], ["--max-body-mb", "nan"],
     ["--max-concurrency", "0"], ["--max-json-mb", "0"], ["--max-json-mb", "nan"]],
)  # fmt: skip
def test_serve_flags_out_of_range(tmp_path, capsys, flags) -> None:
    assert cli_main(["serve", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags", [["--speed", "nan"], ["--speed", "-1"], ["--count", "0"]])
def test_publish_carbon_checks_flags_before_connecting(capsys, flags) -> None:
    from carboncp.runtime.signals.traces import shipped_carbon_path

    trace = str(shipped_carbon_path("GB"))
    # port 1 on loopback: nothing listens; the flag must be refused before any connect wait
    argv = ["publish-carbon", "--trace", trace, "--broker", "mqtt://127.0.0.1:1", *flags]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "MQTT" not in err


@pytest.mark.parametrize("value", [[1], {"a": 1}, None, 3, "LTE"])
def test_check_choice_refuses_non_members_of_any_type(value) -> None:
    with pytest.raises(ConfigError, match=r"^key 'radio' must be one of \['lte', 'wifi'\]"):
        check_choice(value, "key 'radio'", ("wifi", "lte"))
    assert check_choice("lte", "key 'radio'", ("wifi", "lte")) == "lte"


@pytest.mark.parametrize("url", ["http://[::1", "http://host:0", "http://h:99999", "ftp://h:1"])
def test_bad_server_urls_are_config_errors(url) -> None:
    from carboncp.runtime.link.offload import parse_server_url

    with pytest.raises(ConfigError, match="server url"):
        parse_server_url(url)


@pytest.mark.parametrize("url", ["mqtt://[::1", "mqtt://h:0", "mqtts://h:70000", "http://h"])
def test_bad_broker_urls_are_config_errors(url) -> None:
    from carboncp.runtime.signals.mqtt import parse_broker_url

    with pytest.raises(ConfigError, match="broker URL"):
        parse_broker_url(url)


def test_urls_keep_their_default_ports() -> None:
    from carboncp.runtime.link.offload import parse_server_url
    from carboncp.runtime.signals.mqtt import parse_broker_url

    assert parse_server_url("http://edge.lan") == ("edge.lan", 80)
    assert parse_server_url("http://[::1]:8000") == ("::1", 8000)
    a = parse_broker_url("mqtts://u:p%40ss@b.lan")
    assert (a.host, a.port, a.tls, a.username, a.password) == ("b.lan", 8883, True, "u", "p@ss")
    assert parse_broker_url("mqtt://b.lan").port == 1883
