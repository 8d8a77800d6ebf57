"""Replays shared by `carboncp build` and `carboncp evaluate`: build one from trace files, and
run the bundle's table through the real runtime `TablePolicy` over its events in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.policy import TablePolicy
from carboncp.runtime.decision.table import Table
from carboncp.runtime.signals.traces import load_bandwidth_trace, load_carbon_csv
from carboncp.tooling.contexts import Replay, build_replay


def make_replay(
    cm: CostModel,
    device_carbon: str | Path,
    server_carbon: str | Path,
    bandwidth: str | Path,
    *,
    events_per_hour: int = 12,
    days: float | None = None,
    seed: int = 0,
) -> Replay:
    """Load the three traces and replay their common period (the first `days` of it)."""
    dev = load_carbon_csv(device_carbon)
    srv = load_carbon_csv(server_carbon)
    bw = load_bandwidth_trace(bandwidth)
    start = max(dev.start_s, srv.start_s)
    end = None if days is None else start + days * 86400
    return build_replay(
        dev, srv, bw, cm, events_per_hour=events_per_hour, start_s=start, end_s=end, seed=seed
    )


def run_table_policy(
    table: Table,
    cm: CostModel,
    x_seen: np.ndarray,
    labels: np.ndarray,
    mode: str,
    alpha: float,
    *,
    online: str = "aci",
    seed: int = 0,
    known_bandwidth: bool = False,
) -> dict[str, Any]:
    """Decide and observe every event in order; returns choices, sets and ACI state."""
    pol = TablePolicy(table, cm, mode, alpha, seed, online, known_bandwidth=known_bandwidth)
    rows = [tuple(r) for r in x_seen.tolist()]
    choice = np.empty(len(rows), dtype=np.int64)
    covered = np.empty(len(rows), dtype=bool)
    size = np.empty(len(rows), dtype=np.int64)
    alpha_t = np.empty(len(rows))
    ess = []
    for i, row in enumerate(rows):
        d = pol.decide_row(row)
        choice[i] = d.partition
        covered[i] = int(labels[i]) in d.candidates
        size[i] = len(d.candidates)
        alpha_t[i] = pol.aci.alpha_t
        pol.observe_label(d, int(labels[i]), row)
        # Weighted CP's ESS, recorded once per refit (this observation triggered one).
        if pol.wcp is not None and pol.events_since_refit == 0 and pol.wcp.ess:
            ess.append((pol.wcp.ess, pol.wcp.ready))
    return {
        "choice": choice,
        "covered": covered,
        "size": size,
        "alpha_t": alpha_t,
        "guard_relaxed": pol.n_guard_relaxed,
        "ess": ess,
    }
