"""End to end with real processes: Mosquitto, `carboncp serve` in a subprocess, the exported
tiny bundle, carbon published over MQTT.

A dirty device grid with a clean server grid moves decisions towards offloading; the reverse
towards local execution; every result equals the full model's output. The decisions come
from the cost model's argmin on the live context (the tiny bundle has no table trained for
such extremes); a second test runs the real TablePolicy (a table built by the tooling for
the tiny bundle) through the same loop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.artifacts.runners import make_runner
from carboncp.runtime.decision.baselines import ArgminPolicy
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.device.loop import DeviceLoop, LoopConfig
from carboncp.runtime.link.offload import OffloadClient
from carboncp.runtime.signals.load import LoadSampler
from carboncp.runtime.signals.mqtt import CarbonPublisher, CarbonSubscriber

from tests.support.edge_server import ServerProcess, add_profile_sections, synthetic_profile
from tests.support.mosquitto import start_mosquitto
from tests.support.requires import require

DEV, SRV = "DE-LU", "GB"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_bundle):
    srv = ServerProcess(tiny_bundle).start()
    yield srv
    srv.stop()


@pytest.fixture
def subscriber(broker):
    sub = CarbonSubscriber(broker.url, [DEV, SRV], device_id="e2e", ttl_s=3600).start()
    sub.wait_connected(10)
    yield sub
    sub.stop()


def _publish(broker, sub, dev: float, srv: float) -> None:
    now = time.time()
    with CarbonPublisher(broker.url) as pub:
        pub.publish(DEV, dev, now)
        pub.publish(SRV, srv, now)
    for zone, v in ((DEV, dev), (SRV, srv)):
        assert sub.wait_for(zone, lambda r, v=v: r.gco2_per_kwh == v, timeout=5), zone


def _run(loop, head, bundle, n, seed):
    rng = np.random.default_rng(seed)
    recs = []
    for _ in range(n):
        x = rng.integers(0, 256, bundle.input_shape, dtype=np.uint8)
        rec = loop.infer(x)
        assert (
            np.abs(rec.output - head.run(bundle.last, x)).max() <= 1e-5
        )  # the full model's answer
        recs.append(rec)
    return recs


def test_carbon_over_mqtt_moves_decisions(tiny_bundle, broker, server, subscriber):
    bundle = Bundle.load(tiny_bundle)
    head = make_runner(bundle, backend="litert")
    cm = CostModel(synthetic_profile(bundle), Objective())
    loop = DeviceLoop(
        bundle, ArgminPolicy(cm), head, client=OffloadClient(server.url, bundle),
        carbon=subscriber, config=LoopConfig(device_zone=DEV, server_zone=SRV, deadline_ms=2000),
        cost_model=cm, load=LoadSampler(0.0),
    )  # fmt: skip
    _publish(broker, subscriber, dev=900.0, srv=20.0)
    dirty_device = _run(loop, head, bundle, 6, seed=0)
    _publish(broker, subscriber, dev=20.0, srv=900.0)
    dirty_server = _run(loop, head, bundle, 6, seed=1)
    _publish(broker, subscriber, dev=900.0, srv=20.0)
    back = _run(loop, head, bundle, 4, seed=2)

    def offload_share(recs):
        return sum(r.partition < bundle.last for r in recs) / len(recs)

    assert all(r.carbon_state == {DEV: "live", SRV: "live"} for r in dirty_device + dirty_server)
    assert offload_share(dirty_device) == 1.0 and all(r.offloaded for r in dirty_device)
    assert offload_share(dirty_server) == 0.0
    assert offload_share(back) == 1.0
    # the records carry the carbon the decision saw, and a lower estimate where it offloaded
    assert {r.seen["device_gco2_per_kwh"] for r in dirty_device} == {900.0}
    assert server.alive()
    head.close()


def _with_table(bundle_dir: Path, tmp_path: Path) -> Path:
    """Give the tiny bundle a profile/objective and a real threshold table (tooling build)."""
    require("carboncp.tooling.build", "the table is built by the tooling (tooling extra)")
    from carboncp.runtime.signals.traces import load_bandwidth_trace, shipped_bandwidth_path
    from carboncp.tooling.build import train_and_compile

    add_profile_sections(bundle_dir)
    tr = load_bandwidth_trace(shipped_bandwidth_path("norway_bus_1"))
    fast = tmp_path / "norway_bus_1_x15"
    fast.write_text("".join(f"{t} {v * 15}\n" for t, v in zip(tr.t_s, tr.mbps, strict=True)))
    train_and_compile(bundle_dir, None, None, fast, days=7, max_epochs=3, progress=False)
    return bundle_dir


def test_table_policy_in_the_loop(tiny_bundle_copy, tmp_path, broker, server, subscriber):
    from carboncp.runtime.decision.policy import TablePolicy
    from carboncp.runtime.device.wiring import optional_cost_model as cost_model_of

    bundle = Bundle.load(_with_table(tiny_bundle_copy, tmp_path))
    policy = TablePolicy.from_bundle(bundle, mode="A")
    head = make_runner(bundle, backend="litert")
    loop = DeviceLoop(
        bundle, policy, head, client=OffloadClient(server.url, bundle), carbon=subscriber,
        config=LoopConfig(device_zone=DEV, server_zone=SRV, deadline_ms=2000),
        cost_model=cost_model_of(bundle), load=LoadSampler(0.0),
    )  # fmt: skip
    _publish(broker, subscriber, dev=450.0, srv=150.0)
    recs = _run(loop, head, bundle, 8, seed=3)
    assert all(r.mode == "A" and r.cell is not None for r in recs)
    assert policy.n_observed == len(recs)  # the realised contexts went back (ACI)
    # A twin policy fed the same seen and realised contexts makes the same decisions: the
    # loop ran the table's decision unchanged and fed back what really happened.
    from carboncp.runtime.decision.context import Context

    twin = TablePolicy.from_bundle(bundle, mode="A")
    for r in recs:
        seen, realised = Context(**r.seen), Context(**r.realised)
        d = twin.decide(seen)
        assert (d.partition, list(d.candidates), d.cell) == (
            r.partition,
            list(r.candidates),
            r.cell,
        )
        assert r.offloaded == (r.partition < bundle.last) and not r.fallbacks
        twin.observe(d, seen, realised)
    assert twin.aci.alpha_t == policy.aci.alpha_t
    assert any(r.offloaded for r in recs)  # this table offloads on a fast link with DE-LU > GB
    head.close()


def test_carboncp_run_settings_with_broker_server_and_shaping(
    tiny_bundle, broker, server, tmp_path
):
    """`carboncp run`'s assembly: MQTT carbon, the server, a shaped link (a shipped trace)."""
    from carboncp.runtime.device.settings import load_settings
    from carboncp.runtime.device.wiring import open_device

    with CarbonPublisher(broker.url) as pub:
        now = time.time()
        pub.publish("FR", 55.0, now)
        pub.publish("PL", 700.0, now)
    log = tmp_path / "run.jsonl"
    s = load_settings(None, {
        "bundle": str(tiny_bundle), "broker": broker.url, "server": server.url,
        "device_zone": "PL", "server_zone": "FR", "policy": "server", "count": 4,
        "shape_trace": "norway_bus_1", "shape_scale": 15.0, "log": str(log), "float16": True,
    })  # fmt: skip
    with open_device(s) as device:
        loop, inputs = device.loop, device.inputs
        loop.carbon.wait_connected(10)
        assert loop.carbon.wait_for("PL", lambda r: r.gco2_per_kwh == 700.0, timeout=5)
        recs = list(loop.run(inputs))
    assert len(recs) == 4 and all(r.offloaded for r in recs)
    assert all(r.seen["device_gco2_per_kwh"] == 700.0 for r in recs)
    assert all(r.true_bandwidth_mbps is not None and r.true_bandwidth_mbps > 0 for r in recs)
    assert len(log.read_text().splitlines()) == 4


def test_carboncp_run_broker_auth_refused_and_broker_down(tiny_bundle, tmp_path, capsys):
    from carboncp.runtime.cli import main

    from tests.support.edge_server import free_port
    from tests.support.mosquitto import write_auth

    acl = "user device\ntopic read carboncp/carbon/#\ntopic readwrite carboncp/device/#\n"
    auth = start_mosquitto(write_auth(tmp_path / "auth", {"device": "s3cret"}, acl))
    try:
        common = [
            "run",
            "--bundle",
            str(tiny_bundle),
            "--policy",
            "local",
            "--count",
            "2",
            "--quiet",
        ]
        cfg = tmp_path / "run.toml"
        cfg.write_text(
            'broker_username = "device"\nbroker_password = "wrong"\ndevice_id = "device"\n'
        )
        assert main([*common, "--config", str(cfg), "--broker", auth.url]) == 2
        assert "not authorised" in capsys.readouterr().err
        cfg.write_text(
            'broker_username = "device"\nbroker_password = "s3cret"\ndevice_id = "device"\n'
        )
        assert main([*common, "--config", str(cfg), "--broker", auth.url]) == 0
    finally:
        auth.cleanup()
    # no broker at all: a warning, the fallback intensity, and every input still answered
    log = tmp_path / "down.jsonl"
    rc = main([*common, "--broker", f"mqtt://127.0.0.1:{free_port()}", "--log", str(log)])
    assert rc == 0 and "warning" in capsys.readouterr().err
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(recs) == 2
    assert all(r["seen"]["device_gco2_per_kwh"] == 400.0 for r in recs)  # the documented fallback
    assert all(r["carbon_state"]["DE-LU"] == "fallback" for r in recs)
