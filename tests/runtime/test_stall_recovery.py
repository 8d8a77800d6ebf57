"""A device run with real processes recovers from a 5-second server stall (issue 9).

`carboncp run` (a subprocess: the product's own path, settings, wiring and loop) offloads to a
real `carboncp serve` on loopback over a link shaped to a shipped trace (norway_bus_1 x 50, a
WiFi-like uplink). The device decides with the cost model's argmin, so offloading is a
decision that depends on the link estimate, not a fixed policy. The test stops the server
process (SIGSTOP: connections are still accepted by the kernel, uploads go through, answers
never come) for 5 s, then continues it (SIGCONT). During the stall the uploads time out at
their deadline, the estimate falls and the decision goes local; once the server answers
again, the probe (due 10 s after the last measurement) measures the link and offloading
resumes: within 10 s of SIGCONT, read from the device's own records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from carboncp.runtime.artifacts.bundle import Bundle

from tests.support.edge_server import ServerProcess, add_profile_sections

pytestmark = pytest.mark.slow
STALL_S = 5.0
RECOVERY_LIMIT_S = 10.0


def _with_profile(bundle_dir: Path) -> Path:
    """The tiny bundle with a device profile and an objective (what argmin decides from)."""
    return add_profile_sections(bundle_dir)


def _records(log: Path) -> list[dict]:
    if not log.exists():
        return []
    lines = log.read_text(encoding="utf-8").splitlines()
    return [json.loads(s) for s in lines if s.endswith("}")]  # the last may be half-written


def _wait_for(log: Path, pred, timeout_s: float, device: subprocess.Popen) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        recs = _records(log)
        if pred(recs):
            return recs
        if device.poll() is not None:
            raise AssertionError(f"carboncp run exited {device.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s; {len(_records(log))} records")


def test_offloading_resumes_within_10_s_of_a_5_s_server_stall(tiny_bundle_copy, tmp_path):
    bundle = _with_profile(tiny_bundle_copy)
    last = Bundle.load(bundle).last
    log = tmp_path / "run.jsonl"
    server = ServerProcess(bundle).start()
    device = None
    try:
        cmd = [
            sys.executable, "-m", "carboncp.runtime.cli", "run", "--bundle", str(bundle),
            "--server", server.url, "--policy", "argmin", "--deadline-ms", "300",
            "--shape-trace", "norway_bus_1", "--shape-scale", "50", "--device-load", "0",
            "--count", "100000", "--interval-s", "0.05", "--log", str(log), "--quiet",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        device = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        # warm: the device offloads on the fast link
        _wait_for(log, lambda rs: sum(r["offloaded"] for r in rs) >= 20, 120.0, device)
        t_stop = time.time()
        os.kill(server.pid, signal.SIGSTOP)
        try:
            time.sleep(STALL_S)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        t_cont = time.time()

        def resumed(rs: list[dict]) -> bool:
            back = [r for r in rs if r["offloaded"] and r["time_unix"] >= t_cont]
            return len(back) >= 5

        recs = _wait_for(log, resumed, 3 * RECOVERY_LIMIT_S, device)
    finally:
        if device is not None:
            device.terminate()
            device.wait(10)
        server.stop()

    stall = [r for r in recs if t_stop <= r["time_unix"] < t_cont]
    assert any("timeout" in r["fallbacks"] for r in stall), "the stall was not felt"
    # the estimate fell and the decision went local: what recovers here is a decision
    assert any(r["partition"] == last and not r["fallbacks"] for r in stall)
    first_back = next(r for r in recs if r["offloaded"] and r["time_unix"] >= t_cont)
    recovery_s = first_back["time_unix"] + first_back["latency_ms"] / 1000.0 - t_cont
    print(f"offloading resumed {recovery_s:.2f} s after the server answered again")
    assert recovery_s <= RECOVERY_LIMIT_S
    # a probe measured the link before the first offload after the stall, and its cost is
    # in the records and in the modelled energy
    probes = [r for r in recs if r["probe"] is not None and r["time_unix"] >= t_stop]
    ok = [r for r in probes if r["probe"]["error"] is None]
    assert ok and ok[0]["time_unix"] <= first_back["time_unix"]
    for r in probes:
        assert r["probe"]["ms"] > 0 and r["probe"]["energy_j"] > 0
        assert r["model"]["probe_energy_j"] == r["probe"]["energy_j"]
    assert ok[0]["probe"]["bytes"] > 32 * 1024 and ok[0]["probe"]["bandwidth_mbps"] > 1.0
    # the device went on offloading after it came back
    after = [r for r in recs if r["time_unix"] >= first_back["time_unix"]]
    assert sum(r["offloaded"] for r in after) >= 5
