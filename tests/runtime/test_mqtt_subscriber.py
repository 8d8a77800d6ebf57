"""CarbonSubscriber against a real Mosquitto: retained values, Last Will, malformed floods,
broker restarts, TTL fallbacks and password/ACL refusals."""

from __future__ import annotations

import json
import math
import random
import threading
import time

import pytest
from carboncp.runtime.errors import ConfigError
from carboncp.runtime.signals.carbon import format_carbon_payload
from carboncp.runtime.signals.mqtt import (
    CarbonPublisher,
    CarbonSubscriber,
    carbon_topic,
    publish_carbon,
)

from tests.support.mosquitto import start_mosquitto, write_auth


@pytest.fixture
def mosquitto():
    broker = start_mosquitto()
    yield broker
    broker.cleanup()


class StatusWatcher:
    """A plain paho client recording the device status topic (JSON: `values` holds each
    message's state, `docs` the whole documents)."""

    def __init__(self, url: str, topic: str) -> None:
        import paho.mqtt.client as paho
        from carboncp.runtime.signals.mqtt import parse_broker_url

        a = parse_broker_url(url)
        self.values: list[str] = []
        self.docs: list[dict] = []
        self.cond = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="watcher")
        self.c.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self.c.on_message = self._msg
        self.c.connect(a.host, a.port)
        self.c.loop_start()

    def _msg(self, c, u, msg):
        with self.cond:
            doc = json.loads(msg.payload.decode())
            self.docs.append(doc)
            self.values.append(doc["state"])
            self.cond.notify_all()

    def wait_value(self, value: str, n: int = 1, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.values.count(value) >= n, timeout)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_retained_value_status_and_last_will(mosquitto):
    publish_carbon(mosquitto.url, "DE", 432.5, time.time() - 30, source="test")
    watcher = StatusWatcher(mosquitto.url, "carboncp/device/pi-7/status")
    sub = CarbonSubscriber(mosquitto.url, ["DE", "FR"], device_id="pi-7", fallback={"FR": 60.0})
    with sub:
        sub.wait_connected(5)
        assert sub.wait_for("DE", lambda r: True, 5)
        v = sub.current("DE")
        assert (v.gco2_per_kwh, v.state, v.reading.source) == (432.5, "live", "test")
        assert 25 < v.age_s < 60
        fr = sub.current("FR")  # nothing published for FR: the configured constant
        assert (fr.gco2_per_kwh, fr.state, fr.flags) == (60.0, "fallback", ("carbon_fallback",))
        assert watcher.wait_value("online")
        # an ungraceful drop (no DISCONNECT): the broker publishes the Last Will, and the
        # subscriber reconnects, resubscribes in on_connect and announces itself again
        sub._client.socket().close()
        assert watcher.wait_value("lost")
        assert watcher.wait_value("online", n=2, timeout=8)
        # the retained value again, after the resubscription (waiting for any DE reading
        # raced with it: the first one is still there; failed 2 runs in 3 under Python 3.10)
        assert sub.wait_for("DE", lambda r: sub.accepted >= 2, 5) and sub.connects >= 2
    assert watcher.wait_value("offline")  # clean stop announces offline, with the counts
    last = watcher.docs[-1]
    assert last["device_id"] == "pi-7" and last["accepted"] >= 2 and last["refused"] == {}
    assert last["ts"].endswith("Z")
    watcher.close()
    sub.stop()  # idempotent


def malformed_payloads(now: float, n_random: int = 400) -> list[tuple[str, bytes]]:
    rng = random.Random(1234)
    t = carbon_topic("DE")
    good = {"zone": "DE", "gco2_per_kwh": 300, "ts": now, "source": "x", "kind": "average"}

    def mut(**kw):
        d = dict(good)
        d.update(kw)
        return json.dumps(d).encode()

    table = [
        mut(gco2_per_kwh="300"[::-1] + "x"),
        mut(gco2_per_kwh=None),
        mut(gco2_per_kwh=[300]),
        mut(gco2_per_kwh={"v": 1}),
        mut(gco2_per_kwh=True),
        mut(gco2_per_kwh=-1),
        mut(gco2_per_kwh=-1e-9),
        mut(gco2_per_kwh=2000.5),
        mut(gco2_per_kwh=1e308),
        b'{"zone":"DE","gco2_per_kwh":NaN,"ts":%d}' % now,
        b'{"zone":"DE","gco2_per_kwh":Infinity,"ts":%d}' % now,
        b'{"zone":"DE","gco2_per_kwh":-Infinity,"ts":%d}' % now,
        b"NaN",
        b"-5",
        b"99999999",
        mut(ts=now - 10 * 86400),  # stale
        mut(ts=now + 86400),  # future
        mut(ts="not a time"),
        mut(ts=None),
        mut(ts=now * 1000),
        mut(zone="FR"),  # a zone other than the topic's
        mut(zone=None, gco2_per_kwh=1) + b"x",
        mut(zone=42),
        mut(kind="renewable"),
        mut(replay="yes"),
        mut(replay=True),
        mut(forecast=[[now, float("nan")]]).replace(b"NaN", b"NaN"),
        mut(forecast={"a": 1}),
        b"[]",
        b"{}",
        b"null",
        b"true",
        b'"300"',
        b"",
        b"   ",
        b"\x00\x01\x02",
        b"{" * 3000,
        b"[" * 50000 + b"]" * 50000,  # recursion, and over the size limit
        b"9" * 20000,  # size limit
        json.dumps({"data": []}).encode(),
        json.dumps({"data": [{"intensity": {"actual": -3}, "from": now}]}).encode(),
        json.dumps({"carbonIntensity": "high", "datetime": now, "zone": "DE"}).encode(),
        json.dumps({"moer": "lots", "point_time": now}).encode(),
        json.dumps({"moer": 1e7, "point_time": now}).encode(),  # 4.5e6 g/kWh
    ]
    out = [(t, p) for p in table]
    while len(out) < 1000 - n_random:
        out.append((t, rng.choice(table)))
    for _ in range(n_random):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        try:  # a random string that happens to be a valid number would be a good payload
            v = float(raw.decode())
            if math.isfinite(v) and 0 <= v <= 2000:
                raw = b"\xff" + raw
        except (UnicodeDecodeError, ValueError):
            pass
        out.append((t, raw))
    return out


def test_malformed_flood_keeps_last_good_value(mosquitto):
    sub = CarbonSubscriber(mosquitto.url, ["DE"], ttl_s=3600)
    with sub, CarbonPublisher(mosquitto.url) as pub:
        sub.wait_connected(5)
        pub.publish("DE", 123.0, time.time(), source="good")
        assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 123.0, 5)
        base_received = sub.received
        bad = malformed_payloads(time.time())
        assert len(bad) >= 1000
        for topic, payload in bad:
            pub.publish_raw(topic, payload, retain=False)
        deadline = time.monotonic() + 8
        while sub.received - base_received < len(bad) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sub.received - base_received == len(bad)  # nothing lost
        assert sub.accepted == 1  # not one malformed payload was taken
        errors = sub.stats["errors"]
        assert sum(errors.values()) == len(bad)
        assert not any(k.startswith("callback:") for k in errors)  # all were refusals, no crash
        for reason in (
            "parse",
            "type",
            "nan",
            "range",
            "stale",
            "future",
            "zone_mismatch",
            "too_large",
        ):
            assert errors.get(reason, 0) > 0, (reason, errors)
        v = sub.current("DE")
        assert (v.gco2_per_kwh, v.state) == (123.0, "live")
        # alive: a valid message still gets through
        pub.publish("DE", 77.0, time.time(), source="good")
        assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 77.0, 5)
        assert sub.connected and sub.connects == 1


def test_older_value_does_not_replace_newer(mosquitto):
    with CarbonSubscriber(mosquitto.url, ["DE"]) as sub, CarbonPublisher(mosquitto.url) as pub:
        sub.wait_connected(5)
        now = time.time()
        pub.publish("DE", 200.0, now)
        assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 200.0, 5)
        pub.publish("DE", 999.0, now - 600)
        pub.publish("DE", 201.0, now + 1)
        assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 201.0, 5)
        assert sub.error_counts["out_of_order"] == 1


def test_broker_restart_new_retained_value_within_5s(mosquitto):
    sub = CarbonSubscriber(mosquitto.url, ["DE"], reconnect_min_s=0.5, reconnect_max_s=2)
    with sub:
        publish_carbon(mosquitto.url, "DE", 300.0)
        sub.wait_connected(5)
        assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 300.0, 5)
        mosquitto.kill()  # crash, not a clean shutdown
        deadline = time.monotonic() + 5
        while sub.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not sub.connected
        v = sub.current("DE")  # broker down: the last good value, still within its TTL
        assert (v.gco2_per_kwh, v.state) == (300.0, "live")
        time.sleep(1.0)  # let the backoff grow a little
        mosquitto.start()
        publish_carbon(mosquitto.url, "DE", 111.0)
        # retained and delivered on the subscriber's own reconnect + resubscribe
        assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 111.0, 5.0)
        assert sub.connects == 2 and sub.current("DE").state == "live"


def test_ttl_then_held_or_fallback():
    # no broker needed: values are injected through the message callback as paho would
    class Msg:
        def __init__(self, topic, payload):
            self.topic, self.payload = topic, payload

    now = [1_700_000_000.0]
    sub = CarbonSubscriber("mqtt://127.0.0.1:9", ["DE", "PL"], ttl_s=600, now_fn=lambda: now[0],
                           fallback={"PL": 700.0})  # fmt: skip
    for zone, v in (("DE", 250.0), ("PL", 650.0)):
        sub._client.on_message(
            None, None, Msg(carbon_topic(zone), format_carbon_payload(zone, v, now[0]))
        )
    assert sub.current("DE").state == "live"
    now[0] += 601
    de, pl = sub.current("DE"), sub.current("PL")
    assert (de.gco2_per_kwh, de.state, de.flags) == (250.0, "held", ("carbon_held",))
    assert (pl.gco2_per_kwh, pl.state) == (700.0, "fallback") and pl.reading.gco2_per_kwh == 650.0
    sub2 = CarbonSubscriber("mqtt://127.0.0.1:9", ["DE"])
    missing = sub2.current("DE")
    assert missing.state == "missing" and missing.gco2_per_kwh is None
    with pytest.raises(ConfigError, match="not subscribed"):
        sub2.current("XX")
    # a callback that blows up is counted, not raised into paho's thread
    sub._client.on_message(None, None, object())
    assert sub.error_counts["callback:on_message"] == 1


ACL = """\
user device
topic read carboncp/carbon/#
topic readwrite carboncp/device/#

user grid
topic readwrite carboncp/carbon/#
"""


def test_password_and_acl(tmp_path):
    conf = write_auth(tmp_path / "auth", {"device": "s3cret", "grid": "gr1d"}, ACL)
    broker = start_mosquitto(conf)
    try:
        bad = CarbonSubscriber(broker.url, ["DE"], username="device", password="wrong")
        with bad, pytest.raises(ConfigError, match="not authorised: check username/password"):
            bad.wait_connected(5)
        assert bad.error_counts["connect_refused"] >= 1
        with pytest.raises(ConfigError, match="not authorised"):
            publish_carbon(broker.url, "DE", 1.0, username="grid", password="nope")
        anon = CarbonSubscriber(broker.url, ["DE"])
        with anon, pytest.raises(ConfigError, match="refused"):
            anon.wait_connected(5)

        sub = CarbonSubscriber(
            broker.url, ["DE"], device_id="device", username="device", password="s3cret"
        )
        with sub:
            sub.wait_connected(5)
            publish_carbon(broker.url, "DE", 222.0, username="grid", password="gr1d")
            assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 222.0, 5)
            # the ACL stops the device from writing carbon values (broker drops it silently)
            with CarbonPublisher(broker.url, username="device", password="s3cret") as rogue:
                rogue.publish("DE", 5.0, time.time())
            publish_carbon(broker.url, "DE", 223.0, username="grid", password="gr1d")
            assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 223.0, 5)
            assert sub.accepted == 2  # 5.0 never arrived
    finally:
        broker.cleanup()
