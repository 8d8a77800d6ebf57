"""Build a deployable bundle in one command: export the model (or reuse a valid bundle at
--out), profile it for a device, replay real carbon and bandwidth traces, train Q_θ with
both objectives (cross-entropy and cost regression) and keep the better on held-out
carbon and SLO violations, compile the threshold table and calibrate it (split CP on the
table's own scores, the SLO guard's latency bounds, mode A's bandwidth bound, what weighted
CP and ACI need on the device).

Without trace options it trains and calibrates on a mixture of the shipped data: every
shipped bandwidth trace at x1, x6, x30 and x150 (3G to 5G-like links, outages included) and
every ordered pair of shipped carbon zones (device side x server side), with the replay's
loads and battery levels; 216 components of 300 events each. Trace options specialise the
bundle; each may be repeated, and every combination (device x server x bandwidth x scale)
becomes a component. The components are recorded in the bundle (build.json).

Examples:
  carboncp build --model resnet18 --out models/resnet18 --device-profile rpi4
  carboncp build --model resnet18 --out models/r18-5g --device-carbon DE.csv \\
      --server-carbon GB.csv --bandwidth 5g_trace.txt --alpha 0.1
  carboncp build --model resnet18 --out models/r18-mine --device-carbon DE.csv \\
      --device-carbon FR.csv --server-carbon GB.csv --bandwidth lte.txt --bandwidth wifi.txt \\
      --bandwidth-scale 1,6
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
        "--device-carbon",
        metavar="CSV",
        action="append",
        help="Electricity Maps hourly CSV of the device's zone (repeat for several zones; "
        "default: every shipped zone)",
    )
    parser.add_argument(
        "--server-carbon",
        metavar="CSV",
        action="append",
        help="Electricity Maps hourly CSV of the server's zone (repeat for several zones; "
        "default: every shipped zone)",
    )
    parser.add_argument(
        "--bandwidth",
        metavar="TRACE",
        action="append",
        help="throughput trace (time_s, Mbit/s); repeat for several links (default: every "
        "shipped trace)",
    )
    parser.add_argument(
        "--bandwidth-scale",
        metavar="K[,K...]",
        help="multiply every bandwidth trace's rates by each factor, one component per factor "
        "(default 1,6,30,150 for the shipped traces, 1 for your own)",
    )
    parser.add_argument(
        "--events-per-component",
        type=int,
        metavar="N",
        help="events replayed per mixture component (default: 64,800 shared evenly; one "
        "component alone is replayed whole at --events-per-hour)",
    )
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


def _scales(text: str | None) -> tuple[float, ...] | None:
    """--bandwidth-scale '1,6,30' -> (1.0, 6.0, 30.0); a ConfigError naming the flag."""
    from carboncp.runtime.errors import ConfigError
    from carboncp.tooling.mixture import parse_scales

    try:
        return parse_scales(text)
    except ValueError as exc:
        raise ConfigError(f"--bandwidth-scale: {exc} (e.g. --bandwidth-scale 1,6,30)") from None


def run(args: argparse.Namespace) -> int:
    from carboncp.runtime.checks import check_number
    from carboncp.tooling.build import build_bundle

    check_replay_arguments(args)
    scales = _scales(args.bandwidth_scale)
    check_number(
        args.events_per_component, "--events-per-component", lo=10, integer=True, none_ok=True
    )
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
        bandwidth_scales=scales,
        events_per_component=args.events_per_component,
    )
    print(out)
    return 0
