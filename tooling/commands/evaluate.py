"""Replay the test period of real traces through CarbonCP-A/M/R (the bundle's table, SLO
guard and ACI, exactly as the device runs them) and every baseline: local-only,
server-only, latency-optimal, device-energy-optimal, carbon-greedy, the causal reference,
the known-bandwidth bound and the oracle. Prints a table, writes DIR/metrics.json and PNG
plots. q̂, the guard's bounds and the bandwidth bound are calibrated on the traces'
calibration period (or, with --calibrate-device-carbon / --calibrate-bandwidth, on other
traces: the covariate-shift case, reporting split CP, weighted CP and ACI side by side).

Examples:
  carboncp evaluate models/resnet18 --device-carbon DE.csv --server-carbon GB.csv \\
      --bandwidth trace.txt --out results/de-gb
  carboncp evaluate models/resnet18 --device-carbon US.csv --server-carbon GB.csv \\
      --bandwidth trace.txt --calibrate-device-carbon DE.csv --out results/shift
"""

from __future__ import annotations

import argparse

from carboncp.tooling.commands.replay_args import add_replay_arguments, check_replay_arguments

HELP = "replay real traces through CarbonCP and the baselines; metrics.json and plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundle", metavar="BUNDLE", help="bundle folder (built by 'carboncp build')"
    )
    parser.add_argument(
        "--device-carbon",
        required=True,
        metavar="CSV",
        help="Electricity Maps hourly CSV of the device's zone",
    )
    parser.add_argument(
        "--server-carbon",
        required=True,
        metavar="CSV",
        help="Electricity Maps hourly CSV of the server's zone",
    )
    parser.add_argument(
        "--bandwidth", required=True, metavar="TRACE", help="throughput trace (time_s, Mbit/s)"
    )
    parser.add_argument(
        "--calibrate-device-carbon",
        metavar="CSV",
        help="calibrate on this device zone instead (shift)",
    )
    parser.add_argument(
        "--calibrate-bandwidth", metavar="TRACE", help="calibrate on this link instead (shift)"
    )
    parser.add_argument(
        "--device-profile",
        metavar="NAME|FILE",
        help="re-profile the bundle for this device first (rewrites its profile section; the table is recalibrated, not retrained)",
    )
    add_replay_arguments(parser, None, "miscoverage α in (0, 1) (default: the bundle's)")
    parser.add_argument("--no-plots", action="store_true", help="metrics.json only")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from carboncp.tooling.evaluate import evaluate, format_table

    check_replay_arguments(args)
    if args.device_profile:
        from carboncp.tooling.profile import profile_bundle

        profile_bundle(args.bundle, device_profile=args.device_profile)
    metrics = evaluate(
        args.bundle,
        args.device_carbon,
        args.server_carbon,
        args.bandwidth,
        args.out,
        alpha=args.alpha,
        calibrate_device_carbon=args.calibrate_device_carbon,
        calibrate_bandwidth=args.calibrate_bandwidth,
        events_per_hour=args.events_per_hour,
        days=args.days,
        seed=args.seed,
        plots=not args.no_plots,
        progress=not args.quiet,
    )
    print(format_table(metrics))
    print(f"wrote {args.out}/metrics.json")
    return 0
