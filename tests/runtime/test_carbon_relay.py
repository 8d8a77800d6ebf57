"""`carboncp carbon-relay` against a local fake of the three providers' APIs (real HTTP on
127.0.0.1) and a real Mosquitto: documented payloads, error answers with backoff, and the
relay end to end into `carboncp run`'s records."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time

import pytest
from carboncp.runtime.cli import main
from carboncp.runtime.errors import ConfigError
from carboncp.runtime.signals.carbon import LBS_PER_MWH_TO_G_PER_KWH
from carboncp.runtime.signals.mqtt import CarbonPublisher, CarbonSubscriber
from carboncp.runtime.signals.relay import CarbonRelay, ProviderConfig

from tests.support.fake_carbon_api import FakeCarbonApi
from tests.support.mosquitto import start_mosquitto

EM_PATH, WT_PATH = "/v3/carbon-intensity/latest", "/v3/forecast"


@pytest.fixture
def mosquitto():
    broker = start_mosquitto()
    yield broker
    broker.cleanup()


@pytest.fixture
def api():
    a = FakeCarbonApi().start()
    yield a
    a.stop()


def em_config(api, **kw) -> ProviderConfig:
    kw = {"token": api.EM_TOKEN, **kw}
    return ProviderConfig("electricitymaps", "DE-LU", provider_zone="DE", api_url=api.url, **kw)


def test_each_provider_is_relayed_as_a_payload_the_device_accepts(api, mosquitto):
    api.script(EM_PATH, [api.em_latest("DE", 302)])
    api.script("/intensity", [api.uk_intensity(actual=None, forecast=181)])
    api.script("/login", [api.ok(lambda: {"token": api.WT_TOKEN})])
    api.script(WT_PATH, [api.wt_forecast(800.0)])
    device = CarbonSubscriber(mosquitto.url, ["DE-LU", "GB", "US-CAL-CISO"])
    marginal = CarbonSubscriber(mosquitto.url, ["US-CAL-CISO"], signals=["marginal/direct"])
    configs = [
        em_config(api),
        ProviderConfig("ukci", "GB", api_url=api.url),
        ProviderConfig(
            "watttime",
            "US-CAL-CISO",
            provider_zone="CAISO_NORTH",
            api_url=api.url,
            username=api.WT_USER,
            password=api.WT_PASSWORD,
        ),
    ]
    with device, marginal, CarbonPublisher(mosquitto.url) as pub:
        for cfg in configs:
            assert CarbonRelay(cfg, pub, interval_s=0.01).run(count=1) == 1
        assert device.wait_for("DE-LU", lambda r: r.gco2_per_kwh == 302.0, 5)
        assert device.wait_for("GB", lambda r: r.gco2_per_kwh == 181.0, 5)
        assert marginal.wait_for("US-CAL-CISO", lambda r: True, 5)
        de, gb = device.latest("DE-LU"), device.latest("GB")
        assert (de.signal, de.source) == ("average/direct", "relay:electricitymaps")
        assert gb.signal == "average/direct"
        wt = marginal.latest("US-CAL-CISO")
        assert wt.signal == "marginal/direct"
        assert wt.gco2_per_kwh == pytest.approx(800.0 * LBS_PER_MWH_TO_G_PER_KWH, abs=1e-3)
        assert len(wt.forecast) == 287  # the rest of the 24 h forecast travels with it
        # a device deciding on average intensities refuses the marginal signal, by name
        # the same message reaches the device's subscriber on its own schedule: wait for it
        deadline = time.monotonic() + 5
        while not device.refusals() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert device.latest("US-CAL-CISO") is None
        assert device.refusals() == {"signal_kind": 1}
    em_query = next(p for _, p, _ in api.requests if p.startswith(EM_PATH))
    assert "zone=DE" in em_query and "emissionFactorType=direct" in em_query


def test_error_answers_back_off_and_then_publish(api, mosquitto):
    api.script(EM_PATH, [
        api.status(429, {"Retry-After": "1"}),
        api.status(503), api.status(500),
        ("sleep", 1.0, api.em_latest("DE", 1.0)),  # answers after the relay's 0.4 s timeout
        api.status(200, body=b"<html>maintenance</html>"),
        api.em_latest("DE", 299),
    ])  # fmt: skip
    with CarbonPublisher(mosquitto.url) as pub:
        relay = CarbonRelay(em_config(api), pub, interval_s=0.05, timeout_s=0.4,
                            backoff_min_s=0.1, backoff_max_s=0.3)  # fmt: skip
        assert relay.run(count=1) == 1
    assert relay.last.gco2_per_kwh == 299.0
    assert dict(relay.counts) == {
        "rate_limited": 1, "server": 2, "timeout": 1, "bad_answer": 1, "published": 1,
    }  # fmt: skip
    t = api.paths(EM_PATH)
    gaps = [b - a for a, b in itertools.pairwise(t)]
    assert gaps[0] >= 1.0  # Retry-After honoured
    assert 0.2 <= gaps[1] < 0.6  # 2nd failure: 0.2 s
    assert 0.3 <= gaps[2] < 0.7  # 3rd: 0.4 capped at 0.3
    assert gaps[3] >= 0.65  # the timeout (0.4 s) plus 0.3 s, less clock jitter between the sides


def test_refused_credentials(api, mosquitto):
    api.script(EM_PATH, [api.em_latest("DE", 300)])
    with CarbonPublisher(mosquitto.url) as pub:
        with pytest.raises(ConfigError, match="refused the credentials"):
            CarbonRelay(em_config(api, token="wrong"), pub).run(count=1)
        # WattTime: an expired token is replaced by a new login, once
        api.script("/login", [api.ok(lambda: {"token": api.WT_TOKEN})])
        api.script(WT_PATH, [api.wt_forecast(700.0)])
        cfg = ProviderConfig("watttime", "US-CAL-CISO", provider_zone="CAISO_NORTH",
                             api_url=api.url, token="expired", username=api.WT_USER,
                             password=api.WT_PASSWORD)  # fmt: skip
        relay = CarbonRelay(cfg, pub)
        assert relay.run(count=1) == 1 and relay.client.logins == 1
    with pytest.raises(ConfigError, match="ELECTRICITYMAPS_TOKEN"):
        ProviderConfig("electricitymaps", "DE")


def test_cli_wrong_token_is_one_line(api, mosquitto, tmp_path):
    api.script(EM_PATH, [api.em_latest("DE", 300)])
    token = tmp_path / "token"
    token.write_text("not-the-token\n")
    proc = subprocess.run(
        [sys.executable, "-m", "carboncp.runtime.cli", "carbon-relay", "--provider",
         "electricitymaps", "--zone", "DE-LU", "--provider-zone", "DE", "--api-url", api.url,
         "--token-file", str(token), "--broker", mosquitto.url, "--count", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "refused the credentials" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_relay_end_to_end_into_carboncp_run(api, mosquitto, tmp_path, tiny_bundle, capsys):
    """relay (Electricity Maps DE -> DE-LU, UK -> GB) -> Mosquitto -> `carboncp run`."""
    api.script(EM_PATH, [api.status(503), api.em_latest("DE", 345)])
    api.script("/intensity", [api.uk_intensity(actual=152)])
    token = tmp_path / "em-token"
    token.write_text(api.EM_TOKEN)
    common = ["--api-url", api.url, "--broker", mosquitto.url, "--backoff-min", "0.1", "--quiet"]
    relays = [
        ["carbon-relay", "--provider", "electricitymaps", "--zone", "DE-LU", "--provider-zone",
         "DE", "--token-file", str(token), "--count", "1", *common],
        ["carbon-relay", "--provider", "ukci", "--zone", "GB", "--count", "1", *common],
    ]  # fmt: skip
    for argv in relays:
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "carbon-relay: 1 values published" in out and "errors: server 1" in out
    log = tmp_path / "run.jsonl"
    argv = ["run", "--bundle", str(tiny_bundle), "--policy", "local", "--count", "3", "--quiet"]
    assert main([*argv, "--broker", mosquitto.url, "--log", str(log)]) == 0
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["carbon_state"] for r in recs] == [{"DE-LU": "live", "GB": "live"}] * 3
    assert {r["seen"]["device_gco2_per_kwh"] for r in recs} == {345.0}
    assert {r["seen"]["server_gco2_per_kwh"] for r in recs} == {152.0}
    assert all(r["carbon_refused"] == {} for r in recs)


def test_relay_stops_on_event(api, mosquitto):
    api.script("/intensity", [api.status(500)])
    with CarbonPublisher(mosquitto.url) as pub:
        relay = CarbonRelay(ProviderConfig("ukci", "GB", api_url=api.url), pub,
                            backoff_min_s=5.0)  # fmt: skip
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        t0 = time.monotonic()
        assert relay.run(stop=stop) == 0
        assert time.monotonic() - t0 < 3.0 and relay.counts["server"] == 1
