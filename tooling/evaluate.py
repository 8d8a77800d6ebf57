"""Replay a test period through CarbonCP and the baselines (docs/METHOD.md §9); metrics + plots.

The replay is recomputed from the traces with the bundle's own profile and objective; the
decisions come from the bundle's table through the real runtime `TablePolicy`. The table's
scores are never retrained here; q̂, the guard's latency offsets and the bandwidth bound are
calibrated on the calibration period of the evaluation traces (or, with
`calibrate_device_carbon` / `calibrate_bandwidth`, on other traces: the covariate-shift case).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.conformal import check_alpha
from carboncp.runtime.decision.costs import CostModel, cost_model_of
from carboncp.runtime.decision.table import Table
from carboncp.tooling.baselines import (
    RULES,
    EvalCase,
    carbon_greedy_source,
    run_table_policies,
)
from carboncp.tooling.build import train_and_compile
from carboncp.tooling.contexts import Replay
from carboncp.tooling.metrics import (
    add_regrets,
    carbon_reductions,
    coverage_vs_alpha,
    metrics_for,
    write_metrics,
)
from carboncp.tooling.replay import make_replay
from carboncp.tooling.shift import calibration_replay, shift_metrics
from carboncp.tooling.table_build import calibrate_from_replay, split_indices

POLICIES = (
    "carboncp_a",
    "carboncp_a_lower",
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
# The baselines every policy's carbon reduction is reported against.
BASELINES = (
    "local_only",
    "server_only",
    "latency_optimal",
    "energy_optimal",
    "carbon_greedy",
    "causal_best",
)


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Scenario:
    """The traces and replay settings of one evaluation."""

    device_carbon: str | Path
    server_carbon: str | Path
    bandwidth: str | Path
    calibrate_device_carbon: str | Path | None = None
    calibrate_bandwidth: str | Path | None = None
    events_per_hour: int = 12
    days: float | None = None
    seed: int = 0

    def replay(self, cm: CostModel) -> Replay:
        """The replay whose test period every policy is judged on."""
        return make_replay(
            cm,
            self.device_carbon,
            self.server_carbon,
            self.bandwidth,
            events_per_hour=self.events_per_hour,
            days=self.days,
            seed=self.seed,
        )

    def calibration_replay(self, cm: CostModel, progress: bool) -> Replay | None:
        """The replay of the calibration traces (the shift case), else None."""
        return calibration_replay(
            cm,
            self.device_carbon,
            self.server_carbon,
            self.bandwidth,
            self.calibrate_device_carbon,
            self.calibrate_bandwidth,
            events_per_hour=self.events_per_hour,
            days=self.days,
            seed=self.seed,
            progress=progress,
        )

    def meta(self, bundle: Bundle, cm: CostModel, rp: Replay) -> dict[str, Any]:
        """metrics.json's 'scenario' block."""
        return {
            "bundle": str(bundle.path),
            "model": bundle.model_name,
            "device_profile": cm.profile.device,
            "device_carbon": str(self.device_carbon),
            "server_carbon": str(self.server_carbon),
            "bandwidth": str(self.bandwidth),
            "calibrate_device_carbon": _str_or_none(self.calibrate_device_carbon),
            "calibrate_bandwidth": _str_or_none(self.calibrate_bandwidth),
            "radio": cm.objective.radio,
            "slo_ms": cm.slo,
            "events_per_hour": self.events_per_hour,
            "seed": self.seed,
            "replay": rp.meta,
            # What the bundle was trained and calibrated on (its 'build' section summary:
            # zones, links, scales, events; build.json lists every component).
            "bundle_built_on": (bundle.section("build") or {}).get("mixture"),
        }


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
    sc = Scenario(
        device_carbon,
        server_carbon,
        bandwidth,
        calibrate_device_carbon,
        calibrate_bandwidth,
        events_per_hour,
        days,
        seed,
    )
    bundle = Bundle.load(bundle_path)
    cm = cost_model_of(bundle)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if bundle.section("table") is None:
        bundle = _compile_missing_table(bundle, sc, alpha, progress)
    table = Table.from_bundle(bundle)
    alpha = check_alpha(table.alpha if alpha is None else alpha)
    _say(
        f"[evaluate] replaying {Path(device_carbon).name} / {Path(server_carbon).name} / {Path(bandwidth).name}",
        progress,
    )
    rp = sc.replay(cm)
    cal_rp = sc.calibration_replay(cm, progress)
    cal = rp if cal_rp is None else cal_rp
    case = _calibrated_case(bundle, table, cm, rp, cal, alpha, seed, progress)
    metrics, choices, runs, s_test = _compare_policies(case, cal, progress)
    metrics["scenario"] = sc.meta(bundle, cm, rp)
    metrics["calibration"] = dict(table.meta.get("calibration", {}))
    metrics["table"] = _table_summary(table)
    metrics["notes"] = {
        "carbon_greedy": carbon_greedy_source(case),
        "oracle_label_counts": np.bincount(case.labels, minlength=cm.P + 1).tolist(),
    }
    if cal_rp is not None:
        _say("[evaluate] shift: split CP, weighted CP, ACI side by side ...", progress)
        metrics["shift"] = shift_metrics(case, runs["carboncp_a"], s_test)
    metrics["seconds"] = round(time.monotonic() - t_start, 1)
    write_metrics(out / "metrics.json", metrics)
    if plots:
        from carboncp.tooling.plots import write_plots

        cov = metrics["coverage_vs_alpha"]
        write_plots(out, rp, case.te, choices, runs, rp.costs, cov, alpha)
    return metrics


def _compile_missing_table(
    bundle: Bundle, sc: Scenario, alpha: float | None, progress: bool
) -> Bundle:
    """Train Q_θ and compile a table on the evaluation traces; the reloaded bundle."""
    _say("[evaluate] the bundle has no table: training Q_θ and compiling one", progress)
    train_and_compile(
        bundle.path,
        sc.device_carbon,
        sc.server_carbon,
        sc.bandwidth,
        alpha=alpha or 0.1,
        progress=progress,
    )
    return Bundle.load(bundle.path)


def _calibrated_case(
    bundle: Bundle,
    table: Table,
    cm: CostModel,
    rp: Replay,
    cal_rp: Replay,
    alpha: float,
    seed: int,
    progress: bool,
) -> EvalCase:
    """Calibrate the table on `cal_rp`'s calibration period; the test period of `rp`."""
    # Mode A's bandwidth level is a build-time choice (held-out selection); keep it.
    bw_level = table.meta.get("bandwidth_alpha")
    # The support stays the build's: it says where the table's scores were calibrated.
    calibrate_from_replay(table, cal_rp, "cal", alpha, bandwidth_alpha=bw_level, keep_support=True)
    te = split_indices(rp, "test")
    _say(f"[evaluate] {len(te)} test events; q̂ = {table.qhat:.4g} at α = {alpha}", progress)
    return EvalCase(bundle, table, cm, rp, te, alpha, seed)


def _compare_policies(
    case: EvalCase, cal_rp: Replay, progress: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, dict[str, Any]], np.ndarray]:
    """Run every policy; (metrics so far, choices, table-policy runs, test scores)."""
    runs = run_table_policies(case, progress)
    choices = {name: run["choice"] for name, run in runs.items()}
    choices |= {name: rule(case) for name, rule in RULES.items()}
    costs = case.replay.costs
    pol_metrics = {
        name: metrics_for(choices[name], costs, case.te, case.cm.slo, case.labels, runs.get(name))
        for name in POLICIES
    }
    add_regrets(pol_metrics)
    s_test = case.table.scores[case.cells, case.labels].astype(np.float64)
    cal_idx = split_indices(cal_rp, "cal")
    cal_cells = case.table.cells(cal_rp.x_seen[cal_idx])
    s_cal = case.table.scores[cal_cells, cal_rp.label[cal_idx]].astype(np.float64)
    metrics: dict[str, Any] = {
        "alpha": case.alpha,
        "n_test": int(case.n),
        "policies": pol_metrics,
        "reductions_pct": carbon_reductions(pol_metrics, BASELINES),
        "coverage_vs_alpha": coverage_vs_alpha(s_cal, s_test, block=_events_per_day(case.replay)),
    }
    return metrics, choices, runs, s_test


def _events_per_day(rp: Replay) -> int:
    """A day of the replay's events: the block of the coverage intervals' bootstrap."""
    return max(1, round(24 * float(rp.meta.get("events_per_hour", 12))))


def _str_or_none(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _table_summary(table: Table) -> dict[str, Any]:
    """What metrics.json records of the calibrated table."""
    return {
        "qhat": table.qhat if math.isfinite(table.qhat) else "inf",
        "cells": int(table.scores.shape[0]),
        "bytes": table.n_bytes(),
        "latency_offset_ms": table.latency_offset_ms,
        "bandwidth_lower_factor": math.exp(table.bandwidth_log_lower),
        "bandwidth_quantile_factors": (
            None
            if table.bandwidth_log_quantiles is None
            else np.exp(table.bandwidth_log_quantiles).tolist()
        ),
        "support": None if table.support is None else table.support.tolist(),
        "q_objective": table.meta.get("q_objective"),
    }


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
    for c in metrics.get("coverage_vs_alpha", []):
        if abs(c["alpha"] - metrics["alpha"]) < 1e-9 and "split_cp_ci95" in c:
            lo, hi = c["split_cp_ci95"]
            lines.append(
                f"split CP test coverage at alpha {c['alpha']:g}: {c['split_cp']:.3f} "
                f"(95% interval over days {lo:.3f}-{hi:.3f}), ACI {c['aci']:.3f}"
            )
    if "shift" in metrics:
        s = metrics["shift"]
        lines.append(
            f"shift: split CP {s['split_cp_coverage']:.3f}, weighted CP {s['weighted_cp_coverage']:.3f} "
            f"(ESS {s['weighted_cp_ess']:.0f}, floor {s['weighted_cp_ess_floor']:.0f}), ACI {s['aci_coverage']:.3f}"
        )
    return "\n".join(lines)
