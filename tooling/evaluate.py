"""Replay a test period through CarbonCP and the baselines (docs/METHOD.md §9); metrics + plots.

The replay is recomputed from the traces with the bundle's own profile and objective; the
decisions come from the bundle's table through the real runtime `TablePolicy`. The table's
scores are never retrained here; q̂, the guard's latency offsets and the bandwidth bound are
calibrated on the calibration period of the evaluation traces (or, with
`calibrate_device_carbon` / `calibrate_bandwidth`, on other traces: the covariate-shift case).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.conformal import (
    ACI,
    BinnedLogit,
    WeightedCP,
    check_alpha,
    split_threshold,
)
from carboncp.runtime.decision.costs import CostModel, cost_model_of
from carboncp.runtime.decision.policy import TablePolicy
from carboncp.runtime.decision.table import Table
from carboncp.runtime.signals.traces import load_bandwidth_trace, load_carbon_csv
from carboncp.tooling.contexts import build_replay
from carboncp.tooling.table_build import calibrate_from_replay, load_qnet, split_indices

POLICIES = (
    "carboncp_a",
    "carboncp_m",
    "carboncp_r",
    "local_only",
    "server_only",
    "latency_optimal",
    "energy_optimal",
    "carbon_greedy",
    "causal_best",
    "known_bandwidth",
    "oracle",
)
BASELINES = (
    "local_only",
    "server_only",
    "latency_optimal",
    "energy_optimal",
    "carbon_greedy",
    "causal_best",
)
ALPHA_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def make_replay(
    cm: CostModel,
    device_carbon: str | Path,
    server_carbon: str | Path,
    bandwidth: str | Path,
    *,
    events_per_hour: int = 12,
    days: float | None = None,
    seed: int = 0,
) -> Any:
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
        if pol.wcp is not None and pol._since_refit == 0 and pol.wcp.ess:
            ess.append((pol.wcp.ess, pol.wcp.ready))
    return {
        "choice": choice,
        "covered": covered,
        "size": size,
        "alpha_t": alpha_t,
        "guard_relaxed": pol.n_guard_relaxed,
        "ess": ess,
    }


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


def metrics_for(
    choice: np.ndarray,
    costs: Any,
    te: np.ndarray,
    slo_ms: float | None,
    labels: np.ndarray,
    sets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rows = np.arange(len(te))
    lat = costs.latency_ms[te][rows, choice]
    m = {
        "carbon_g": float(costs.carbon_g[te][rows, choice].sum()),
        "latency_ms_mean": float(lat.mean()),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "slo_violation_rate": float(np.mean(lat > slo_ms)) if slo_ms is not None else 0.0,
        "battery_pct": float(costs.battery_pct[te][rows, choice].sum()),
        "coverage": float(sets["covered"].mean()) if sets else None,
        "mean_set_size": float(sets["size"].mean()) if sets else None,
        "regret_pct": None,
        "regret_oracle_pct": None,
        "decision_error_rate": float(np.mean(choice != labels)),
        "objective_j": float(costs.objective[te][rows, choice].sum()),
        "fallback_rate": float(costs.fallback[te][rows, choice].mean()),
        "partition_counts": np.bincount(choice, minlength=costs.carbon_g.shape[1]).tolist(),
    }
    return m


def _pct(a: float, b: float) -> float | None:
    return 100.0 * (a - b) / b if b > 0 else None


def evaluate(
    bundle_path: str | Path,
    device_carbon: str | Path,
    server_carbon: str | Path,
    bandwidth: str | Path,
    out: str | Path,
    *,
    alpha: float | None = None,
    calibrate_device_carbon: str | Path | None = None,
    calibrate_bandwidth: str | Path | None = None,
    events_per_hour: int = 12,
    days: float | None = None,
    seed: int = 0,
    plots: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the evaluation and write out/metrics.json (+ PNG plots). Returns the metrics."""
    t_start = time.monotonic()
    bundle = Bundle.load(bundle_path)
    cm = cost_model_of(bundle)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if bundle.section("table") is None:
        from carboncp.tooling.build import train_and_compile

        _say("[evaluate] the bundle has no table: training Q_θ and compiling one", progress)
        train_and_compile(
            bundle.path,
            device_carbon,
            server_carbon,
            bandwidth,
            alpha=alpha or 0.1,
            progress=progress,
        )
        bundle = Bundle.load(bundle_path)
    table = Table.from_bundle(bundle)
    alpha = check_alpha(table.alpha if alpha is None else alpha)
    slo = cm.slo
    _say(
        f"[evaluate] replaying {Path(device_carbon).name} / {Path(server_carbon).name} / {Path(bandwidth).name}",
        progress,
    )
    rp = make_replay(
        cm,
        device_carbon,
        server_carbon,
        bandwidth,
        events_per_hour=events_per_hour,
        days=days,
        seed=seed,
    )
    shift = calibrate_device_carbon is not None or calibrate_bandwidth is not None
    if shift:
        cal_rp = make_replay(
            cm,
            calibrate_device_carbon or device_carbon,
            server_carbon,
            calibrate_bandwidth or bandwidth,
            events_per_hour=events_per_hour,
            days=days,
            seed=seed + 1,
        )
        _say(
            f"[evaluate] calibrating on {Path(calibrate_device_carbon or device_carbon).name} / {Path(calibrate_bandwidth or bandwidth).name} (shift)",
            progress,
        )
    else:
        cal_rp = rp
    # Mode A's bandwidth level is a build-time choice (held-out selection); keep it.
    bw_level = table.meta.get("bandwidth_alpha")
    calibrate_from_replay(table, cal_rp, "cal", alpha, bandwidth_alpha=bw_level)
    te = split_indices(rp, "test")
    x_seen, labels, costs = rp.x_seen[te], rp.label[te], rp.costs
    _say(f"[evaluate] {len(te)} test events; q̂ = {table.qhat:.4g} at α = {alpha}", progress)

    choices: dict[str, np.ndarray] = {}
    sets: dict[str, dict[str, Any]] = {}
    for name, mode in (("carboncp_a", "A"), ("carboncp_m", "M"), ("carboncp_r", "R")):
        _say(f"[evaluate] {name} ...", progress)
        sets[name] = run_table_policy(table, cm, x_seen, labels, mode, alpha, seed=seed)
        choices[name] = sets[name]["choice"]
    x_known = x_seen.copy()
    x_known[:, 0] = rp.tx_mbps[te]
    _say("[evaluate] known_bandwidth ...", progress)
    sets["known_bandwidth"] = run_table_policy(
        table, cm, x_known, labels, "A", alpha, seed=seed, known_bandwidth=True
    )
    choices["known_bandwidth"] = sets["known_bandwidth"]["choice"]
    p_last = cm.P
    n = len(te)
    choices["local_only"] = np.full(n, p_last)
    choices["server_only"] = np.zeros(n, dtype=np.int64)
    pred = cm.evaluate(x_seen)
    choices["latency_optimal"] = np.argmin(pred.latency_ms, axis=1)
    choices["energy_optimal"] = np.argmin(pred.device_energy_j, axis=1)
    qmodel = load_qnet(bundle)
    if qmodel is not None and qmodel.n_partitions == p_last + 1:
        choices["carbon_greedy"] = qmodel.predict(x_seen)
        greedy_from = "Q_θ (torch-free numpy forward of the stored weights)"
    else:
        choices["carbon_greedy"] = np.argmin(
            table.scores[table.cells(x_seen)].astype(np.float64), axis=1
        )
        greedy_from = "table argmin (the bundle stores no Q_θ)"
    cells = table.cells(x_seen)
    j_te = costs.objective[te]
    best = {}
    for c in np.unique(cells):
        m = cells == c
        best[c] = int(np.argmin(j_te[m].mean(axis=0)))
    choices["causal_best"] = np.array([best[c] for c in cells], dtype=np.int64)
    choices["oracle"] = labels.astype(np.int64)

    pol_metrics = {
        name: metrics_for(choices[name], costs, te, slo, labels, sets.get(name))
        for name in POLICIES
    }
    c_causal = pol_metrics["causal_best"]["carbon_g"]
    c_oracle = pol_metrics["oracle"]["carbon_g"]
    j_causal = pol_metrics["causal_best"]["objective_j"]
    j_oracle = pol_metrics["oracle"]["objective_j"]
    for m in pol_metrics.values():
        m["regret_pct"] = _pct(m["carbon_g"], c_causal)
        m["regret_oracle_pct"] = _pct(m["carbon_g"], c_oracle)
        m["j_regret_pct"] = _pct(m["objective_j"], j_causal)
        m["j_regret_oracle_pct"] = _pct(m["objective_j"], j_oracle)
    reductions = {
        name: {
            b: (
                None
                if pol_metrics[b]["carbon_g"] <= 0
                else 100.0 * (1 - pol_metrics[name]["carbon_g"] / pol_metrics[b]["carbon_g"])
            )
            for b in BASELINES
            if b != name
        }
        for name in (
            "carboncp_a",
            "carboncp_m",
            "carboncp_r",
            "causal_best",
            "known_bandwidth",
            "oracle",
        )
    }
    s_test = table.scores[cells, labels].astype(np.float64)
    cal_idx = split_indices(cal_rp, "cal")
    s_cal = table.scores[table.cells(cal_rp.x_seen[cal_idx]), cal_rp.label[cal_idx]].astype(
        np.float64
    )
    cov_vs_alpha = []
    for a in ALPHA_GRID:
        q = split_threshold(s_cal, a, warn=False)
        aci = ACI(a, 0.01, np.sort(s_cal))
        errs = 0
        for s in s_test.tolist():
            e = s > aci.threshold()
            errs += e
            aci.update(e)
        cov_vs_alpha.append(
            {"alpha": a, "split_cp": float(np.mean(s_test <= q)), "aci": 1 - errs / max(1, n)}
        )
    metrics: dict[str, Any] = {
        "alpha": alpha,
        "n_test": int(n),
        "policies": pol_metrics,
        "reductions_pct": reductions,
        "coverage_vs_alpha": cov_vs_alpha,
        "scenario": {
            "bundle": str(bundle.path),
            "model": bundle.model_name,
            "device_profile": cm.profile.device,
            "device_carbon": str(device_carbon),
            "server_carbon": str(server_carbon),
            "bandwidth": str(bandwidth),
            "calibrate_device_carbon": None
            if calibrate_device_carbon is None
            else str(calibrate_device_carbon),
            "calibrate_bandwidth": None
            if calibrate_bandwidth is None
            else str(calibrate_bandwidth),
            "radio": cm.objective.radio,
            "slo_ms": slo,
            "events_per_hour": events_per_hour,
            "seed": seed,
            "replay": rp.meta,
        },
        "calibration": dict(table.meta.get("calibration", {})),
        "table": {
            "qhat": table.qhat if math.isfinite(table.qhat) else "inf",
            "cells": int(table.scores.shape[0]),
            "bytes": table.n_bytes(),
            "latency_offset_ms": table.latency_offset_ms,
            "bandwidth_lower_factor": math.exp(table.bandwidth_log_lower),
            "q_objective": table.meta.get("q_objective"),
        },
        "notes": {
            "carbon_greedy": greedy_from,
            "oracle_label_counts": np.bincount(labels, minlength=p_last + 1).tolist(),
        },
    }
    if shift:
        _say("[evaluate] shift: split CP, weighted CP, ACI side by side ...", progress)
        split_run = run_table_policy(
            table, cm, x_seen, labels, "A", alpha, online="split", seed=seed
        )
        w_run = run_table_policy(
            table, cm, x_seen, labels, "A", alpha, online="weighted", seed=seed
        )
        w_off = weighted_cp_offline(table, x_seen, s_test, alpha)
        metrics["shift"] = {
            "split_cp_coverage": float(split_run["covered"].mean()),
            "weighted_cp_coverage": w_off["coverage"],
            "aci_coverage": float(sets["carboncp_a"]["covered"].mean()),
            "weighted_cp_ess": w_off["ess_median"],
            "weighted_cp_ess_floor": w_off["ess_floor"],
            "weighted_cp_coverage_where_ess_passes": w_off["coverage_where_ess_passes"],
            "weighted_cp_active_fraction": w_off["active_fraction"],
            "weighted_with_aci_fallback_coverage": float(w_run["covered"].mean()),
            "n_cal": w_off["n_cal"],
        }
    metrics["seconds"] = round(time.monotonic() - t_start, 1)
    with open(out / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(_jsonable(metrics), f, indent=1)
        f.write("\n")
    if plots:
        from carboncp.tooling.plots import write_plots

        write_plots(out, rp, te, choices, sets, costs, cov_vs_alpha, alpha)
    return metrics


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else ("inf" if v > 0 else ("-inf" if v < 0 else None))
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    return o


def format_table(metrics: dict[str, Any]) -> str:
    """The printed summary: one line per policy."""
    head = f"{'policy':<16}{'carbon g':>10}{'vs local':>9}{'regret%':>9}{'lat ms':>8}{'p95':>8}{'SLO viol':>9}{'cover':>7}{'|set|':>6}{'err':>6}"
    lines = [f"alpha = {metrics['alpha']}, n_test = {metrics['n_test']}", head, "-" * len(head)]
    local = metrics["policies"]["local_only"]["carbon_g"]
    for name, m in metrics["policies"].items():
        red = 100 * (1 - m["carbon_g"] / local) if local > 0 else float("nan")
        cov = "" if m["coverage"] is None else f"{m['coverage']:.3f}"
        size = "" if m["mean_set_size"] is None else f"{m['mean_set_size']:.2f}"
        reg = "" if m["regret_pct"] is None else f"{m['regret_pct']:.1f}"
        lines.append(
            f"{name:<16}{m['carbon_g']:>10.3f}{red:>8.1f}%{reg:>9}{m['latency_ms_mean']:>8.1f}{m['latency_ms_p95']:>8.1f}"
            f"{m['slo_violation_rate']:>9.3f}{cov:>7}{size:>6}{m['decision_error_rate']:>6.2f}"
        )
    if "shift" in metrics:
        s = metrics["shift"]
        lines.append(
            f"shift: split CP {s['split_cp_coverage']:.3f}, weighted CP {s['weighted_cp_coverage']:.3f} "
            f"(ESS {s['weighted_cp_ess']:.0f}, floor {s['weighted_cp_ess_floor']:.0f}), ACI {s['aci_coverage']:.3f}"
        )
    return "\n".join(lines)
