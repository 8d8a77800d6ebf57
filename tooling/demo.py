"""`carboncp demo`: the whole system on one machine, emulating a Raspberry Pi 4 on a WiFi-like link.

1. Build (or reuse) the ResNet-18 bundle for the `rpi4` device profile, its table trained on
   the same scaled bandwidth trace the demo replays.
2. Start an MQTT broker (Mosquitto if installed, else amqtt in-process) and the edge server
   (`carboncp serve`) as a subprocess.
3. Step through a window of the shipped hourly carbon slices of the device's zone (DE-LU) and
   the server's zone (GB) at accelerated time: each hour's values are published, retained,
   through the broker and reach the device loop's CarbonSubscriber, which judges their age
   against the replay clock. The window is centred on the hour where the device's grid is
   cleanest relative to the server's, so the ranking of the two grids flips inside it.
   The 155 s bandwidth trace is walked `bandwidth_passes` times (3) over the window (it loops,
   as the trace loader defines), so that link dips meet different carbon conditions.
4. At every step, the same input is run by each policy (CarbonCP mode A with the bundle's
   table; local-only; server-only) through the real runtime: LiteRT heads, the offload
   client, the server's ExecuTorch tails, with the offload link paced to a real bandwidth
   trace (norway_bus_1, a 3G bus ride, x15 by default: a WiFi-like link with real
   variability, 5.6 to 72 Mbit/s). Every policy sees the same moment of both traces.
5. Costs are the rpi4 profile's (this CPU is not a Pi): latency, device energy, carbon and
   battery of each inference on its realised context and actual outcome (fallbacks included).
   Prints a summary table, writes records (JSON lines), summary.json and demo.png.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.errors import CarbonCPError

HOUR_S = 3600
READY_RE = re.compile(r"ready on (http://\S+)")


@dataclass
class DemoConfig:
    out_dir: Path = Path("demo-out")
    bundle: Path = Path("models/demo-resnet18-rpi4")
    model: str = "resnet18"
    device_profile: str = "rpi4"
    device_zone: str = "DE-LU"
    server_zone: str = "GB"
    bandwidth: str = "norway_bus_1"
    scale: float = 15.0
    steps: int = 144
    bandwidth_passes: int = 3  # times the (looped) bandwidth trace is walked over the window
    hours: int = 48
    policies: tuple[str, ...] = ("A", "local", "server")
    seed: int = 0
    rebuild: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def say(msg: str, cfg: DemoConfig) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


# -- bundle ----------------------------------------------------------------------------------


def scaled_trace_file(cfg: DemoConfig, folder: Path) -> Path:
    """The shipped bandwidth trace with every rate x scale, in the trace's own text format."""
    from carboncp.runtime.traces import load_bandwidth_trace, shipped_bandwidth_path

    tr = load_bandwidth_trace(shipped_bandwidth_path(cfg.bandwidth))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.bandwidth}_x{cfg.scale:g}"
    text = f"# {cfg.bandwidth} (shipped with carboncp) with every rate x {cfg.scale:g}\n"
    text += "".join(f"{t:.6f} {v * cfg.scale:.6f}\n" for t, v in zip(tr.t_s, tr.mbps, strict=True))
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def ensure_bundle(cfg: DemoConfig) -> Path:
    """Reuse the demo bundle when it was built for these settings, else build it."""
    from carboncp.runtime.bundle import Bundle

    marker = cfg.bundle / "demo-build.json"
    want = {
        "model": cfg.model,
        "device_profile": cfg.device_profile,
        "bandwidth": cfg.bandwidth,
        "scale": cfg.scale,
        "device_zone": cfg.device_zone,
        "server_zone": cfg.server_zone,
    }
    if not cfg.rebuild and marker.is_file():
        try:
            b = Bundle.load(cfg.bundle)
            if json.loads(marker.read_text()) == want and b.section("table") is not None:
                say(f"[demo] reusing the bundle at {cfg.bundle} (built for these settings)", cfg)
                return cfg.bundle
        except (CarbonCPError, ValueError, OSError):
            pass
    from carboncp.runtime.traces import shipped_carbon_path
    from carboncp.tooling.build import build_bundle

    say(
        f"[demo] building the {cfg.model} bundle for the {cfg.device_profile} profile at "
        f"{cfg.bundle} (first run only: export, profile, train, calibrate; a few minutes)",
        cfg,
    )
    trace = scaled_trace_file(cfg, cfg.bundle.parent / ".demo-traces")
    build_bundle(
        model=cfg.model,
        out=cfg.bundle,
        device_profile=cfg.device_profile,
        device_carbon=shipped_carbon_path(cfg.device_zone),
        server_carbon=shipped_carbon_path(cfg.server_zone),
        bandwidth=trace,
        progress=cfg.progress,
        **cfg.extra,
    )
    marker.write_text(json.dumps(want, indent=2) + "\n")
    return cfg.bundle


# -- processes -------------------------------------------------------------------------------


class EdgeServerProcess:
    """`python -m carboncp.runtime.cli serve BUNDLE --port 0` as a child process."""

    def __init__(self, bundle: Path, log_path: Path):
        self.bundle = bundle
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout_s: float = 180.0) -> EdgeServerProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "carboncp.runtime.cli", "serve", str(self.bundle),
               "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
        self._log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env
        )
        found: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                m = READY_RE.search(line)
                if m and not found:
                    found.append(m.group(1))

        t = threading.Thread(target=read, daemon=True)
        t.start()
        deadline = time.monotonic() + timeout_s
        while not found and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CarbonCPError(
                    f"the edge server exited ({self.proc.returncode}); see {self.log_path}"
                )
            time.sleep(0.1)
        if not found:
            self.stop()
            raise CarbonCPError(
                f"the edge server was not ready within {timeout_s:.0f} s; see {self.log_path}"
            )
        self.url = found[0]
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


# -- the replay ------------------------------------------------------------------------------


def choose_window(dev: Any, srv: Any, hours: int) -> int:
    """Start (epoch s) of the `hours` window centred on the hour where the device's grid is
    cleanest relative to the server's: inside it, which grid is cleaner changes."""
    n = min(len(dev), len(srv))
    ratio = dev.gco2_per_kwh[:n] / np.maximum(srv.gco2_per_kwh[:n], 1.0)
    i = int(np.argmin(ratio))
    i0 = min(max(0, i - hours // 2), n - hours)
    return int(dev.t_s[i0])


class VirtualClock:
    """Trace time the demo sets step by step (the subscriber judges staleness against it)."""

    def __init__(self, t_s: float):
        self.t_s = float(t_s)

    def __call__(self) -> float:
        return self.t_s


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from carboncp.runtime.bandwidth import BandwidthEstimator
    from carboncp.runtime.broker import start_broker
    from carboncp.runtime.bundle import Bundle
    from carboncp.runtime.commands.run import cost_model_of
    from carboncp.runtime.loop import DeviceLoop, LoadSampler, LoopConfig
    from carboncp.runtime.mqtt import CarbonPublisher, CarbonSubscriber
    from carboncp.runtime.offload import OffloadClient
    from carboncp.runtime.policy import TablePolicy
    from carboncp.runtime.policy_fixed import FixedPolicy
    from carboncp.runtime.runners import make_runner
    from carboncp.runtime.shaping import LinkShaper
    from carboncp.runtime.traces import (
        load_bandwidth_trace,
        load_carbon_csv,
        shipped_bandwidth_path,
        shipped_carbon_path,
    )

    t_begin = time.monotonic()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle_path = ensure_bundle(cfg)
    bundle = Bundle.load(bundle_path)
    cm = cost_model_of(bundle)
    if cm is None:
        raise CarbonCPError(f"{bundle_path}: no profile section; rebuild with --rebuild")
    P = bundle.last
    dev_tr = load_carbon_csv(shipped_carbon_path(cfg.device_zone))
    srv_tr = load_carbon_csv(shipped_carbon_path(cfg.server_zone))
    bw_tr = load_bandwidth_trace(shipped_bandwidth_path(cfg.bandwidth))
    t0 = choose_window(dev_tr, srv_tr, cfg.hours)
    dt_carbon = cfg.hours * HOUR_S / cfg.steps
    dt_bw = cfg.bandwidth_passes * bw_tr.duration_s / cfg.steps
    say(
        f"[demo] emulating a Raspberry Pi 4 (rpi4 profile costs) on a WiFi-like link: "
        f"{cfg.bandwidth} x {cfg.scale:g} (a real 3G trace, scaled); carbon {cfg.device_zone} "
        f"(device) and {cfg.server_zone} (server), {cfg.hours} h from "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))} in {cfg.steps} steps; the "
        f"{bw_tr.duration_s:.0f} s link trace is walked {cfg.bandwidth_passes}x over the window",
        cfg,
    )
    broker = start_broker(0)
    say(f"[demo] MQTT broker: {broker.kind} at {broker.url}", cfg)
    server = EdgeServerProcess(bundle_path, out / "server.log")
    clock = VirtualClock(t0)
    sub = pub = None
    loops: dict[str, Any] = {}
    logs: dict[str, Any] = {}
    head = make_runner(bundle, backend="litert")
    try:
        say("[demo] starting the edge server (carboncp serve) ...", cfg)
        server.start()
        say(f"[demo] edge server ready at {server.url}", cfg)
        sub = CarbonSubscriber(
            broker.url, [cfg.device_zone, cfg.server_zone], device_id="demo-rpi4",
            ttl_s=2 * HOUR_S, now_fn=clock, allow_replay=True,
        ).start()  # fmt: skip
        sub.wait_connected(15)
        pub = CarbonPublisher(broker.url).start()
        shaper = LinkShaper(bw_tr, scale=cfg.scale)
        for name in cfg.policies:
            if name in ("A", "M", "R"):
                policy: Any = TablePolicy.from_bundle(bundle, mode=name, seed=cfg.seed)
            elif name == "local":
                policy = FixedPolicy(P, "local")
            elif name == "server":
                policy = FixedPolicy(0, "server")
            else:
                raise CarbonCPError(f"unknown demo policy {name!r}")
            logs[name] = open(out / f"records-{name}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
            loops[name] = DeviceLoop(
                bundle, policy, head,
                client=OffloadClient(server.url, bundle, float16=_float16(bundle), shaper=shaper),
                carbon=sub, estimator=BandwidthEstimator(initial_mbps=20.0, initial_rtt_ms=5.0),
                config=LoopConfig(mode=name, deadline_ms=cm.deadline, device_zone=cfg.device_zone,
                                  server_zone=cfg.server_zone, probe_after_s=1.0),
                cost_model=cm, load=LoadSampler(0.0), log=logs[name],
            )  # fmt: skip
        rng = np.random.default_rng(cfg.seed)
        published_hour = None
        steps: list[dict[str, Any]] = []
        for k in range(cfg.steps):
            clock.t_s = t0 + k * dt_carbon
            hour = int(clock.t_s // HOUR_S) * HOUR_S
            if hour != published_hour:
                vals = {cfg.device_zone: dev_tr.at(hour), cfg.server_zone: srv_tr.at(hour)}
                for zone, v in vals.items():
                    pub.publish(zone, v, hour, source="electricitymaps-slice", replay=True)
                for zone, v in vals.items():
                    if not sub.wait_for(zone, lambda r, v=v, h=hour: r.ts_s == h, timeout=5):
                        raise CarbonCPError(
                            f"carbon for {zone} did not arrive over MQTT within 5 s"
                        )
                published_hour = hour
            x = rng.integers(0, 256, bundle.input_shape, dtype=np.uint8)
            row: dict[str, Any] = {"step": k, "t_s": clock.t_s, "trace_t_s": k * dt_bw}
            for name, loop in loops.items():
                shaper.seek(k * dt_bw)
                rec = loop.infer(x)
                row[name] = rec
            row["true_mbps"] = bw_tr.at(k * dt_bw) * cfg.scale
            steps.append(row)
            a = row[cfg.policies[0]]
            changed = k > 0 and a.partition != steps[-2][cfg.policies[0]].partition
            if cfg.progress and (changed or k % 24 == 0 or k == cfg.steps - 1):
                say(
                    f"[demo] step {k + 1}/{cfg.steps}: {time.strftime('%a %H:%M', time.gmtime(clock.t_s))} "
                    f"I_d={a.seen['device_gco2_per_kwh']:.0f} I_s={a.seen['server_gco2_per_kwh']:.0f} g/kWh, "
                    f"link {row['true_mbps']:.0f} Mbit/s (estimate {a.seen['bandwidth_mbps']:.0f}) -> "
                    f"{cfg.policies[0]} {'CHANGED to' if changed else 'chose'} p={a.partition} "
                    f"(set {a.candidates}){' FALLBACK' if a.fallbacks else ''}",
                    cfg,
                )
    finally:
        for f in logs.values():
            f.close()
        if pub is not None:
            pub.stop()
        if sub is not None:
            sub.stop()
        server.stop()
        broker.cleanup()
        head.close()
    summary = summarise(steps, cfg, cm, P)
    for name, loop in loops.items():
        pc = loop.estimator.probe_cost
        summary["policies"][name]["probes"] = {
            "count": pc.probes,
            "bytes": pc.bytes,
            "time_s": pc.time_s,
            "energy_j": pc.energy_j,
        }
    summary["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    summary["window_start_utc"] = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t0))
    summary["broker"] = broker.kind
    summary["wall_s"] = time.monotonic() - t_begin
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print_summary(summary, cfg)
    try:
        png = plot(steps, summary, cfg, out / "demo.png", P)
        print(f"plot: {png}")
    except ImportError:
        print("plot: skipped (matplotlib is not installed: pip install 'carboncp[tooling]')")
    print(f"records: {out}/records-*.jsonl, summary: {out / 'summary.json'}")
    return summary


def _float16(bundle: Any) -> bool:
    prof = bundle.section("profile") or {}
    return "float16" in (prof.get("wire_dtypes") or [])


def summarise(steps: list[dict[str, Any]], cfg: DemoConfig, cm: Any, P: int) -> dict[str, Any]:
    """Per policy: emulated-Pi carbon, latency, battery, SLO violations, coverage of the oracle."""
    res: dict[str, Any] = {"policies": {}}
    local_carbon = None
    for name in cfg.policies:
        recs = [s[name] for s in steps]
        carbon = np.array([r.model["carbon_g"] for r in recs])
        lat = np.array([r.model["latency_ms"] for r in recs])
        batt = np.array([r.model["battery_pct"] for r in recs])
        rows = np.array([[r.realised[f] for f in _FIELDS] for r in recs], dtype=np.float64)
        true_bw = np.array([s["true_mbps"] for s in steps])
        oracle = cm.oracle(cm.evaluate(rows, true_bw))
        in_set = np.array([o in r.candidates for o, r in zip(oracle, recs, strict=True)])
        parts = np.array([r.partition for r in recs])
        res["policies"][name] = {
            "inferences": len(recs),
            "offloaded_share": float(np.mean([r.offloaded for r in recs])),
            "fallbacks": int(sum(bool(r.fallbacks) for r in recs)),
            "partition_counts": np.bincount(parts, minlength=P + 1).tolist(),
            "decision_changes": int(np.sum(parts[1:] != parts[:-1])),
            "carbon_mg": float(carbon.sum() * 1000.0),
            "latency_ms_mean": float(lat.mean()),
            "latency_ms_p95": float(np.percentile(lat, 95)),
            "slo_violation_share": float(np.mean(lat > cm.slo)) if cm.slo else 0.0,
            "battery_pct_used": float(batt.sum()),
            "oracle_in_set_share": float(in_set.mean()),
            "mean_set_size": float(np.mean([len(r.candidates) for r in recs])),
            "host_latency_ms_mean": float(np.mean([r.latency_ms for r in recs])),
        }
        if name == "local":
            local_carbon = float(carbon.sum() * 1000.0)
    # Where the cost model's choice flips from local to offloading, at the window's carbon extremes
    seen = [s[cfg.policies[0]].seen for s in steps]
    ratio = np.array([c["server_gco2_per_kwh"] / max(c["device_gco2_per_kwh"], 1.0) for c in seen])
    grid = np.round(np.arange(0.5, 100.0, 0.25), 2)
    res["offload_threshold_mbps"] = {}
    for label, i in (
        ("server_cleanest", int(np.argmin(ratio))),
        ("server_dirtiest", int(np.argmax(ratio))),
    ):
        base = [seen[i][f] for f in _FIELDS]
        x = np.array([[b, *base[1:]] for b in grid], dtype=np.float64)
        x[:, 1], x[:, 2], x[:, 3], x[:, 6] = 5.0, 0.0, 0.0, 100.0
        off = np.flatnonzero(cm.oracle(cm.evaluate(x)) != P)
        res["offload_threshold_mbps"][label] = {
            "mbps": float(grid[off[0]]) if len(off) else None,
            "device_gco2_per_kwh": base[4],
            "server_gco2_per_kwh": base[5],
        }
    for v in res["policies"].values():
        v["carbon_vs_local"] = v["carbon_mg"] / local_carbon if local_carbon else math.nan
    return res


_FIELDS = ("bandwidth_mbps", "rtt_ms", "device_load", "server_load", "device_gco2_per_kwh",
           "server_gco2_per_kwh", "battery_pct")  # fmt: skip


def print_summary(summary: dict[str, Any], cfg: DemoConfig) -> None:
    print()
    print(
        f"CarbonCP demo: emulated Raspberry Pi 4 (rpi4 profile costs; this CPU is not a Pi), "
        f"offload link paced to {cfg.bandwidth} x {cfg.scale:g} (a real 3G trace scaled to a "
        f"WiFi-like link), carbon {cfg.device_zone} -> {cfg.server_zone} replayed over MQTT "
        f"({summary['broker']}), {cfg.hours} h from {summary['window_start_utc']}, random images"
    )
    head = (f"{'policy':<8} {'carbon mg':>9} {'vs local':>8} {'lat ms':>7} {'p95 ms':>7} "
            f"{'SLO viol':>8} {'battery %':>9} {'offload':>7} {'fallbk':>6} {'changes':>7} "
            f"{'coverage':>8} {'set':>4}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, v in summary["policies"].items():
        print(
            f"{name:<8} {v['carbon_mg']:>9.3f} {v['carbon_vs_local'] * 100:>7.1f}% "
            f"{v['latency_ms_mean']:>7.1f} {v['latency_ms_p95']:>7.1f} "
            f"{v['slo_violation_share'] * 100:>7.1f}% {v['battery_pct_used']:>9.4f} "
            f"{v['offloaded_share'] * 100:>6.0f}% {v['fallbacks']:>6d} {v['decision_changes']:>7d} "
            f"{v['oracle_in_set_share'] * 100:>7.1f}% {v['mean_set_size']:>4.1f}"
        )
    th = summary.get("offload_threshold_mbps", {})
    if th:
        parts = [
            f"{'none' if v['mbps'] is None else format(v['mbps'], 'g') + ' Mbit/s'} when I_d={v['device_gco2_per_kwh']:.0f}, "
            f"I_s={v['server_gco2_per_kwh']:.0f}"
            for v in th.values()
        ]
        print(
            "cost model: offloading beats local execution above "
            + " / ".join(parts)
            + " (carbon moves this threshold; the link crosses it)"
        )
    print(
        "carbon/latency/battery: the rpi4 profile's cost of each inference on its realised "
        "context (true link rate, live carbon) and actual outcome, fallbacks included; "
        "coverage: share of inferences whose chosen set held the oracle partition."
    )


def plot(
    steps: list[dict[str, Any]], summary: dict[str, Any], cfg: DemoConfig, path: Path, P: int
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = np.array([(s["t_s"] - steps[0]["t_s"]) / HOUR_S for s in steps])
    first = cfg.policies[0]
    fig, ax = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    ax[0].plot(
        hours,
        [s[first].seen["device_gco2_per_kwh"] for s in steps],
        label=f"device grid {cfg.device_zone}",
    )
    ax[0].plot(
        hours,
        [s[first].seen["server_gco2_per_kwh"] for s in steps],
        label=f"server grid {cfg.server_zone}",
    )
    ax[0].set_ylabel("gCO2/kWh")
    ax[0].legend(loc="upper right")
    ax[1].plot(
        hours, [s["true_mbps"] for s in steps], label=f"link ({cfg.bandwidth} x {cfg.scale:g})"
    )
    ax[1].plot(
        hours,
        [s[first].seen["bandwidth_mbps"] for s in steps],
        label=f"{first}: estimate",
        alpha=0.8,
    )
    ax[1].set_ylabel("Mbit/s")
    ax[1].legend(loc="upper right")
    for name in cfg.policies:
        ax[2].plot(
            hours, [s[name].partition for s in steps], drawstyle="steps-post", label=name, alpha=0.8
        )
    ax[2].set_ylabel("partition p")
    ax[2].set_yticks(range(P + 1))
    ax[2].legend(loc="upper right")
    for name in cfg.policies:
        ax[3].plot(hours, np.cumsum([s[name].model["carbon_g"] * 1000 for s in steps]), label=name)
    ax[3].set_ylabel("cumulative mgCO2")
    ax[3].set_xlabel("hours into the replayed window")
    ax[3].legend(loc="upper left")
    fig.suptitle("CarbonCP demo: emulated Raspberry Pi 4, offload link paced to a real trace")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
