"""Issue 10's carbon faults against a real Mosquitto: a value stamped in the future, refusals
visible on the status topic, signal kinds, zone maps, a missing tls_ca, the device id."""

from __future__ import annotations

import json
import time

import pytest
from carboncp.runtime.errors import ConfigError
from carboncp.runtime.signals.mqtt import (
    CarbonPublisher,
    CarbonSubscriber,
    carbon_topic,
    publish_carbon,
)

from tests.runtime.test_mqtt_subscriber import StatusWatcher
from tests.support.mosquitto import start_mosquitto


@pytest.fixture
def mosquitto():
    broker = start_mosquitto()
    yield broker
    broker.cleanup()


def _settle(sub: CarbonSubscriber, received: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sub.received < received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sub.received >= received


def test_far_future_value_is_refused_and_does_not_freeze_later_values(mosquitto):
    with CarbonSubscriber(mosquitto.url, ["DE"]) as sub, CarbonPublisher(mosquitto.url) as pub:
        sub.wait_connected(5)
        now = time.time()
        pub.publish("DE", 500.0, now + 250)  # a publisher whose clock is 250 s ahead
        _settle(sub, 1)
        assert sub.latest("DE") is None
        assert sub.refusals() == {"future": 1}
        assert "250 s in the future" in sub.refusal_messages()["future"]
        pub.publish("DE", 210.0, time.time())  # the next correct value is taken
        assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 210.0, 5)
        # a value within the skew allowance (30 s ahead) is taken, but it does not freeze
        # the values after it as out_of_order either
        pub.publish("DE", 220.0, time.time() + 30)
        assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 220.0, 5)
        pub.publish("DE", 230.0, time.time() + 1)
        assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 230.0, 5)
        assert "out_of_order" not in sub.refusals()


def test_status_topic_carries_refusal_counts(mosquitto):
    watcher = StatusWatcher(mosquitto.url, "carboncp/device/pi-9/status")
    sub = CarbonSubscriber(mosquitto.url, ["DE"], device_id="pi-9", status_interval_s=0.0)
    try:
        with sub, CarbonPublisher(mosquitto.url) as pub:
            sub.wait_connected(5)
            assert watcher.wait_value("online")
            pub.publish("DE", 300.0, time.time() - 7 * 86400, replay=True)  # a replayed value
            pub.publish_raw(carbon_topic("DE"), b'{"zone":"DE","gco2_per_kwh":"300","ts":1}')
            _settle(sub, 2)
            assert watcher.wait_value("online", n=3)
            assert watcher.docs[-1]["refused"] == {"replay": 1, "type": 1}
        assert watcher.wait_value("offline")
        assert watcher.docs[-1]["refused"] == {"replay": 1, "type": 1}
    finally:
        watcher.close()


def test_signal_kind_and_zone_map_over_the_broker(mosquitto):
    em = {"zone": "DE", "carbonIntensity": 237, "datetime": time.time() - 600}
    with CarbonPublisher(mosquitto.url) as pub:
        pub.publish_raw(carbon_topic("DE-LU"), json.dumps(em).encode())
    plain = CarbonSubscriber(mosquitto.url, ["DE-LU"])
    mapped = CarbonSubscriber(mosquitto.url, ["DE-LU"], zone_map={"DE": "DE-LU"})
    lifecycle = CarbonSubscriber(
        mosquitto.url, ["DE-LU"], zone_map={"DE": "DE-LU"}, signals=["average/lifecycle"]
    )
    with plain, mapped, lifecycle:
        for s in (plain, mapped):
            s.wait_connected(5)
            _settle(s, 1)
        assert plain.refusals() == {"zone_mismatch": 1}
        # mapped, but the payload has no emissionFactorType: lifecycle, the API's default,
        # refused by a device that decides on direct intensities
        assert mapped.refusals() == {"signal_kind": 1}
        assert lifecycle.wait_for("DE-LU", lambda r: r.gco2_per_kwh == 237.0, 5)
        assert lifecycle.latest("DE-LU").signal == "average/lifecycle"


def test_missing_tls_ca_is_a_config_error(tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="no such file"):
        CarbonSubscriber("mqtts://127.0.0.1:8883", ["DE"], tls_ca=missing)
    with pytest.raises(ConfigError, match="no such file"):
        publish_carbon("mqtts://127.0.0.1:8883", "DE", 1.0, tls_ca=missing)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a usable CA certificate"):
        CarbonSubscriber("mqtts://127.0.0.1:8883", ["DE"], tls_ca=str(bad))


@pytest.mark.parametrize("device_id", ["lab/pi#1", "pi+1", "a b", "", "x" * 65])
def test_device_id_must_be_a_topic_level(device_id):
    with pytest.raises(ConfigError, match="letters, digits"):
        CarbonSubscriber("mqtt://127.0.0.1:9", ["DE"], device_id=device_id)
