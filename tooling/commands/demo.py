"""The one-command demo: CarbonCP on one machine, emulating a Raspberry Pi 4 on a WiFi-like link.

Builds (first run) or reuses a ResNet-18 bundle for the rpi4 device profile, starts an MQTT
broker (Mosquitto if installed, else amqtt in-process) and the edge server as a subprocess,
replays real hourly carbon intensities of the device's zone (DE-LU) and the server's zone
(GB) over MQTT at accelerated time, and runs inferences through the real runtime with
CarbonCP mode A and the local-only and server-only baselines. The offload link is paced to a
real bandwidth trace (norway_bus_1, a 3G bus ride) scaled x15 into a WiFi-like link with
real variability; costs are the rpi4 profile's, since this CPU is not a Pi. Prints a summary
(carbon, latency, battery, coverage) and writes demo.png, summary.json and the records.

Example:
  carboncp demo                       # a few minutes the first time (build), then ~1 minute
  carboncp demo --steps 48 --out demo-out --scale 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the one-machine demo (emulated Raspberry Pi 4, real traces, real runtime)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="demo-out", metavar="DIR", help="output folder (default demo-out)"
    )
    parser.add_argument("--bundle", default="models/demo-resnet18-rpi4", metavar="DIR",
                        help="bundle folder, built on the first run (default models/demo-resnet18-rpi4)")  # fmt: skip
    parser.add_argument("--model", default="resnet18", help="model to export (default resnet18)")
    parser.add_argument(
        "--steps", type=int, default=144, help="inference steps per policy (default 144)"
    )
    parser.add_argument(
        "--hours", type=int, default=48, help="hours of carbon trace replayed (default 48)"
    )
    parser.add_argument(
        "--bandwidth", default="norway_bus_1", help="shipped bandwidth trace (default norway_bus_1)"
    )
    parser.add_argument("--scale", type=float, default=15.0,
                        help="multiply the trace's rates by K (default 15: a WiFi-like link)")  # fmt: skip
    parser.add_argument("--bandwidth-passes", type=int, default=3,
                        help="times the looped bandwidth trace is walked over the window (default 3)")  # fmt: skip
    parser.add_argument("--device-zone", default="DE-LU", help="device grid zone (default DE-LU)")
    parser.add_argument("--server-zone", default="GB", help="server grid zone (default GB)")
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
    if not 1 <= args.hours <= 24 * 7 * 8:
        raise ConfigError(
            f"--hours must be in 1..1344 (the shipped slices are 8 weeks), got {args.hours}"
        )
    if args.bandwidth_passes < 1:
        raise ConfigError(f"--bandwidth-passes must be >= 1, got {args.bandwidth_passes}")
    if not args.scale > 0:
        raise ConfigError(f"--scale must be > 0, got {args.scale}")
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    bad = [p for p in policies if p not in ("A", "M", "R", "local", "server")]
    if bad or not policies:
        raise ConfigError(f"--policies: {bad or policies} not among A, M, R, local, server")
    cfg = DemoConfig(
        out_dir=Path(args.out), bundle=Path(args.bundle), model=args.model, steps=args.steps,
        hours=args.hours, bandwidth=args.bandwidth, scale=args.scale,
        device_zone=args.device_zone, server_zone=args.server_zone, policies=policies,
        rebuild=args.rebuild, bandwidth_passes=args.bandwidth_passes, seed=args.seed, progress=not args.quiet,
    )  # fmt: skip
    run_demo(cfg)
    return 0
