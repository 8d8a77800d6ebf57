"""Build a deployable bundle in one command: export the model (or reuse a valid bundle at
--out), profile it for a device, replay real carbon and bandwidth traces, train Q_θ with
both objectives (cross-entropy and cost regression) and keep the better on held-out
carbon and SLO violations, compile the threshold table and calibrate it (split CP on the
table's own scores, the SLO guard's latency bounds, mode A's bandwidth bound, what weighted
CP and ACI need on the device).

Without trace options it uses the shipped slices: device zone DE-LU, server zone GB,
bandwidth norway_bus_1 (a 3G link: local execution usually wins there; pass a faster trace
for a scenario where offloading pays).

Examples:
  carboncp build --model resnet18 --out models/resnet18 --device-profile rpi4
  carboncp build --model resnet18 --out models/r18-5g --device-carbon DE.csv \\
      --server-carbon GB.csv --bandwidth 5g_trace.txt --alpha 0.1
"""

from __future__ import annotations

import argparse

from carboncp.tooling.commands.replay_args import add_replay_arguments, check_replay_arguments

HELP = "export, profile, train Q_θ, calibrate and compile the threshold table into a bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="resnet18",
        help="model name or package.module:factory (default resnet18)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="bundle folder (reused when valid)"
    )
    parser.add_argument(
        "--device-profile",
        default="rpi4",
        metavar="NAME|FILE",
        help="host, rpi4 (default), jetson-orin-nano, or a TOML file",
    )
    parser.add_argument(
        "--device-carbon", metavar="CSV", help="Electricity Maps hourly CSV of the device's zone"
    )
    parser.add_argument(
        "--server-carbon", metavar="CSV", help="Electricity Maps hourly CSV of the server's zone"
    )
    parser.add_argument("--bandwidth", metavar="TRACE", help="throughput trace (time_s, Mbit/s)")
    parser.add_argument(
        "--objective", metavar="TOML", help="objective config (weights, SLO, deadline, radio)"
    )
    add_replay_arguments(parser, 0.1, "miscoverage α in (0, 1) (default 0.1)")
    parser.add_argument(
        "--reuse-profile",
        action="store_true",
        help="keep the bundle's existing profile (no re-measuring); --objective still applies",
    )
    parser.add_argument(
        "--q-objective",
        choices=("auto", "ce", "regression"),
        default="auto",
        help="keep this Q_θ objective (default auto: the better on held-out carbon and SLO)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from carboncp.tooling.build import build_bundle

    check_replay_arguments(args)
    out = build_bundle(
        model=args.model,
        out=args.out,
        device_profile=args.device_profile,
        device_carbon=args.device_carbon,
        server_carbon=args.server_carbon,
        bandwidth=args.bandwidth,
        alpha=args.alpha,
        objective=args.objective,
        progress=not args.quiet,
        events_per_hour=args.events_per_hour,
        days=args.days,
        seed=args.seed,
        reuse_profile=args.reuse_profile,
        q_objective=args.q_objective,
    )
    print(out)
    return 0
