"""The embedded broker helper (Mosquitto subprocess or amqtt in-process) and TLS to Mosquitto."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from carboncp.runtime.errors import SignalError
from carboncp.runtime.signals.mqtt import CarbonSubscriber, publish_carbon
from carboncp.tooling.broker import AmqttBroker, free_port, start_broker, wait_port

from tests.support.mosquitto import readable_dir, start_mosquitto
from tests.support.requires import require, require_tool


def test_amqtt_in_process_broker_serves_retained_and_restarts():
    require("amqtt", "the demo's in-process broker is amqtt (demo extra)")
    broker = start_broker(prefer="amqtt")
    try:
        assert isinstance(broker, AmqttBroker) and broker.running
        publish_carbon(broker.url, "GB", 150.0)
        with CarbonSubscriber(broker.url, ["GB"], reconnect_min_s=0.5, reconnect_max_s=1) as sub:
            assert sub.wait_for("GB", lambda r: r.gco2_per_kwh == 150.0, 5)
            broker.restart()  # amqtt keeps no retained values across a restart
            publish_carbon(broker.url, "GB", 151.0)
            assert sub.wait_for("GB", lambda r: r.gco2_per_kwh == 151.0, 5)
            assert sub.connects == 2
    finally:
        broker.cleanup()
    assert not broker.running
    broker.stop()  # idempotent


def test_mosquitto_broker_restart_keeps_retained_and_stop_is_idempotent():
    broker = start_mosquitto()
    try:
        publish_carbon(broker.url, "DE", 400.0)
        broker.restart()
        with CarbonSubscriber(broker.url, ["DE"]) as sub:
            assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 400.0, 5)  # persisted
        assert "127.0.0.1" in broker.conf.read_text()
        assert "allow_anonymous true" in broker.conf.read_text()
    finally:
        broker.cleanup()
        broker.cleanup()
    assert not broker.running and not broker.dir.exists()


def test_config_extra_without_mosquitto_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr("carboncp.tooling.broker.os.access", lambda p, m: False)
    from carboncp.runtime.errors import BackendMissingError

    with pytest.raises(BackendMissingError, match="apt-get install mosquitto"):
        start_broker(prefer="mosquitto", config_extra="password_file /x")


def make_certs(folder):
    """A CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    folder = readable_dir(folder)

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=carboncp-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def test_tls_listener(tmp_path):
    require_tool("openssl", "it makes the test certificates")
    certs = make_certs(tmp_path / "certs")
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncafile {certs / 'ca.crt'}\n"
        f"certfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n"
    )
    broker = start_mosquitto(extra)
    try:
        assert wait_port(tls_port, 5)
        url = f"mqtts://127.0.0.1:{tls_port}"
        publish_carbon(url, "DE", 333.0, tls_ca=str(certs / "ca.crt"))
        with CarbonSubscriber(url, ["DE"], tls_ca=str(certs / "ca.crt")) as sub:
            assert sub.wait_for("DE", lambda r: r.gco2_per_kwh == 333.0, 5)
        # without the CA the broker's certificate does not verify: no connection, counted
        untrusted = CarbonSubscriber(url, ["DE"])
        with untrusted, pytest.raises(SignalError, match="no connection"):
            untrusted.wait_connected(1.5)
        assert untrusted.error_counts["connect_failed"] >= 1
        with CarbonSubscriber(url, ["DE"], tls_insecure=True) as insecure:
            insecure.wait_connected(5)
            assert insecure.wait_for("DE", lambda r: True, 5)
    finally:
        broker.cleanup()
