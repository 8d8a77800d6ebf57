"""Stepping through the replay window: the broker, the edge server and the three devices
(built by `open_device`), the carbon of each step's hour published over MQTT, the same input
run by every device at the same moment of both traces, and the progress lines."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from carboncp.runtime.errors import CarbonCPError
from carboncp.tooling.demo.attribution import AttributedPolicy, VirtualClock
from carboncp.tooling.demo.config import HOUR_S, DemoConfig, say
from carboncp.tooling.demo.scenario import DemoPlan
from carboncp.tooling.demo.server_process import EdgeServerProcess

if TYPE_CHECKING:
    from carboncp.runtime.device.settings import RunSettings

TABLE_MODES = ("A", "M", "R")


@dataclass
class SessionResult:
    """What a run produced: one row per step (each policy's InferenceRecord under its name,
    the true link rate, mode A's threshold, the causes of changes), the probes' costs per
    policy, and the broker that carried the carbon."""

    steps: list[dict[str, Any]]
    probes: dict[str, dict[str, float]]
    broker_kind: str


@dataclass
class _Shared:
    """The parts every device shares, and the clock and publisher the demo drives."""

    clock: VirtualClock
    subscriber: Any  # CarbonSubscriber, judging staleness against `clock`
    publisher: Any  # CarbonPublisher
    shaper: Any  # LinkShaper paced to the scaled trace
    head: Any  # the LiteRT head runner


def device_settings(
    cfg: DemoConfig, name: str, plan: DemoPlan, server_url: str, log: Path
) -> RunSettings:
    """RunSettings of the device running policy `name`: a table mode (A, M, R), 'local' or
    'server'; offloading to the demo's edge server, device load fixed at 0, its own log."""
    from carboncp.runtime.device.settings import load_settings

    if name not in (*TABLE_MODES, "local", "server"):
        raise CarbonCPError(f"unknown demo policy {name!r}")
    table = name in TABLE_MODES
    return load_settings(
        None,
        {
            "bundle": str(plan.bundle_path),
            "server": server_url,
            "policy": "table" if table else name,
            "mode": name if table else None,
            "seed": cfg.seed,
            "float16": _float16(plan.bundle),
            "device_load": 0.0,
            "device_zone": cfg.device_zone,
            "server_zone": cfg.server_zone,
            "log": str(log),
            "probe_after_s": None,  # set per step: see run_step
        },
    )


def open_devices(
    stack: contextlib.ExitStack, cfg: DemoConfig, plan: DemoPlan, server_url: str,
    shared: _Shared, out: Path,
) -> dict[str, Any]:  # fmt: skip
    """One DeviceLoop per policy, built by open_device around the shared parts, each with its
    own link estimator and records-{name}.jsonl (written afresh)."""
    from carboncp.runtime.device.wiring import open_device
    from carboncp.runtime.signals.bandwidth import BandwidthEstimator

    loops: dict[str, Any] = {}
    for name in cfg.policies:
        log = out / f"records-{name}.jsonl"
        settings = device_settings(cfg, name, plan, server_url, log)
        log.write_text("", encoding="utf-8")  # the device appends: one run's records per file
        device = stack.enter_context(
            open_device(
                settings,
                carbon=shared.subscriber,
                head=shared.head,
                shaper=shared.shaper,
                estimator=BandwidthEstimator(
                    initial_mbps=20.0, initial_rtt_ms=5.0, clock=_emulated_clock(shared.clock)
                ),
                wrap_policy=AttributedPolicy if name in TABLE_MODES else None,
            )
        )
        loops[name] = device.loop
    return loops


def run_session(cfg: DemoConfig, plan: DemoPlan, out: Path) -> SessionResult:
    """Start the broker and the edge server, build the devices, run every step; everything
    started here is stopped on the way out."""
    from carboncp.runtime.artifacts.runners import make_runner
    from carboncp.runtime.link.shaping import LinkShaper
    from carboncp.runtime.signals.mqtt import CarbonPublisher, CarbonSubscriber
    from carboncp.tooling.broker import start_broker

    with contextlib.ExitStack() as stack:
        broker = start_broker(0)
        stack.callback(broker.cleanup)
        say(f"[demo] MQTT broker: {broker.kind} at {broker.url}", cfg)
        head = make_runner(plan.bundle, backend="litert")
        stack.callback(head.close)
        server = EdgeServerProcess(plan.bundle_path, out / "server.log")
        stack.callback(server.stop)
        say("[demo] starting the edge server (carboncp serve) ...", cfg)
        server.start()
        say(f"[demo] edge server ready at {server.url}", cfg)
        clock = VirtualClock(plan.scenario.t0_s)
        sub = CarbonSubscriber(
            broker.url, [cfg.device_zone, cfg.server_zone], device_id="demo-rpi4",
            ttl_s=2 * HOUR_S, now_fn=clock, allow_replay=True,
        ).start()  # fmt: skip
        stack.callback(sub.stop)
        sub.wait_connected(15)
        pub = CarbonPublisher(broker.url).start()
        stack.callback(pub.stop)
        shaper = LinkShaper(plan.bandwidth, scale=plan.scale)
        shared = _Shared(clock, sub, pub, shaper, head)
        loops = open_devices(stack, cfg, plan, server.url, shared, out)
        steps = run_steps(cfg, plan, shared, loops)
        probes = {name: _probe_costs(loop) for name, loop in loops.items()}
        return SessionResult(steps, probes, broker.kind)


def run_steps(
    cfg: DemoConfig, plan: DemoPlan, shared: _Shared, loops: dict[str, Any]
) -> list[dict[str, Any]]:
    """Step through the window: publish each new hour's carbon, run the step's input on every
    device, print progress."""
    rng = np.random.default_rng(cfg.seed)
    t0 = plan.scenario.t0_s
    dt_carbon = cfg.hours * HOUR_S / cfg.steps
    published_hour = None
    steps: list[dict[str, Any]] = []
    for k in range(cfg.steps):
        shared.clock.t_s = t0 + k * dt_carbon
        hour = int(shared.clock.t_s // HOUR_S) * HOUR_S
        if hour != published_hour:
            publish_hour(cfg, plan, shared, hour)
            published_hour = hour
        x = rng.integers(0, 256, plan.bundle.input_shape, dtype=np.uint8)
        steps.append(run_step(k, x, cfg, plan, shared, loops, steps))
        _progress(k, steps, cfg, shared.clock.t_s)
    return steps


def publish_hour(cfg: DemoConfig, plan: DemoPlan, shared: _Shared, hour: int) -> None:
    """Publish (retained) both zones' carbon for `hour` and wait until the device's subscriber
    has it."""
    vals = {
        cfg.device_zone: plan.device_carbon.at(hour),
        cfg.server_zone: plan.server_carbon.at(hour),
    }
    for zone, v in vals.items():
        shared.publisher.publish(zone, v, hour, source="electricitymaps-slice", replay=True)
    for zone, v in vals.items():
        if not shared.subscriber.wait_for(zone, lambda r, v=v, h=hour: r.ts_s == h, timeout=5):
            raise CarbonCPError(f"carbon for {zone} did not arrive over MQTT within 5 s")


def run_step(
    k: int, x: np.ndarray, cfg: DemoConfig, plan: DemoPlan, shared: _Shared,
    loops: dict[str, Any], steps: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """Step k's row: input x run by every device at the same moment of the link trace."""
    clock = shared.clock
    dt_bw = cfg.bandwidth_passes * plan.bandwidth.duration_s / cfg.steps
    row: dict[str, Any] = {"step": k, "t_s": clock.t_s, "trace_t_s": k * dt_bw}
    for name, loop in loops.items():
        shared.shaper.seek(k * dt_bw)
        # Steps are hours apart in emulated time but milliseconds apart here, so a
        # wall-clock probe interval would leave the estimate stale for many steps
        # while the device runs locally: a probe is due before deciding whenever its
        # previous inference did not measure the link, and runs where the probe gate finds
        # it worth its cost (counted). The local-only baseline never sends, so never probes.
        prev = steps[-1][name] if steps else None
        stale = name != "local" and (prev is None or not prev.offloaded)
        loop.cfg.probe_after_s = 0.0 if stale else None
        row[name] = loop.infer(x)
    row["true_mbps"] = plan.bandwidth.at(k * dt_bw) * plan.scale
    hour = min(int((clock.t_s - plan.scenario.t0_s) // HOUR_S), cfg.hours - 1)
    row["threshold_mbps"] = float(plan.scenario.thresholds[hour])
    row["causes"] = {
        n: lp.policy.causes[-1]
        for n, lp in loops.items()
        if isinstance(lp.policy, AttributedPolicy)
    }
    row["cause"] = row["causes"].get(cfg.policies[0])
    return row


def _progress(k: int, steps: list[dict[str, Any]], cfg: DemoConfig, t_s: float) -> None:
    """A progress line at a change of the first policy's decision, and once a day (24 steps)."""
    first = cfg.policies[0]
    row = steps[-1]
    a = row[first]
    changed = k > 0 and a.partition != steps[-2][first].partition
    if not cfg.progress or not (changed or k % 24 == 0 or k == cfg.steps - 1):
        return
    why = ""
    if changed:
        why = f" <- {row['cause'] or 'fallback'}"
        b = steps[-2][first]
        why += (
            f" (was p={b.partition}; I_s/I_d {_ratio(b.seen):.1f} -> {_ratio(a.seen):.1f}, "
            f"estimate {b.seen['bandwidth_mbps']:.1f} -> {a.seen['bandwidth_mbps']:.1f} Mbit/s)"
        )
    say(
        f"[demo] step {k + 1}/{cfg.steps}: {time.strftime('%a %H:%M', time.gmtime(t_s))} "
        f"I_d={a.seen['device_gco2_per_kwh']:.0f} I_s={a.seen['server_gco2_per_kwh']:.0f} g/kWh "
        f"(B*={row['threshold_mbps']:.1f}), link {row['true_mbps']:.1f} Mbit/s "
        f"(estimate {a.seen['bandwidth_mbps']:.1f}) -> {first} "
        f"{'CHANGED to' if changed else 'chose'} p={a.partition}"
        f"{' FALLBACK' if a.fallbacks else ''}{why}",
        cfg,
    )


def _probe_costs(loop: Any) -> dict[str, float]:
    pc = loop.estimator.probe_cost
    return {"count": pc.probes, "bytes": pc.bytes, "time_s": pc.time_s, "energy_j": pc.energy_j}


def _ratio(seen: dict[str, float]) -> float:
    return seen["server_gco2_per_kwh"] / max(seen["device_gco2_per_kwh"], 1.0)


def _float16(bundle: Any) -> bool:
    prof = bundle.section("profile") or {}
    return "float16" in (prof.get("wire_dtypes") or [])


def _emulated_clock(clock: VirtualClock) -> Any:
    """The link estimator's clock: emulated trace time plus real time within a step.

    Steps are hours apart in emulated time but milliseconds apart here; on the wall clock the
    estimator's 120 s window would average every earlier step's transfers, so the estimate
    would barely follow the link. Real time is added so probe and transfer durations within a
    step are still measured."""
    return lambda: clock.t_s + time.monotonic()
