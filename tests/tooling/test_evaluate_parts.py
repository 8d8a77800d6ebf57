"""The parts `carboncp evaluate` is made of: the policy registry, the metrics helpers, and
the replay module that build and evaluate share (no import between the two)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from carboncp.tooling.baselines import RULES, TABLE_POLICIES
from carboncp.tooling.evaluate import BASELINES, POLICIES
from carboncp.tooling.metrics import (
    ALPHA_GRID,
    add_regrets,
    block_bootstrap_ci,
    carbon_reductions,
    coverage_vs_alpha,
    jsonable,
)

TOOLING = Path(__file__).resolve().parents[2] / "tooling"


def test_every_policy_has_exactly_one_source() -> None:
    assert not set(TABLE_POLICIES) & set(RULES)
    assert set(POLICIES) == set(TABLE_POLICIES) | set(RULES)
    assert set(BASELINES) <= set(RULES)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_build_does_not_import_evaluate() -> None:
    for name in ("build", "replay", "baselines", "metrics", "shift"):
        assert "carboncp.tooling.evaluate" not in _imports(TOOLING / f"{name}.py"), name


def test_regrets_and_reductions() -> None:
    pm = {
        "causal_best": {"carbon_g": 2.0, "objective_j": 4.0},
        "oracle": {"carbon_g": 1.0, "objective_j": 2.0},
        "local_only": {"carbon_g": 4.0, "objective_j": 8.0},
    }
    add_regrets(pm)
    assert pm["local_only"]["regret_pct"] == pytest.approx(100.0)
    assert pm["local_only"]["regret_oracle_pct"] == pytest.approx(300.0)
    assert pm["causal_best"]["j_regret_pct"] == 0
    for name in ("carboncp_a", "carboncp_m", "carboncp_r", "known_bandwidth"):
        pm[name] = {"carbon_g": 3.0}
    red = carbon_reductions(pm, ("local_only",))
    assert red["carboncp_a"]["local_only"] == pytest.approx(25.0)
    assert red["oracle"]["local_only"] == pytest.approx(75.0)


def test_coverage_vs_alpha_and_jsonable() -> None:
    rng = np.random.default_rng(0)
    s_cal, s_test = rng.normal(size=500), rng.normal(size=400)
    rows = coverage_vs_alpha(s_cal, s_test)
    assert [r["alpha"] for r in rows] == list(ALPHA_GRID)
    for r in rows:  # exchangeable scores: coverage near 1 - α
        assert abs(r["split_cp"] - (1 - r["alpha"])) < 0.06
        assert abs(r["aci"] - (1 - r["alpha"])) < 0.06
    assert jsonable({1: np.float32(np.inf), "a": (np.int64(2), np.nan)}) == {
        "1": "inf",
        "a": [2, None],
    }


def test_block_bootstrap_interval_matches_the_binomial_one_on_independent_events() -> None:
    """Independent Bernoulli(0.8) coverage flags, 400 days of 96: the day-block 95% interval
    is the binomial one (±1.96·sqrt(p(1-p)/n)) within 10% (a 90% interval would be 16%
    narrower) and holds the point estimate; its 90% twin is narrower by z(0.95)/z(0.975)."""
    x = np.random.default_rng(1).random(400 * 96) < 0.8
    lo, hi = block_bootstrap_ci(x, 96)
    half = 1.96 * math.sqrt(0.8 * 0.2 / len(x))
    assert lo < x.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    lo90, hi90 = block_bootstrap_ci(x, 96, level=0.9)
    assert (hi90 - lo90) / (hi - lo) == pytest.approx(1.645 / 1.96, rel=0.06)


def test_block_bootstrap_interval_widens_with_correlated_days_and_covers_the_truth() -> None:
    """Whole days covered or missed together (the carbon and link processes correlate
    events): the interval is several times the binomial one, and over 200 such test periods
    it holds the true coverage about 95% of the time (an interval from single-event
    resampling holds it far less often: the bug this guards against)."""
    rng = np.random.default_rng(2)
    hits = hits_iid = 0
    for _ in range(200):
        day_p = np.clip(rng.normal(0.8, 0.1, 60), 0, 1)  # each day's own coverage, mean 0.8
        x = (rng.random((60, 96)) < day_p[:, None]).ravel()
        lo, hi = block_bootstrap_ci(x, 96, n_boot=500)
        hits += lo <= 0.8 <= hi
        lo1, hi1 = block_bootstrap_ci(x, 1, n_boot=500)
        hits_iid += lo1 <= 0.8 <= hi1
    assert 0.89 <= hits / 200 <= 0.99
    assert hits_iid / 200 < 0.6
    assert block_bootstrap_ci(np.ones(50), 96) == [1.0, 1.0]  # under two blocks: the mean


def test_coverage_rows_carry_their_interval_when_given_a_block() -> None:
    rng = np.random.default_rng(3)
    rows = coverage_vs_alpha(rng.normal(size=500), rng.normal(size=960), block=96)
    for r in rows:
        lo, hi = r["split_cp_ci95"]
        assert lo <= r["split_cp"] <= hi and hi - lo < 0.2
    assert "split_cp_ci95" not in coverage_vs_alpha(rng.normal(size=50), rng.normal(size=50))[0]


def test_the_printed_summary_gives_split_cps_interval_at_the_runs_alpha() -> None:
    from carboncp.tooling.evaluate import format_table

    pol = {
        "carbon_g": 1.0, "latency_ms_mean": 100.0, "latency_ms_p95": 120.0,
        "slo_violation_rate": 0.0, "coverage": None, "mean_set_size": None,
        "regret_pct": None, "decision_error_rate": 0.0,
    }  # fmt: skip
    cov = [
        {"alpha": 0.05, "split_cp": 0.96, "aci": 0.95, "split_cp_ci95": [0.95, 0.97]},
        {"alpha": 0.1, "split_cp": 0.924, "aci": 0.9, "split_cp_ci95": [0.917, 0.933]},
    ]
    m = {"alpha": 0.1, "n_test": 10, "policies": {"local_only": pol}, "coverage_vs_alpha": cov}
    text = format_table(m)
    assert "split CP test coverage at alpha 0.1: 0.924 (95% interval over days 0.917-0.933)" in text
    assert "alpha 0.05" not in text
