"""`carboncp demo`: the whole system on one machine, emulating a Raspberry Pi 4 on an LTE-like link.

What it shows a newcomer: how much carbon CarbonCP mode A saves against running everything
on the device (local-only) AND against sending everything to the edge server (server-only),
its SLO violations, its regret against the causal reference (docs/METHOD.md §4), and what
the objective traded for it (latency, battery), printed as the run's headline.

The scenario (chosen with the cost model, not by trial runs). Under the default, carbon-first
objective (the least carbon within the 300 ms SLO, battery term only below 30% charge), for
ResNet-18 on a Pi 4 (rpi4 profile) offloading the uint8 image costs the device about 0.5 J at
15 Mbit/s and 0.3 J at 29 (WiFi radio and idle while it sends and the server works) and a
15 W server about 0.12 J, running locally 0.79 J: offloading emits less carbon above a link
rate B* that the two grids' intensities set: about 11 Mbit/s when they are equal, 19 when the
server's grid is 3 times dirtier than the device's, 29 at 4 times, never beyond about 6.
So:
- device in GB (a wind-driven grid, 4 to 249 gCO2eq/kWh in the shipped slice), edge server in
  DE-LU (coal-heavy, 84 to 583; a UK device offloading to a Frankfurt region): on still GB
  hours offloading pays on a fast enough link, on windy ones local execution wins at any
  rate, so carbon moves the decision;
- the link: norway_bus_1 (a real 3G bus ride) with every rate x 6 (2.2 to 29 Mbit/s, median
  22: an LTE-like uplink), which crosses B* often, so the link moves it too; mode A prices the
  estimate times the table's residual quantiles of log(B_real / B̂) (their median factor is
  about 1) and checks the SLO at the pessimistic one;
- the window: `plan_scenario` scores every window of `hours` in the shipped 8 weeks by the
  expected numbers of decision changes driven by carbon (carbon moving B* across the link's
  distribution) and by the link (the link crossing B*), and, among the windows where each is
  at least MIN_EXPECTED_CHANGES, takes the one where the cost model's choice (knowing the
  link) is expected to save the most carbon against the better of local-only and
  server-only (about 12% against each on the default scenario: for ResNet-18 on a Pi over
  WiFi, saving against both baselines at once is bounded by how often each is wrong). With
  `scale=None` (`--scale auto`) it picks the scale the same way.

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
   Every policy sees the same moment of both traces. Before a policy whose previous
   inference did not measure the link (it ran locally) decides, a probe is due: steps are
   hours apart in emulated time. The probe gate runs it only where knowing the link is worth
   more to that decision than the probe's energy (docs/METHOD.md §2.1); otherwise the device
   decides at its stale estimate (the median of the rates it has measured). Each change of mode A's decision is put
   down to carbon or to the link (AttributedPolicy: the same policy re-decides with the
   previous step's carbon, and with the previous step's link).
5. Costs are the device profile's (this CPU is not a Pi): latency, device energy, carbon and
   battery of each inference on its realised context and actual outcome (fallbacks included).
   Prints a summary table with the changes by cause and the headline: mode A's carbon saving
   against local-only and server-only (the records' carbon, probes included), its SLO
   violations, its carbon and J regret against the causal reference (per table cell of the
   context the device saw, the partition with the least mean realised J over the run, as
   `carboncp evaluate` defines it; every partition priced by the cost model on the realised
   contexts) and the clairvoyant oracle's saving, and the latency and battery against both
   baselines. Writes records (JSON lines), summary.json ("headline", "references") and demo.png.
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
