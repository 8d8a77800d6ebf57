"""`carboncp run` on arm64 against the amd64 host: an amd64 `carboncp serve` and a Mosquitto
(started by tools/arm64/host.py; the chroot shares the host's loopback). With a dirty device
grid and a clean server grid published over MQTT, the hand table's set is {0, 1, 2}, so the
device offloads, and every record shows the carbon it received."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from carboncp.runtime.signals.mqtt import CarbonPublisher

DEV, SRV = "PL", "FR"
COUNT = 6


def test_carboncp_run_offloads_to_the_amd64_server(share, record, tmp_path) -> None:
    services = json.loads((share / "services.json").read_text())
    with CarbonPublisher(services["broker"]) as pub:
        now = time.time()
        pub.publish(DEV, 900.0, now)
        pub.publish(SRV, 20.0, now)
    log = tmp_path / "run.jsonl"
    cmd = [
        sys.executable, "-m", "carboncp.runtime.cli", "run",
        "--bundle", str(share / "table-bundle"), "--broker", services["broker"],
        "--server", services["server"], "--device-zone", DEV, "--server-zone", SRV,
        "--count", str(COUNT), "--interval-s", "0.1", "--device-load", "0",
        "--log", str(log), "--quiet",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert len(recs) == COUNT
    for r in recs:
        assert r["carbon_state"] == {DEV: "live", SRV: "live"}, r
        assert r["seen"]["device_gco2_per_kwh"] == 900.0
        assert r["seen"]["server_gco2_per_kwh"] == 20.0
        assert r["candidates"] == [0, 1, 2] and r["decision_flags"] == []
    offloaded = [r for r in recs if r["offloaded"] and r["fallbacks"] == []]
    assert offloaded, [(r["partition"], r["fallbacks"]) for r in recs]
    record(
        "run",
        {"inferences": len(recs), "offloads": len(offloaded),
         "partitions": [r["partition"] for r in recs]},
    )  # fmt: skip
