"""The covariate-shift case of `carboncp evaluate` (docs/METHOD.md §9): calibrate on other traces
than the test period's, and compare split CP, weighted CP and ACI on the test events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.decision.conformal import BinnedLogit, WeightedCP
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.table import Table
from carboncp.tooling.baselines import EvalCase
from carboncp.tooling.contexts import Replay
from carboncp.tooling.replay import make_replay, run_table_policy


def calibration_replay(
    cm: CostModel,
    device_carbon: str | Path,
    server_carbon: str | Path,
    bandwidth: str | Path,
    calibrate_device_carbon: str | Path | None,
    calibrate_bandwidth: str | Path | None,
    *,
    events_per_hour: int,
    days: float | None,
    seed: int,
    progress: bool,
) -> Replay | None:
    """The replay to calibrate on when either calibration trace is given, else None."""
    if calibrate_device_carbon is None and calibrate_bandwidth is None:
        return None
    dev = calibrate_device_carbon or device_carbon
    bw = calibrate_bandwidth or bandwidth
    # Another seed, so that the event times and noise differ from the test replay's.
    rp = make_replay(
        cm, dev, server_carbon, bw, events_per_hour=events_per_hour, days=days, seed=seed + 1
    )
    if progress:
        print(
            f"[evaluate] calibrating on {Path(dev).name} / {Path(bw).name} (shift)",
            file=sys.stderr,
            flush=True,
        )
    return rp


def weighted_cp_offline(
    table: Table,
    x_test: np.ndarray,
    s_test: np.ndarray,
    alpha: float,
    window: int = 500,
    every: int = 100,
) -> dict[str, Any]:
    """Pure weighted CP (no fallback): refit on the previous `window` test contexts."""
    clf = BinnedLogit.from_dict(table.classifier)
    wcp = WeightedCP(clf, table.cal_bins, table.cal_scores, alpha)
    bins = clf.bins(x_test)
    cov, active, esses = [], [], []
    rows = x_test.tolist()
    for i in range(len(rows)):
        if i >= every and i % every == 0:
            wcp.refit(bins[max(0, i - window) : i])
            esses.append(wcp.ess)
        if not esses:
            continue
        q = wcp.threshold_row(rows[i])
        cov.append(s_test[i] <= q)
        active.append(wcp.ready)
    cov_a, act_a = np.asarray(cov, bool), np.asarray(active, bool)
    return {
        "coverage": float(cov_a.mean()) if cov_a.size else float("nan"),
        "coverage_where_ess_passes": float(cov_a[act_a].mean()) if act_a.any() else None,
        "ess_median": float(np.median(esses)) if esses else 0.0,
        "ess_floor": wcp.ess_floor,
        "active_fraction": float(act_a.mean()) if act_a.size else 0.0,
        "n_cal": len(table.cal_scores),
    }


def shift_metrics(case: EvalCase, aci_run: dict[str, Any], s_test: np.ndarray) -> dict[str, Any]:
    """Coverage of split CP, weighted CP (alone and with ACI fallback) and ACI (`aci_run`)."""
    x, y = case.x_seen, case.labels
    split_run = run_table_policy(
        case.table, case.cm, x, y, "A", case.alpha, online="split", seed=case.seed
    )
    w_run = run_table_policy(
        case.table, case.cm, x, y, "A", case.alpha, online="weighted", seed=case.seed
    )
    w_off = weighted_cp_offline(case.table, x, s_test, case.alpha)
    return {
        "split_cp_coverage": float(split_run["covered"].mean()),
        "weighted_cp_coverage": w_off["coverage"],
        "aci_coverage": float(aci_run["covered"].mean()),
        "weighted_cp_ess": w_off["ess_median"],
        "weighted_cp_ess_floor": w_off["ess_floor"],
        "weighted_cp_coverage_where_ess_passes": w_off["coverage_where_ess_passes"],
        "weighted_cp_active_fraction": w_off["active_fraction"],
        "weighted_with_aci_fallback_coverage": float(w_run["covered"].mean()),
        "n_cal": w_off["n_cal"],
    }
