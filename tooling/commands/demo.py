"""The one-command demo: CarbonCP on one machine, emulating a Raspberry Pi 4 on an LTE-like link.

Builds (first run) or reuses a ResNet-18 bundle for the rpi4 device profile, its table trained
on this scenario, starts an MQTT broker (Mosquitto if installed, else amqtt in-process) and
the edge server as a subprocess, replays real hourly carbon intensities of the device's zone
and the server's zone over MQTT at accelerated time, and runs inferences through the real
runtime with CarbonCP mode A and the local-only and server-only baselines. Costs are the
rpi4 profile's, since this CPU is not a Pi. Prints the headline (mode A's carbon saving
against local-only and against server-only, its SLO violations, its regret against the causal
reference, and the latency and battery it traded), a table per policy (carbon, latency,
battery, coverage) and what caused each change of decision (carbon or the link), and writes
demo.png, summary.json and the records.

The scenario is chosen with the cost model under the default carbon-first objective (the
least carbon within the 300 ms SLO). For ResNet-18 on a Pi 4, offloading the uint8 image
(about 0.3-0.5 J on the device at 15-29 Mbit/s plus 0.12 J on a 15 W server) emits less
carbon than running locally (0.79 J) above a link rate B* that the grids set: about 11
Mbit/s when they are equally clean, 19 when the server's is 3 times dirtier, never beyond
about 6 times. Hence the defaults:
  device in GB (a wind-driven grid, 4 to 249 gCO2eq/kWh in the shipped slice), edge server
    in DE-LU (84 to 583): on windy GB hours local execution wins, on still hours offloading;
  the link: norway_bus_1 (a real 3G bus ride) x 6, 2.2 to 29 Mbit/s (an LTE-like uplink),
    which crosses B* often;
  the window: of the shipped 8 weeks, the two weeks (336 h over 144 steps) where carbon and
    the link are each expected to change the decision several times and the cost model's
    choice saves the most against the better of local-only and server-only (about 12%
    against each; the planned figures are printed at start).
While mode A runs locally it probes the link before the next decision (steps are hours apart
in emulated time); the probes' bytes, time and energy are counted in its carbon and in
summary.json. Each change of mode A's decision is labelled with its cause (carbon or link:
the policy re-decides with the previous step's carbon, and with the previous step's link);
the counts are in the summary and the carbon-driven switches are marked on demo.png.
`--scale auto` lets the cost model pick the scale too (for other models or profiles).

Example:
  carboncp demo                       # ~5 minutes the first time (build), then ~1-2 minutes
  carboncp demo --steps 72 --out demo-out
  carboncp demo --device-zone DE-LU --server-zone GB --scale 15 --bundle models/demo-de-gb
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the one-machine demo (emulated Raspberry Pi 4, real traces, real runtime)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from carboncp.tooling.demo import DEFAULT_BUNDLE

    parser.add_argument(
        "--out", default="demo-out", metavar="DIR", help="output folder (default demo-out)"
    )
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE, metavar="DIR",
                        help=f"bundle folder, built on the first run for the scenario (default "
                             f"{DEFAULT_BUNDLE}; use another folder for another scenario)")  # fmt: skip
    parser.add_argument("--model", default="resnet18", help="model to export (default resnet18)")
    parser.add_argument(
        "--steps", type=int, default=144, help="inference steps per policy (default 144)"
    )
    parser.add_argument(
        "--hours",
        type=int,
        default=336,
        help="hours of carbon trace replayed over the steps (default 336: two weeks)",
    )
    parser.add_argument(
        "--bandwidth", default="norway_bus_1", help="shipped bandwidth trace (default norway_bus_1)"
    )
    parser.add_argument("--scale", default="6",
                        help="multiply the trace's rates by K (default 6: an LTE-like uplink, "
                             "2.2-29 Mbit/s), or 'auto' (chosen with the cost model)")  # fmt: skip
    parser.add_argument("--bandwidth-passes", type=int, default=3,
                        help="times the looped bandwidth trace is walked over the window (default 3)")  # fmt: skip
    parser.add_argument("--device-zone", default="GB", help="device grid zone (default GB)")
    parser.add_argument("--server-zone", default="DE-LU", help="server grid zone (default DE-LU)")
    parser.add_argument(
        "--policies", default="A,local,server", help="comma list of A, M, R, local, server"
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="rebuild the bundle even if it is valid"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from carboncp.runtime.errors import ConfigError
    from carboncp.tooling.demo import DemoConfig, run_demo

    if args.steps < 2:
        raise ConfigError(f"--steps must be >= 2, got {args.steps}")
    if not 2 <= args.hours <= 24 * 7 * 8:
        raise ConfigError(
            f"--hours must be in 2..1344 (the shipped slices are 8 weeks), got {args.hours}"
        )
    if args.bandwidth_passes < 1:
        raise ConfigError(f"--bandwidth-passes must be >= 1, got {args.bandwidth_passes}")
    scale: float | None = None
    if args.scale != "auto":
        try:
            scale = float(args.scale)
        except ValueError:
            raise ConfigError(f"--scale must be a number or 'auto', got {args.scale!r}") from None
        if not scale > 0:
            raise ConfigError(f"--scale must be > 0, got {args.scale}")
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    bad = [p for p in policies if p not in ("A", "M", "R", "local", "server")]
    if bad or not policies:
        raise ConfigError(f"--policies: {bad or policies} not among A, M, R, local, server")
    cfg = DemoConfig(
        out_dir=Path(args.out), bundle=Path(args.bundle), model=args.model, steps=args.steps,
        hours=args.hours, bandwidth=args.bandwidth, scale=scale,
        device_zone=args.device_zone, server_zone=args.server_zone, policies=policies,
        rebuild=args.rebuild, bandwidth_passes=args.bandwidth_passes, seed=args.seed, progress=not args.quiet,
    )  # fmt: skip
    run_demo(cfg)
    return 0
