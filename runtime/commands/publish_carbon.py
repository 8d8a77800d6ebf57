"""Replay a real grid carbon-intensity trace (an Electricity Maps hourly CSV) into an MQTT
broker as retained messages on carboncp/carbon/<ZONE>, one per hour of the trace. --speed sets
how fast trace time runs: 3600 means one hour of trace per second (0: as fast as the broker
takes them).

Two modes:
  plain replay (default): each value carries the trace's own (old) timestamp and
    "replay": true. `carboncp run` REFUSES these (reason 'replay', shown in its records and
    summary): they are for receivers that judge time on the same replay clock
    (CarbonSubscriber(..., allow_replay=True, now_fn=ReplayClock(start, speed)); the demo).
  --restamp: each value is stamped with the wall time it is published at, without the replay
    mark, and source "restamped:<trace>": the trace's values as if live, which a device
    (`carboncp run`) accepts. For demos and tests, never as a real grid signal.

Values are average intensities, direct (--column direct, the default) or lifecycle
(--column lca); the payload says which ("basis"), and a device accepts only the signal its
bundle was built on (docs/FAULTS.md).

Example:
  carboncp publish-carbon --trace runtime/data/carbon/DE-LU_2023-09-11_8w.csv --zone DE-LU \\
      --broker mqtt://127.0.0.1:1884 --speed 3600 --start 2023-09-12T06:00Z --count 24 --restamp
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

HELP = "replay a carbon-intensity trace (CSV) into an MQTT broker as retained messages"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace", required=True, metavar="FILE.csv", help="Electricity Maps hourly CSV"
    )
    parser.add_argument("--zone", help="zone for the topic (default: the trace's Zone Id)")
    parser.add_argument(
        "--broker", required=True, metavar="URL", help="mqtt://host:port or mqtts://"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=3600.0,
        help="trace seconds per wall second (default 3600; 0 = no waiting)",
    )
    parser.add_argument(
        "--start", metavar="ISO", help="first hour to publish (default: the trace's first)"
    )
    parser.add_argument("--count", type=int, help="number of hours to publish (default: all)")
    parser.add_argument(
        "--column", default="direct", help="intensity column: direct (default) or lca"
    )
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA certificate for mqtts://")
    parser.add_argument(
        "--tls-insecure", action="store_true", help="do not verify the broker's certificate"
    )
    parser.add_argument(
        "--restamp",
        action="store_true",
        help="stamp each value with the time it is sent (not the trace's, no replay mark), "
        "so that a device accepts it: for demos and tests",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-message progress on stderr")


def replay_trace(
    trace: Any,
    publisher: Any,
    *,
    zone: str | None = None,
    speed: float = 3600.0,
    start_s: float | None = None,
    count: int | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int, int, float, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    replay_clock: Any = None,
    restamp: bool = False,
    basis: str = "direct",
    wall: Callable[[], float] = time.time,
) -> int:
    """Publish the trace's hours from `start_s` at `speed`; returns how many were published.

    Hour i goes out when the wall clock reaches (t_i - t_0) / speed after the first. With a
    `replay_clock` (a carbon_signals.ReplayClock shared with the receivers, as in the demo)
    hour i goes out when that clock reaches t_i, so publisher and receivers agree on trace
    time exactly. `stop` ends the replay early (the demo runs this in a thread).

    `restamp`: publish each value stamped `wall()` (the time it is sent), without the replay
    mark, so a device judging time on its wall clock accepts it (demos and tests)."""
    from carboncp.runtime.checks import check_number
    from carboncp.runtime.errors import ConfigError

    check_number(speed, "--speed", lo=0)
    zone = zone or trace.zone
    if start_s is None and replay_clock is not None:
        start_s = replay_clock.start_s
    if start_s is not None:
        trace = trace.slice(start_s, float("inf"))
    n = len(trace) if count is None else min(count, len(trace))
    if n <= 0:
        raise ConfigError("--count must be >= 1")
    t0 = float(trace.t_s[0])
    wall0 = clock()
    for i in range(n):
        ts, value = float(trace.t_s[i]), float(trace.gco2_per_kwh[i])
        if replay_clock is not None:
            delay = (ts - replay_clock()) / replay_clock.speed if replay_clock.speed > 0 else 0.0
        elif speed > 0:
            delay = wall0 + (ts - t0) / speed - clock()
        else:
            delay = 0.0
        if stop is not None:
            if stop.wait(max(delay, 0.0)):
                return i
        elif delay > 0:
            sleep(delay)
        publisher.publish(
            zone,
            value,
            wall() if restamp else ts,
            source=f"{'restamped' if restamp else 'replay'}:{trace.source or 'trace'}",
            kind=trace.kind,
            basis=basis,
            replay=not restamp,
        )
        if progress is not None:
            progress(i + 1, n, ts, value)
    return n


def _parse_start(text: str) -> float:
    from carboncp.runtime.errors import ConfigError
    from carboncp.runtime.signals.carbon import parse_iso

    try:
        return parse_iso(text)
    except (ValueError, OverflowError) as exc:
        raise ConfigError(f"--start {text!r} is not ISO 8601 (e.g. 2023-09-12T06:00Z)") from exc


def run(args: argparse.Namespace) -> int:
    from carboncp.runtime.checks import check_number
    from carboncp.runtime.errors import ConfigError
    from carboncp.runtime.signals.carbon import ZONE_RE
    from carboncp.runtime.signals.mqtt import CarbonPublisher
    from carboncp.runtime.signals.traces import load_carbon_csv

    check_number(args.speed, "--speed", lo=0)  # before connecting: fail in a moment, not 10 s
    check_number(args.count, "--count", lo=1, none_ok=True)
    trace = load_carbon_csv(args.trace, column=args.column)
    zone = args.zone or trace.zone
    if not ZONE_RE.match(zone or ""):
        raise ConfigError(f"--zone {zone!r} is not a zone id; pass --zone")
    start_s = _parse_start(args.start) if args.start else None

    def progress(i: int, n: int, ts: float, value: float) -> None:
        if not args.quiet:
            stamp = datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
            print(f"[{i}/{n}] carboncp/carbon/{zone} {stamp}Z {value:.1f} g/kWh", file=sys.stderr)

    with CarbonPublisher(
        args.broker,
        username=args.username,
        password=args.password,
        tls_ca=args.tls_ca,
        tls_insecure=args.tls_insecure,
    ) as pub:
        n = replay_trace(
            trace,
            pub,
            zone=zone,
            speed=args.speed,
            start_s=start_s,
            count=args.count,
            progress=progress,
            restamp=args.restamp,
            basis="lifecycle" if args.column.lower() in ("lca", "lifecycle") else "direct",
        )
    mode = "re-stamped to the time sent" if args.restamp else "replay-marked, trace timestamps"
    print(
        f"published {n} hours of {args.trace} to {args.broker} (zone {zone}; {mode})",
        file=sys.stderr,
    )
    return 0
