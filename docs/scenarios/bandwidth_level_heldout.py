#!/usr/bin/env python3
"""Can the default build's held-out rule tell mode A's bandwidth levels apart?

    python docs/scenarios/bandwidth_level_heldout.py BUNDLE   # e.g. $E/r18-default

Rebuilds the default mixture replay (every shipped zone pair and link, as `carboncp build`
without traces), splits its training part as the build's held-out rule does (the last 20%:
calibrate on one half, judge on the other), and prints mode A's carbon and SLO-violation
rate at each candidate level β, once with the table's sets and once pricing every partition
(q̂ = inf), where the level matters most. docs/RESULTS.md, "The headline".
"""

from __future__ import annotations

import math
import sys

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.costs import cost_model_of
from carboncp.runtime.decision.policy import TablePolicy
from carboncp.runtime.decision.table import Table
from carboncp.tooling.build import bandwidth_levels
from carboncp.tooling.mixture import components, make_mixture_replay
from carboncp.tooling.table_build import calibrate, split_indices


def main(argv: list[str]) -> int:
    bundle = Bundle.load(argv[0])
    cm = cost_model_of(bundle)
    rp = make_mixture_replay(cm, components(), seed=0)
    tr = split_indices(rp, "train")
    val = tr[len(tr) - max(1, round(0.2 * len(tr))) :]
    val_cal, val_eval = val[: len(val) // 2], val[len(val) // 2 :]
    rows = [tuple(r) for r in rp.x_seen[val_eval].tolist()]
    n = np.arange(len(val_eval))
    print(f"held-out: calibrate on {len(val_cal)} events, judge on {len(val_eval)}")
    print("| β | sets | carbon g | SLO violations |\n|---|---|---|---|")
    for level in bandwidth_levels(0.1):
        t = Table.from_bundle(bundle)
        x, lab = rp.x_seen[val_cal], rp.label[val_cal]
        calibrate(t, x, lab, rp.costs.latency_ms[val_cal], rp.tx_mbps[val_cal], 0.1,
                  bandwidth_alpha=level)  # fmt: skip
        for full in (False, True):
            pol = TablePolicy(t, cm, "A", 0.1, 0, "split" if full else "aci")
            if full:
                pol.qhat = math.inf
            ch = np.array([pol.decide_row(r).partition for r in rows])
            carbon = rp.costs.carbon_g[val_eval][n, ch].sum()
            slo = np.mean(rp.costs.latency_ms[val_eval][n, ch] > cm.slo)
            print(
                f"| {level:g} | {'every partition' if full else 'the table'} | {carbon:.6f} | {slo:.4f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
