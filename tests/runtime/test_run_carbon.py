"""`carboncp run` and `carboncp publish-carbon` with a real Mosquitto (issue 10): replayed
values re-stamped to now feed the device; plain replays are refused visibly (records, stderr,
exit summary); the first inference waits for retained values; config faults are one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from carboncp.runtime.cli import main
from carboncp.runtime.signals.traces import load_carbon_csv

from tests.support.mosquitto import start_mosquitto

DATA = Path(__file__).resolve().parents[2] / "runtime" / "data" / "carbon"
DE_TRACE, GB_TRACE = DATA / "DE-LU_2023-09-11_8w.csv", DATA / "GB_2023-09-11_8w.csv"
pytestmark = pytest.mark.slow


@pytest.fixture
def mosquitto():
    broker = start_mosquitto()
    yield broker
    broker.cleanup()


def _run(tiny_bundle: Path, log: Path, *extra: str) -> int:
    argv = ["run", "--bundle", str(tiny_bundle), "--policy", "local", "--count", "3"]
    return main([*argv, "--quiet", "--log", str(log), *extra])


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _publish(url: str, *flags: str) -> None:
    for trace, zone in ((DE_TRACE, "DE-LU"), (GB_TRACE, "GB")):
        argv = ["publish-carbon", "--trace", str(trace), "--zone", zone, "--broker", url]
        assert main([*argv, "--speed", "0", "--count", "3", "--quiet", *flags]) == 0


def test_restamped_replay_feeds_the_device_from_the_first_inference(
    tiny_bundle, mosquitto, tmp_path, capsys
):
    _publish(mosquitto.url, "--restamp")
    assert "re-stamped" in capsys.readouterr().err
    log = tmp_path / "run.jsonl"
    assert _run(tiny_bundle, log, "--broker", mosquitto.url) == 0
    recs = _records(log)
    de = float(load_carbon_csv(DE_TRACE).gco2_per_kwh[2])
    gb = float(load_carbon_csv(GB_TRACE).gco2_per_kwh[2])
    # every record, the first included: the retained values, not the 400 g fallback
    assert [r["carbon_state"] for r in recs] == [{"DE-LU": "live", "GB": "live"}] * 3
    assert all(r["seen"]["device_gco2_per_kwh"] == pytest.approx(de, abs=1e-3) for r in recs)
    assert all(r["seen"]["server_gco2_per_kwh"] == pytest.approx(gb, abs=1e-3) for r in recs)
    assert all(r["carbon_refused"] == {} for r in recs)
    out = capsys.readouterr().out
    assert "carbon messages: 2 received, 2 accepted, refused: none" in out


def test_plain_replay_is_refused_and_says_so(tiny_bundle, mosquitto, tmp_path, capsys):
    _publish(mosquitto.url)  # trace timestamps, "replay": true
    capsys.readouterr()
    log = tmp_path / "run.jsonl"
    assert _run(tiny_bundle, log, "--broker", mosquitto.url) == 0
    recs = _records(log)
    assert all(r["carbon_refused"] == {"replay": 2} for r in recs)
    assert all(r["carbon_state"] == {"DE-LU": "fallback", "GB": "fallback"} for r in recs)
    cap = capsys.readouterr()
    assert "warning: carbon message refused (carboncp/carbon/" in cap.err
    assert "replay: a replayed trace value" in cap.err
    assert "carbon messages: 2 received, 0 accepted, refused: replay 2" in cap.out


def test_carbon_zone_map_and_signals_from_the_config(tiny_bundle, mosquitto, tmp_path):
    from carboncp.runtime.signals.mqtt import CarbonPublisher, carbon_topic

    now = time.time()
    em = {"zone": "DE", "carbonIntensity": 431, "datetime": now - 900}  # lifecycle (default)
    uk = {"data": [{"from": now - 600, "intensity": {"forecast": 150, "actual": 144}}]}
    with CarbonPublisher(mosquitto.url) as pub:
        pub.publish_raw(carbon_topic("DE-LU"), json.dumps(em).encode())
        pub.publish_raw(carbon_topic("GB"), json.dumps(uk).encode())
    cfg = tmp_path / "run.toml"
    cfg.write_text('carbon_wait_s = 1\n[carbon_zone_map]\nDE = "DE-LU"\n')
    log = tmp_path / "a.jsonl"
    assert _run(tiny_bundle, log, "--broker", mosquitto.url, "--config", str(cfg)) == 0
    rec = _records(log)[-1]
    assert rec["carbon_refused"] == {"signal_kind": 1}  # lifecycle; the bundle is direct
    assert rec["seen"]["server_gco2_per_kwh"] == 144.0  # UK: average, direct
    cfg.write_text(
        'carbon_signals = ["average/direct", "average/lifecycle"]\n'
        '[carbon_zone_map]\nDE = "DE-LU"\n'
    )
    log = tmp_path / "b.jsonl"
    assert _run(tiny_bundle, log, "--broker", mosquitto.url, "--config", str(cfg)) == 0
    rec = _records(log)[0]
    assert rec["carbon_refused"] == {} and rec["seen"]["device_gco2_per_kwh"] == 431.0


def test_fake_power_is_flagged_in_the_records(tiny_bundle, tmp_path):
    log = tmp_path / "run.jsonl"
    assert _run(tiny_bundle, log, "--power", "fake") == 0
    assert all("fake_power" in r["energy_flags"] for r in _records(log))


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carboncp.runtime.cli", *argv],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('tls_ca = "/nonexistent/ca.pem"\nbroker = "mqtts://127.0.0.1:8883"\n', "no such file"),
        ('device_id = "lab/pi#1"\n', "letters, digits, '-', '_' or '.'"),
        ('carbon_signals = ["hourly"]\n', "average/direct"),
    ],
)
def test_run_config_faults_are_one_line(tiny_bundle, tmp_path, toml, needle):
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml)
    proc = _cli("run", "--bundle", str(tiny_bundle), "--config", str(cfg), "--count", "1")
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_publish_carbon_missing_tls_ca_is_one_line():
    proc = _cli("publish-carbon", "--trace", str(DE_TRACE), "--broker", "mqtts://127.0.0.1:8883",
                "--tls-ca", "/nonexistent/ca.pem", "--count", "1")  # fmt: skip
    assert proc.returncode == 2
    assert "tls_ca /nonexistent/ca.pem: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_bundle_declares_its_carbon_signal(tiny_bundle_copy, mosquitto, tmp_path, capsys):
    """A bundle built on lifecycle intensities (manifest "carbon_signal") accepts lifecycle
    payloads and refuses direct ones; an unknown signal in the manifest is one line."""
    from carboncp.runtime.signals.mqtt import CarbonPublisher, carbon_topic

    m = json.loads((tiny_bundle_copy / "manifest.json").read_text())
    m["carbon_signal"] = "average/lifecycle"
    (tiny_bundle_copy / "manifest.json").write_text(json.dumps(m))
    now = time.time()
    with CarbonPublisher(mosquitto.url) as pub:
        em = {"zone": "DE-LU", "carbonIntensity": 480, "datetime": now - 900}  # lifecycle
        pub.publish_raw(carbon_topic("DE-LU"), json.dumps(em).encode())
        pub.publish("GB", 150.0, now)  # this project's format: direct
    log = tmp_path / "run.jsonl"
    cfg = tmp_path / "run.toml"
    cfg.write_text("carbon_wait_s = 1\n")
    assert _run(tiny_bundle_copy, log, "--broker", mosquitto.url, "--config", str(cfg)) == 0
    rec = _records(log)[0]
    assert rec["seen"]["device_gco2_per_kwh"] == 480.0
    assert rec["carbon_refused"] == {"signal_kind": 1}
    m["carbon_signal"] = "hourly"
    (tiny_bundle_copy / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert _run(tiny_bundle_copy, log, "--broker", mosquitto.url) == 2
    assert "carbon_signal 'hourly' is not one of" in capsys.readouterr().err
