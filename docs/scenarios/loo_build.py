#!/usr/bin/env python3
"""Build a leave-one-out variant of the default mixture (issue 9 item 5).

    python docs/scenarios/loo_build.py SRC_BUNDLE OUT --zone GB [--events-per-component 150]
    python docs/scenarios/loo_build.py SRC_BUNDLE OUT --links norway_bus_1,norway_metro_2,...

The variant is the default build's mixture (tooling/mixture.py `default_components()`: every
shipped link at x1/x6/x30/x150 with the 2% outage overlay, every ordered pair of shipped
zones) minus every component whose device OR server zone is --zone, or whose link is one of
--links. Only the mixture changes: the outage overlay and scales stay the default's, which
the CLI's --bandwidth/--device-carbon options would not keep (a user's traces are replayed
as measured). SRC_BUNDLE (the default bundle) is copied to OUT and keeps its export,
profile and objective, so the variants differ from it only in what they were trained and
calibrated on (and in --events-per-component, which is smaller than the default's 300 when
CPU is short; the default shares 64,800 events over the components).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from carboncp.tooling import mixture
from carboncp.tooling.build import train_and_compile


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("src")
    ap.add_argument("out")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--zone", help="leave out every component with this zone on either side")
    g.add_argument("--links", help="comma-separated shipped bandwidth trace names to leave out")
    ap.add_argument("--events-per-component", type=int, default=None)
    a = ap.parse_args()

    everything = mixture.default_components()
    if a.zone:

        def keep(c: mixture.Component) -> bool:
            return not any(
                p.name.startswith(a.zone + "_") for p in (c.device_carbon, c.server_carbon)
            )
    else:
        names = set(a.links.split(","))
        unknown = names - {c.bandwidth.name for c in everything}
        if unknown:
            raise SystemExit(f"not shipped bandwidth traces: {sorted(unknown)}")

        def keep(c: mixture.Component) -> bool:
            return c.bandwidth.name not in names

    kept = [c for c in everything if keep(c)]
    print(f"[loo] {len(kept)} of {len(everything)} default components kept", flush=True)
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(a.src, out)
    # train_and_compile imports mixture.components at call time: give it the kept list.
    mixture.components = lambda *args, **kw: list(kept)
    train_and_compile(out, events_per_component=a.events_per_component, progress=True)


if __name__ == "__main__":
    main()
