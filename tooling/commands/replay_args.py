"""The replay flags `carboncp build` and `carboncp evaluate` share (events per hour, days,
seed, alpha): declared and checked in one place, so both commands accept the same values."""

from __future__ import annotations

import argparse


def add_replay_arguments(
    parser: argparse.ArgumentParser, alpha_default: float | None, alpha_help: str
) -> None:
    parser.add_argument("--alpha", type=float, default=alpha_default, help=alpha_help)
    parser.add_argument(
        "--events-per-hour", type=int, default=12, help="inference events per hour (default 12)"
    )
    parser.add_argument(
        "--days",
        type=float,
        default=None,
        help="replay only the first DAYS of the traces' common period",
    )
    parser.add_argument("--seed", type=int, default=0, help="replay and training seed (>= 0)")


def check_replay_arguments(args: argparse.Namespace) -> None:
    """A ConfigError naming the flag for a value the replay cannot use."""
    from carboncp.runtime.checks import check_number
    from carboncp.runtime.decision.conformal import check_alpha

    if args.alpha is not None:
        check_alpha(args.alpha, "--alpha")
    check_number(args.events_per_hour, "--events-per-hour", lo=1, integer=True)
    check_number(args.days, "--days", lo=0, lo_open=True, none_ok=True)
    check_number(args.seed, "--seed", lo=0, integer=True)
