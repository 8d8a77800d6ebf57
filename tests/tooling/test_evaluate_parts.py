"""The parts `carboncp evaluate` is made of: the policy registry, the metrics helpers, and
the replay module that build and evaluate share (no import between the two)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from carboncp.tooling.baselines import RULES, TABLE_POLICIES
from carboncp.tooling.evaluate import BASELINES, POLICIES
from carboncp.tooling.metrics import (
    ALPHA_GRID,
    add_regrets,
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
