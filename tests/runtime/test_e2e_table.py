"""`carboncp run` as shipped, end to end: the DEFAULT policy (the bundle's threshold table, mode
A, ACI) against a real `carboncp serve` subprocess and a real Mosquitto, and the settings that
reach the table (mode, alpha, online = weighted).

The bundle is the exported tiny model with a hand-made table (tests/support/hand_table.py) whose
every set is known in advance, so each assertion names the exact partition, set and cell.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from carboncp.runtime.cli import main
from carboncp.runtime.signals.mqtt import CarbonPublisher

from tests.support.edge_server import ServerProcess
from tests.support.hand_table import add_hand_table, cell_of

DEV, SRV = "PL", "FR"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    import shutil

    dst = tmp_path_factory.mktemp("hand") / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return add_hand_table(dst)


@pytest.fixture(scope="module")
def server(bundle):
    srv = ServerProcess(bundle).start()
    yield srv
    srv.stop()


def _publish(broker, dev: float, srv: float) -> None:
    with CarbonPublisher(broker.url) as pub:
        now = time.time()
        pub.publish(DEV, dev, now)
        pub.publish(SRV, srv, now)


def _records(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_carboncp_run_default_table_policy_follows_carbon_published_over_mqtt(
    bundle, server, broker, tmp_path
):
    """The real CLI in a subprocess, no policy/mode/online given: a carbon change published
    while it runs moves the partition from offloading to local, and each record says why
    (the carbon it saw, its cell, its set)."""
    _publish(broker, dev=900.0, srv=20.0)  # dirty device grid, clean server grid
    log = tmp_path / "run.jsonl"
    cmd = [
        sys.executable, "-m", "carboncp.runtime.cli", "run", "--bundle", str(bundle),
        "--broker", broker.url, "--server", server.url, "--device-zone", DEV,
        "--server-zone", SRV, "--count", "40", "--interval-s", "0.1", "--device-load", "0",
        "--log", str(log), "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_records(log)) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_records(log)) >= 10, proc.stderr.read() if proc.poll() is not None else ""
        _publish(broker, dev=20.0, srv=900.0)  # the grids swap
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    recs = _records(log)
    assert len(recs) == 40 and "40 inferences" in out
    dirty_dev = [r for r in recs if r["seen"]["device_gco2_per_kwh"] == 900.0]
    dirty_srv = [r for r in recs if r["seen"]["device_gco2_per_kwh"] == 20.0]
    assert len(dirty_dev) >= 10 and len(dirty_srv) >= 10, [r["seen"] for r in recs]
    assert len(dirty_dev) + len(dirty_srv) == 40
    # the switch happened once, in order: every record after the first clean-device one is one
    first = recs.index(dirty_srv[0])
    assert recs[first:] == dirty_srv
    for r in recs:
        assert r["mode"] == "A" and r["carbon_state"] == {DEV: "live", SRV: "live"}
        assert r["decision_flags"] == [] and r["fallbacks"] == []
    for r in dirty_dev:  # cell 2: the set {0, 1, 2}; mode A offloads at one of them
        assert r["seen"]["server_gco2_per_kwh"] == 20.0
        assert r["cell"] == cell_of(900.0, 20.0) == 2
        assert r["candidates"] == [0, 1, 2]
        assert r["partition"] in (0, 1, 2) and r["offloaded"] is True
    for r in dirty_srv:  # cell 1: the set {3}: local
        assert r["seen"]["server_gco2_per_kwh"] == 900.0
        assert r["cell"] == cell_of(20.0, 900.0) == 1
        assert r["candidates"] == [3] and r["partition"] == 3 and r["offloaded"] is False
    assert server.alive()


def _run_cli(bundle: Path, log: Path, *extra: str, count: int = 6) -> list[dict]:
    """`carboncp run` in process, without a broker: both zones at the fixed fallback carbon
    (100 g/kWh: cell 0, the NEUTRAL scores 0, 0.1, 0.3, 0.45)."""
    args = [
        "run", "--bundle", str(bundle), "--count", str(count), "--device-load", "0",
        "--log", str(log), "--quiet", *extra,
    ]  # fmt: skip
    cfg = log.with_suffix(".toml")
    cfg.write_text("carbon_fallback_gco2_per_kwh = 100\n")
    assert main([*args, "--config", str(cfg)]) == 0
    recs = _records(log)
    assert len(recs) == count and all(r["cell"] == cell_of(100.0, 100.0) == 0 for r in recs)
    return recs


def test_carboncp_run_mode_alpha_and_online_flags_reach_the_table(bundle, tmp_path):
    """--mode, --alpha and --online change what the device does; the defaults are mode A, the
    table's α (0.1: q̂ ≈ 0.56, the whole set) and ACI."""
    default = _run_cli(bundle, tmp_path / "default.jsonl")
    assert all(r["mode"] == "A" and r["candidates"] == [0, 1, 2, 3] for r in default)
    # α = 0.7 recomputes q̂ from the stored calibration scores: ≈ 0.08 < 0.1, the set {0}
    split = _run_cli(bundle, tmp_path / "a.jsonl", "--alpha", "0.7", "--online", "split")
    assert all(r["candidates"] == [0] and r["partition"] == 0 for r in split)
    # α = 0.45 (q̂ ≈ 0.41: {0, 1, 2}) in mode M: the lowest score of the set, partition 0
    m = _run_cli(bundle, tmp_path / "m.jsonl", "--alpha", "0.45", "--mode", "M")
    assert all(r["mode"] == "M" and r["candidates"] == [0, 1, 2] for r in m)
    assert all(r["partition"] == 0 for r in m)
    # the same through the TOML file (the command line would override it)
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        'mode = "R"\nalpha = 0.45\nonline = "split"\ncarbon_fallback_gco2_per_kwh = 100\n'
    )
    log = tmp_path / "toml.jsonl"
    assert main(["run", "--bundle", str(bundle), "--config", str(cfg), "--count", "30",
                 "--device-load", "0", "--log", str(log), "--quiet"]) == 0  # fmt: skip
    recs = _records(log)
    assert all(r["mode"] == "R" and r["candidates"] == [0, 1, 2] for r in recs)
    assert {r["partition"] for r in recs} == {0, 1, 2}  # R: uniform over the set


def test_carboncp_run_bad_online_setting_is_refused(bundle, tmp_path, capsys):
    rc = main(["run", "--bundle", str(bundle), "--online", "psychic", "--count", "1"])
    assert rc == 2 and "online" in capsys.readouterr().err


def test_carboncp_run_weighted_cp_on_the_device(bundle, server, tmp_path):
    """online = weighted through `carboncp run` and the real offload path: while the window
    fills the device uses ACI (the whole set); after the first refit (100 decisions) weighted
    CP sees that the device only meets clean-device contexts, reweights the calibration
    scores towards them and the set shrinks to {0, 1}. With ACI it would stay whole."""
    n = 130
    weighted = _run_cli(bundle, tmp_path / "w.jsonl", "--online", "weighted", "--server",
                        server.url, "--mode", "M", count=n)  # fmt: skip
    before, after = weighted[:100], weighted[101:]
    assert all(r["candidates"] == [0, 1, 2, 3] for r in before)
    assert all(r["candidates"] == [0, 1] for r in after), [r["candidates"] for r in after]
    assert all(r["partition"] == 0 and r["offloaded"] for r in weighted)  # mode M: score 0
    aci = _run_cli(bundle, tmp_path / "aci.jsonl", "--server", server.url, "--mode", "M", count=n)
    assert all(r["candidates"] == [0, 1, 2, 3] for r in aci)
