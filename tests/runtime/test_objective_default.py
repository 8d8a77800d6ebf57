"""The carbon-first default objective (docs/METHOD.md §4): carbon subject to the hard SLO, no
latency term, and a battery term that acts only below the protection threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective, load_objective

from tests.support.cost_fixtures import random_contexts, resnet18_like_profile


def _model(**kw: object) -> CostModel:
    return CostModel(resnet18_like_profile(), Objective(**kw))  # type: ignore[arg-type]


def test_defaults_are_carbon_first() -> None:
    o = Objective()
    assert (o.w_carbon, o.w_latency) == (1.0, 0.0)
    assert o.w_battery > 0 and o.battery_protect_below_pct == 30.0
    assert o.slo_ms == 300.0
    assert o.battery_shape(30.0) == 0.0 and o.battery_shape(100.0) == 0.0
    assert o.battery_shape(29.0) >= 1.0


def test_default_j_orders_partitions_by_carbon_within_the_slo_on_a_full_battery() -> None:
    cm = _model()
    x = random_contexts(3000, seed=3)
    x[:, 6] = np.random.default_rng(0).uniform(30.0, 100.0, len(x))  # at or above 30 %
    c = cm.evaluate(x)
    ref = cm.reference()
    np.testing.assert_allclose(c.objective, c.carbon_g / ref.carbon_g, rtol=1e-12)
    feas = cm.feasible(c)
    rows = feas.any(axis=1)
    greenest = np.argmin(np.where(feas, c.carbon_g, np.inf), axis=1)
    assert rows.sum() > 2000
    np.testing.assert_array_equal(cm.oracle(c)[rows], greenest[rows])
    # The row path (the device's mode A) prices the same J.
    for row in x[:200].tolist():
        _, j = cm.row(tuple(row), row[0])
        want = cm.evaluate(np.asarray([row])).objective[0]
        np.testing.assert_allclose(j, want, rtol=1e-9)


def test_the_battery_term_kicks_in_below_the_threshold() -> None:
    cm = _model()
    ref = cm.reference()
    # A clean device grid and a dirty server grid on a fast link: offloading (p = 0) costs
    # more carbon than local, but drains far less battery.
    row = [200.0, 20.0, 0.3, 0.3, 50.0, 600.0, 80.0]
    high = cm.evaluate(np.asarray([row]))
    assert cm.oracle(high)[0] == cm.P  # carbon-first: local
    low_row = [*row[:6], 5.0]
    low = cm.evaluate(np.asarray([low_row]))
    h = 1.0 + (30.0 - 5.0) / 30.0 * 2.0
    want = low.carbon_g / ref.carbon_g + 0.2 * low.battery_pct * h / ref.battery_pct
    np.testing.assert_allclose(low.objective, want, rtol=1e-12)
    assert cm.oracle(low)[0] == 0  # a low battery is protected: offload
    _, j_row = cm.row(tuple(low_row), low_row[0])
    np.testing.assert_allclose(j_row, low.objective[0], rtol=1e-9)
    # Just above the threshold the term is off; just below it acts with h >= 1.
    at = cm.evaluate(np.asarray([[*row[:6], 30.0]]))
    np.testing.assert_allclose(at.objective, at.carbon_g / ref.carbon_g, rtol=1e-12)
    below = cm.evaluate(np.asarray([[*row[:6], 29.9]]))
    assert (below.objective > below.carbon_g / ref.carbon_g).all()


def test_the_old_trade_off_stays_available_as_an_explicit_choice(tmp_path) -> None:
    p = tmp_path / "obj.toml"
    p.write_text('w_latency = 0.2\nbattery_protect_below_pct = "off"\n', encoding="utf-8")
    o = load_objective(p)
    assert (o.w_latency, o.w_battery, o.battery_protect_below_pct) == (0.2, 0.2, None)
    assert o.battery_shape(100.0) == 1.0
    assert Objective.from_dict(json.loads(json.dumps(o.to_dict()))) == o
    with pytest.raises(Exception, match="battery_protect_below_pct"):
        Objective(battery_protect_below_pct=0.0)


def test_objectives_stored_before_the_threshold_keep_their_battery_term() -> None:
    # objective.json of an existing bundle (format /1): no threshold key, weights explicit.
    old = Objective(w_latency=0.2, battery_protect_below_pct=None).to_dict()
    del old["battery_protect_below_pct"]
    old["format"] = "carboncp-objective/1"
    o = Objective.from_dict(old)
    assert o.battery_protect_below_pct is None and o.w_latency == 0.2
    assert Objective().to_dict()["format"] == "carboncp-objective/2"
