"""The numbers `carboncp evaluate` reports per policy, and how metrics.json is written."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.decision.conformal import ACI, split_threshold

ALPHA_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
# The policies whose carbon reduction against every baseline is reported.
REDUCTIONS_OF = (
    "carboncp_a",
    "carboncp_a_lower",
    "carboncp_m",
    "carboncp_r",
    "causal_best",
    "known_bandwidth",
    "oracle",
)


def metrics_for(
    choice: np.ndarray,
    costs: Any,
    te: np.ndarray,
    slo_ms: float | None,
    labels: np.ndarray,
    sets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Carbon, latency, battery, coverage and errors of one policy's choices on the test events."""
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
        # the share of test contexts outside the table's calibration support (table policies)
        "out_of_support_rate": (
            float(sets["out_of_support"].mean()) if sets and "out_of_support" in sets else None
        ),
    }
    return m


def _pct(a: float, b: float) -> float | None:
    return 100.0 * (a - b) / b if b > 0 else None


def add_regrets(pol_metrics: dict[str, dict[str, Any]]) -> None:
    """Fill in each policy's carbon and J regret against causal_best and the oracle."""
    c_causal = pol_metrics["causal_best"]["carbon_g"]
    c_oracle = pol_metrics["oracle"]["carbon_g"]
    j_causal = pol_metrics["causal_best"]["objective_j"]
    j_oracle = pol_metrics["oracle"]["objective_j"]
    for m in pol_metrics.values():
        m["regret_pct"] = _pct(m["carbon_g"], c_causal)
        m["regret_oracle_pct"] = _pct(m["carbon_g"], c_oracle)
        m["j_regret_pct"] = _pct(m["objective_j"], j_causal)
        m["j_regret_oracle_pct"] = _pct(m["objective_j"], j_oracle)


def carbon_reductions(
    pol_metrics: dict[str, dict[str, Any]], baselines: tuple[str, ...]
) -> dict[str, dict[str, float | None]]:
    """Percent carbon saved by each REDUCTIONS_OF policy (those in pol_metrics) against each
    baseline."""
    return {
        name: {
            b: (
                None
                if pol_metrics[b]["carbon_g"] <= 0
                else 100.0 * (1 - pol_metrics[name]["carbon_g"] / pol_metrics[b]["carbon_g"])
            )
            for b in baselines
            if b != name
        }
        for name in REDUCTIONS_OF
        if name in pol_metrics
    }


def coverage_vs_alpha(
    s_cal: np.ndarray, s_test: np.ndarray, block: int | None = None
) -> list[dict[str, Any]]:
    """Test coverage of split CP and of ACI at each level of ALPHA_GRID.

    With `block` (events per block, e.g. a day's), each row also has `split_cp_ci95`: a 95%
    block-bootstrap interval of split CP's test coverage (consecutive events are correlated
    through the carbon and link processes, so resampling single events would understate the
    uncertainty)."""
    n = len(s_test)
    out = []
    for a in ALPHA_GRID:
        q = split_threshold(s_cal, a, warn=False)
        aci = ACI(a, 0.01, np.sort(s_cal))
        errs = 0
        for s in s_test.tolist():
            e = s > aci.threshold()
            errs += e
            aci.update(e)
        covered = s_test <= q
        row: dict[str, Any] = {
            "alpha": a,
            "split_cp": float(np.mean(covered)),
            "aci": 1 - errs / max(1, n),
        }
        if block:
            row["split_cp_ci95"] = block_bootstrap_ci(covered, block)
        out.append(row)
    return out


def block_bootstrap_ci(
    x: np.ndarray, block: int, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> list[float]:
    """[lo, hi]: the `level` percentile interval of mean(x) under a bootstrap of whole
    non-overlapping blocks of `block` consecutive values (a trailing partial block is
    dropped; fewer than two blocks: [mean, mean])."""
    x = np.asarray(x, dtype=np.float64)
    nb = len(x) // max(1, block)
    if nb < 2:
        m = float(np.mean(x)) if len(x) else float("nan")
        return [m, m]
    means = x[: nb * block].reshape(nb, block).mean(axis=1)
    idx = np.random.default_rng(seed).integers(0, nb, (n_boot, nb))
    boot = means[idx].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """metrics.json: numpy values as JSON numbers, non-finite floats as strings or null."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jsonable(metrics), f, indent=1)
        f.write("\n")


def jsonable(o: Any) -> Any:
    """`o` with numpy scalars and arrays as Python ones, and ±inf as "inf"/"-inf", NaN as None."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else ("inf" if v > 0 else ("-inf" if v < 0 else None))
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    return o
