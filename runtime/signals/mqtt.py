"""Carbon signals over MQTT (paho-mqtt 2.x, CallbackAPIVersion.VERSION2).

Topics: `carboncp/carbon/<zone>` (retained, one value per zone, payloads per
runtime/signals/carbon.py) and `carboncp/device/<id>/status`, retained JSON:
{"state": "online"|"offline"|"lost", "device_id", "ts", "received", "accepted", "refused":
{reason: count}}. "online" on every connect and at most every `status_interval_s` while the
counts change, "offline" on a clean stop, "lost" as the Last Will (the broker publishes it when
the device vanishes; its counts are those at start-up).

The subscriber follows docs/METHOD.md Appendix B.3: it subscribes in `on_connect` (so every reconnect
resubscribes and receives the retained values again), reconnects with exponential backoff
(`reconnect_delay_set`), and every callback catches and counts its own errors in
`error_counts` (paho would otherwise re-raise into its network thread and stop). A value is
live until `ttl_s` after its timestamp; then the zone's configured fallback constant is used
(state "fallback"), or, with none configured, the last value is held and flagged (state "held").
docs/FAULTS.md has the table.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from carboncp.runtime.checks import split_url
from carboncp.runtime.errors import BackendMissingError, ConfigError, SignalError
from carboncp.runtime.signals.carbon import (
    DEFAULT_MAX_FUTURE_S,
    DEFAULT_SIGNAL,
    MAX_PAYLOAD_BYTES,
    TOPIC_PREFIX,
    ZONE_RE,
    CarbonReading,
    PayloadError,
    check_signals,
    format_carbon_payload,
    parse_carbon_payload,
)

STATUS_TOPIC = "carboncp/device/{device_id}/status"
# A device id is one MQTT topic level and a client-id prefix: no '/', '+', '#' or spaces.
DEVICE_ID_RE = ZONE_RE
DEVICE_ID_RULE = "1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"


def check_device_id(device_id: Any, what: str = "device_id") -> str:
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise ConfigError(
            f"{what} {device_id!r} is not usable in an MQTT topic: use {DEVICE_ID_RULE}"
        )
    return device_id


def _iso(ts_s: float) -> str:
    return (
        datetime.fromtimestamp(ts_s, tz=timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def carbon_topic(zone: str) -> str:
    return TOPIC_PREFIX + zone


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str) -> BrokerAddress:
    """'mqtt://host[:port]' (1883) or 'mqtts://host[:port]' (8883), optional user:pass@."""
    u, port = split_url(
        url,
        "broker URL",
        {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883},
        "mqtt://host:port or mqtts://host:port",
    )
    tls = u.scheme in ("mqtts", "ssl")
    user = unquote(u.username) if u.username else None
    pw = unquote(u.password) if u.password else None
    return BrokerAddress(u.hostname, port, tls, user, pw)


def _refusal_message(url: str, reason: Any) -> str:
    text = str(reason)
    low = text.lower()
    if "authori" in low or "user name or password" in low or "bad user" in low:
        hint = "not authorised: check username/password (and the broker's ACL)"
    elif "identifier" in low:
        hint = "client id rejected: set a different device_id"
    else:
        hint = "see the broker's log"
    return f"MQTT broker {url} refused the connection ({text}): {hint}"


def make_client(
    broker_url: str,
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls_ca: str | None = None,
    tls_insecure: bool = False,
    client_factory: Callable[..., Any] | None = None,
) -> tuple[Any, BrokerAddress]:
    """A configured (not yet connected) paho client for `broker_url`."""
    addr = parse_broker_url(broker_url)
    if client_factory is None:
        try:
            import paho.mqtt.client as paho
        except ImportError as exc:
            raise BackendMissingError(
                "MQTT needs paho-mqtt 2.x: pip install 'carboncp[runtime]'"
            ) from exc
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
    else:
        client = client_factory(client_id=client_id)
    client.suppress_exceptions = True  # second line of defence behind our own wrappers
    user = username if username is not None else addr.username
    pw = password if password is not None else addr.password
    if user is not None:
        client.username_pw_set(user, pw)
    if addr.tls or tls_ca:
        import ssl

        if tls_ca is not None and not Path(tls_ca).is_file():
            raise ConfigError(
                f"tls_ca {tls_ca}: no such file; give the CA certificate (PEM) that signed "
                "the broker's certificate"
            )
        try:
            client.tls_set(
                ca_certs=tls_ca, cert_reqs=ssl.CERT_NONE if tls_insecure else ssl.CERT_REQUIRED
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"tls_ca {tls_ca}: not a usable CA certificate ({exc}); expected a PEM file"
            ) from None
        if tls_insecure:
            client.tls_insecure_set(True)
    return client, addr


@dataclass(frozen=True)
class CarbonValue:
    """What the loop uses for a zone now. `state`: live | held | fallback | missing."""

    gco2_per_kwh: float | None
    age_s: float
    state: str
    reading: CarbonReading | None

    @property
    def flags(self) -> tuple[str, ...]:
        return () if self.state == "live" else (f"carbon_{self.state}",)


class CarbonSubscriber:
    """Keeps the latest valid carbon value per zone from retained MQTT topics."""

    def __init__(
        self,
        broker_url: str,
        zones: list[str],
        *,
        device_id: str = "carboncp",
        ttl_s: float = 3600.0,
        fallback: dict[str, float] | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_insecure: bool = False,
        client_factory: Callable[..., Any] | None = None,
        now_fn: Callable[[], float] = time.time,
        allow_replay: bool = False,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        keepalive_s: int = 10,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 4.0,
        on_reading: Callable[[CarbonReading], None] | None = None,
        signals: Collection[str] | None = (DEFAULT_SIGNAL,),
        zone_map: Mapping[str, str] | None = None,
        status_interval_s: float = 30.0,
    ) -> None:
        if not zones:
            raise ConfigError("CarbonSubscriber: zones is empty; name at least one grid zone")
        check_device_id(device_id)
        try:
            self.signals = None if signals is None else check_signals(signals, "signals")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.zone_map = dict(zone_map or {})
        for src, dst in self.zone_map.items():
            if not (isinstance(src, str) and ZONE_RE.match(src)) or not (
                isinstance(dst, str) and ZONE_RE.match(dst)
            ):
                raise ConfigError(f"zone map {src!r} -> {dst!r}: both must be zone ids")
        for z in zones:
            if not ZONE_RE.match(z):
                raise ConfigError(f"zones: {z!r} is not a zone id (letters, digits, - _ .)")
        if not ttl_s > 0:
            raise ConfigError(f"ttl_s must be > 0, got {ttl_s}")
        self.broker_url, self.zones = broker_url, list(dict.fromkeys(zones))
        self.device_id, self.ttl_s = device_id, float(ttl_s)
        self.fallback = dict(fallback or {})
        for z, v in self.fallback.items():
            if not (isinstance(v, (int, float)) and 0 <= v <= 2000):
                raise ConfigError(f"fallback[{z!r}] = {v!r}: expected g/kWh in 0..2000")
        self.now_fn, self.allow_replay = now_fn, allow_replay
        self.max_future_s, self.max_bytes = max_future_s, max_bytes
        self.on_reading = on_reading
        self.status_topic = STATUS_TOPIC.format(device_id=device_id)
        self.error_counts: Counter[str] = Counter()
        self.last_refusal: dict[str, str] = {}  # reason -> the latest refusal's message
        self.status_interval_s = float(status_interval_s)
        self._status_sent_s = 0.0
        self.received = 0
        self.accepted = 0
        self.connects = 0
        self.disconnects = 0
        self.connect_error: ConfigError | None = None
        self._latest: dict[str, CarbonReading] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._changed = threading.Condition(self._lock)
        self._started = self._stopped = False
        self._keepalive = keepalive_s
        client_id = f"{device_id}-{uuid.uuid4().hex[:8]}"
        self._client, self._addr = make_client(
            broker_url,
            client_id,
            username=username,
            password=password,
            tls_ca=tls_ca,
            tls_insecure=tls_insecure,
            client_factory=client_factory,
        )
        self._client.will_set(self.status_topic, self.status_payload("lost"), qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)
        self._client.on_connect = self._guard("on_connect", self._on_connect)
        self._client.on_disconnect = self._guard("on_disconnect", self._on_disconnect)
        self._client.on_message = self._guard("on_message", self._on_message)
        self._client.on_connect_fail = self._guard("on_connect_fail", self._on_connect_fail)

    # -- callbacks (each wrapped by _guard: catch, count, never raise into paho) ---------
    def _guard(self, name: str, fn: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:
                with self._lock:
                    self.error_counts[f"callback:{name}"] += 1

        return wrapped

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            with self._lock:
                self.error_counts["connect_refused"] += 1
                self.connect_error = ConfigError(_refusal_message(self.broker_url, reason))
                self._changed.notify_all()
            return
        with self._lock:
            self.connects += 1
            self.connect_error = None
        client.subscribe([(carbon_topic(z), 1) for z in self.zones])
        self._status_sent_s = time.monotonic()
        client.publish(self.status_topic, self.status_payload("online"), qos=1, retain=True)
        self._connected.set()
        with self._lock:
            self._changed.notify_all()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected.clear()
        with self._lock:
            self.disconnects += 1

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        with self._lock:
            self.error_counts["connect_failed"] += 1

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        topic = msg.topic if isinstance(msg.topic, str) else str(msg.topic)
        with self._lock:
            self.received += 1
        try:
            zone = topic[len(TOPIC_PREFIX) :] if topic.startswith(TOPIC_PREFIX) else None
            if zone not in self.zones:
                raise PayloadError("unknown_zone", f"message on {topic[:80]!r}")
            reading = parse_carbon_payload(
                topic,
                bytes(msg.payload),
                self.now_fn(),
                expected_zone=zone,
                max_age_s=self.ttl_s,
                max_future_s=self.max_future_s,
                max_bytes=self.max_bytes,
                allow_replay=self.allow_replay,
                signals=self.signals,
                zone_map=self.zone_map,
            )
        except PayloadError as exc:
            self._refuse(exc.reason, f"{topic[:80]}: {exc}")
            return
        with self._lock:
            prev = self._latest.get(reading.zone)
            # An older value never replaces a newer one; but a value stamped ahead of this
            # clock (within max_future_s) orders only up to its arrival time, so a skewed
            # publisher cannot freeze the later values that follow it.
            if prev is not None and reading.ts_s < min(prev.ts_s, prev.received_s):
                self.error_counts["out_of_order"] += 1
                self.last_refusal["out_of_order"] = (
                    f"{topic[:80]}: value for {_iso(reading.ts_s)} is older than the one held"
                )
                return
            self._latest[reading.zone] = reading
            self.accepted += 1
            self._changed.notify_all()
        self._maybe_status()
        if self.on_reading is not None:
            self.on_reading(reading)

    def _refuse(self, reason: str, message: str) -> None:
        with self._lock:
            self.error_counts[reason] += 1
            self.last_refusal[reason] = message
        self._maybe_status()

    def _maybe_status(self) -> None:
        """Republish "online" with the current counts, at most every status_interval_s."""
        now = time.monotonic()
        if self._connected.is_set() and now - self._status_sent_s >= self.status_interval_s:
            self._status_sent_s = now
            self._client.publish(
                self.status_topic, self.status_payload("online"), qos=1, retain=True
            )

    def refusals(self) -> dict[str, int]:
        """Refused messages per reason so far (a copy; safe from any thread)."""
        with self._lock:
            return {k: v for k, v in self.error_counts.items() if v}

    def refusal_messages(self) -> dict[str, str]:
        """The latest refusal's message per reason (a copy; safe from any thread)."""
        with self._lock:
            return dict(self.last_refusal)

    def status_payload(self, state: str) -> str:
        """The status topic's JSON: state, device id, time, received/accepted/refused counts."""
        with self._lock:
            doc = {
                "state": state,
                "device_id": self.device_id,
                "ts": _iso(time.time()),
                "received": self.received,
                "accepted": self.accepted,
                "refused": dict(self.error_counts),
            }
        return json.dumps(doc, separators=(",", ":"))

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> CarbonSubscriber:
        if self._stopped:
            raise SignalError("CarbonSubscriber was stopped; make a new one")
        if not self._started:
            self._started = True
            self._client.connect_async(self._addr.host, self._addr.port, keepalive=self._keepalive)
            self._client.loop_start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Block until connected; raise the broker's refusal (ConfigError) or SignalError."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._connected.is_set() and self.connect_error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SignalError(
                        f"no connection to MQTT broker {self.broker_url} within {timeout:g} s "
                        f"(errors: {dict(self.error_counts)}); is it running and reachable?"
                    )
                self._changed.wait(min(left, 0.1))
            if self.connect_error is not None and not self._connected.is_set():
                raise self.connect_error

    def wait_for(
        self, zone: str, predicate: Callable[[CarbonReading], bool], timeout: float
    ) -> bool:
        """Wait until the zone's latest reading satisfies `predicate` (tests, demo start-up)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                r = self._latest.get(zone)
                if r is not None and predicate(r):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.1))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        """Publish "offline", disconnect and stop the network thread; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            try:
                if self._connected.is_set():
                    info = self._client.publish(
                        self.status_topic, self.status_payload("offline"), qos=1, retain=True
                    )
                    info.wait_for_publish(timeout=1.0)
                self._client.disconnect()
            except Exception:
                self.error_counts["stop"] += 1
            self._client.loop_stop()
        self._connected.clear()

    def __enter__(self) -> CarbonSubscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- values ----------------------------------------------------------------------------
    def latest(self, zone: str) -> CarbonReading | None:
        with self._lock:
            return self._latest.get(zone)

    def current(self, zone: str, now_s: float | None = None) -> CarbonValue:
        """The value to use for `zone` now: live, held past TTL, the fallback, or missing."""
        if zone not in self.zones:
            raise ConfigError(f"zone {zone!r} is not subscribed (zones: {self.zones})")
        now = self.now_fn() if now_s is None else now_s
        with self._lock:
            r = self._latest.get(zone)
        const = self.fallback.get(zone, self.fallback.get("*"))
        if r is not None:
            age = max(0.0, now - r.ts_s)
            if age <= self.ttl_s:
                return CarbonValue(r.gco2_per_kwh, age, "live", r)
            if const is not None:
                return CarbonValue(float(const), age, "fallback", r)
            return CarbonValue(r.gco2_per_kwh, age, "held", r)
        if const is not None:
            return CarbonValue(float(const), float("inf"), "fallback", None)
        return CarbonValue(None, float("inf"), "missing", None)

    @property
    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "connected": self.connected,
                "connects": self.connects,
                "disconnects": self.disconnects,
                "received": self.received,
                "accepted": self.accepted,
                "errors": dict(self.error_counts),
            }

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else ("connected" if self.connected else "disconnected")
        return (
            f"<CarbonSubscriber {state} {self.broker_url} zones={self.zones} "
            f"accepted={self.accepted} errors={sum(self.error_counts.values())}>"
        )


class CarbonPublisher:
    """Publishes retained carbon values (the trace replay, tests, a grid-data bridge)."""

    def __init__(
        self,
        broker_url: str,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_insecure: bool = False,
        client_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.connect_error: ConfigError | None = None
        self._ready = threading.Event()
        self._client, self._addr = make_client(
            broker_url,
            client_id or f"carboncp-pub-{uuid.uuid4().hex[:8]}",
            username=username,
            password=password,
            tls_ca=tls_ca,
            tls_insecure=tls_insecure,
            client_factory=client_factory,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=4)
        self._client.on_connect = self._on_connect
        self._started = self._stopped = False
        self.published = 0

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if getattr(reason, "is_failure", False):
                self.connect_error = ConfigError(_refusal_message(self.broker_url, reason))
            else:
                self.connect_error = None
            self._ready.set()
        except Exception:  # never raise into paho's thread
            self._ready.set()

    def start(self, timeout: float = 10.0) -> CarbonPublisher:
        if not self._started:
            self._started = True
            self._client.connect_async(self._addr.host, self._addr.port, keepalive=30)
            self._client.loop_start()
        if not self._ready.wait(timeout):
            self.stop()
            raise SignalError(
                f"no connection to MQTT broker {self.broker_url} within {timeout:g} s"
            )
        if self.connect_error is not None:
            err = self.connect_error
            self.stop()
            raise err
        return self

    def publish_raw(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = True,
        qos: int = 1,
        timeout: float = 5.0,
    ) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=timeout)
        if not info.is_published():
            raise SignalError(
                f"publish to {topic} on {self.broker_url} not acknowledged in {timeout:g} s"
            )
        self.published += 1

    def publish(
        self,
        zone: str,
        gco2_per_kwh: float,
        ts_s: float,
        *,
        source: str = "carboncp",
        kind: str = "average",
        basis: str = "direct",
        replay: bool = False,
        forecast: list[tuple[float, float]] | None = None,
        retain: bool = True,
    ) -> None:
        payload = format_carbon_payload(
            zone, gco2_per_kwh, ts_s, source=source, kind=kind, basis=basis, forecast=forecast,
            replay=replay,
        )  # fmt: skip
        self.publish_raw(carbon_topic(zone), payload, retain=retain)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            try:
                self._client.disconnect()
            finally:
                self._client.loop_stop()

    def __enter__(self) -> CarbonPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def publish_carbon(
    broker_url: str, zone: str, gco2_per_kwh: float, ts_s: float | None = None, **kwargs: Any
) -> None:
    """Publish one retained value and disconnect (kwargs: username, password, tls_ca, source,
    kind, replay, forecast)."""
    conn = {
        k: kwargs.pop(k) for k in ("username", "password", "tls_ca", "tls_insecure") if k in kwargs
    }
    with CarbonPublisher(broker_url, **conn) as pub:
        pub.publish(zone, gco2_per_kwh, time.time() if ts_s is None else ts_s, **kwargs)
