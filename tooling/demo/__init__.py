"""`carboncp demo`: the whole system on one machine, emulating a Raspberry Pi 4 on an LTE-like link.

The scenario (chosen with the cost model, not by trial runs). For ResNet-18 on a Pi 4
(rpi4 profile), offloading the uint8 image costs the device about 0.2-0.3 J (radio and idle
while the server works) and a 15 W server about 0.12 J; running locally costs 0.79 J. With
the latency and battery terms of J, which favour offloading, the cost model offloads above
a link rate B* that carbon moves: about 10.5 Mbit/s when the device's grid is the dirtier
one, up to 18 Mbit/s when the server's grid is many times dirtier than the device's. So:
- device in GB, edge server in DE-LU (defaults): GB is a wind-driven grid (4 to 249
  gCO2eq/kWh in the shipped slice), DE-LU a coal-heavy one (84 to 583); on windy GB hours
  local execution wins at link rates where still hours send the image to the server;
- the link: norway_bus_1 (a real 3G bus ride) with every rate x 6 (2.2 to 29 Mbit/s, median
  22: an LTE-like uplink). Mode A decides on a conformal lower bound of the link (the
  estimate x the table's factor, about 0.77), so it offloads above about B*/0.77, 14 to 24
  Mbit/s: inside the link's range, which crosses it often (at x 4 the link's peak, 19
  Mbit/s, would sit below most of that range; at x 15 its bulk far above it);
- the window: `plan_scenario` scores every window of `hours` in the shipped 8 weeks by the
  expected number of decision changes driven by carbon (carbon moving B* across the link's
  distribution) and by the link (the link crossing B*), and takes the window whose smaller
  count is largest. With `scale=None` (`--scale auto`) it picks the scale the same way.

Steps:
1. Build (or reuse) the bundle for the device profile, its table trained on the demo's own
   scenario (the two zones' slices and the scaled bandwidth trace), in a folder named for it.
2. Start an MQTT broker (Mosquitto if installed, else amqtt in-process) and the edge server
   (`carboncp serve`) as a subprocess.
3. Step through the window of the shipped hourly carbon slices at accelerated time (336 h
   in 144 steps by default): the values of each step's hour are published, retained,
   through the broker and reach the device loop's CarbonSubscriber, which judges their age
   against the replay clock. The 155 s bandwidth trace is walked `bandwidth_passes` times (3) over the window.
4. At every step, the same input is run by each policy (CarbonCP mode A with the bundle's
   table; local-only; server-only) through the real runtime: LiteRT heads, the offload
   client, the server's ExecuTorch tails, with the offload link paced to the scaled trace.
   Each policy's device is built from its settings by `open_device`, as `carboncp run`
   builds one, sharing the head runner, the link shaper and the carbon subscriber.
   Every policy sees the same moment of both traces. A policy whose previous inference did
   not measure the link (it ran locally) probes it first: steps are hours apart in emulated
   time, so the estimate must not be a stale one. Each change of mode A's decision is put
   down to carbon or to the link (AttributedPolicy: the same policy re-decides with the
   previous step's carbon, and with the previous step's link).
5. Costs are the device profile's (this CPU is not a Pi): latency, device energy, carbon and
   battery of each inference on its realised context and actual outcome (fallbacks included).
   Prints a summary table with the changes by cause, writes records (JSON lines),
   summary.json and demo.png.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from carboncp.tooling.demo.attribution import CAUSES, AttributedPolicy
from carboncp.tooling.demo.bundle import ensure_bundle
from carboncp.tooling.demo.config import DEFAULT_BUNDLE, DemoConfig
from carboncp.tooling.demo.plot import draw_plot
from carboncp.tooling.demo.report import make_summary, print_summary, write_summary
from carboncp.tooling.demo.scenario import plan_demo
from carboncp.tooling.demo.session import run_session

__all__ = ["CAUSES", "DEFAULT_BUNDLE", "AttributedPolicy", "DemoConfig", "run_demo"]


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo (the steps above) and return its summary (also in summary.json)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_begin = time.monotonic()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle_path, scale = ensure_bundle(cfg)  # 1
    plan = plan_demo(cfg, bundle_path, scale)
    session = run_session(cfg, plan, out)  # 2-4
    summary = make_summary(session, plan, cfg, wall_s=time.monotonic() - t_begin)  # 5
    write_summary(summary, out / "summary.json")
    print_summary(summary, cfg)
    draw_plot(session.steps, summary, cfg, out, plan.P)
    print(f"records: {out}/records-*.jsonl, summary: {out / 'summary.json'}")
    return summary
