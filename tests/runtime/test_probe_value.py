"""The probe gate's arithmetic (runtime/decision/probe_value.py) against independent
computations: the value of knowing the link from the vectorised cost path over random
contexts, the device-energy weight from the scalar path's local J, the probe's cost by
hand, the stale belief's quantiles by numpy."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.decision.probe_value import (
    ProbeValue,
    link_information_value,
    probe_cost_j,
    probe_value,
    stale_factors,
)

from tests.support.edge_server import synthetic_profile


@pytest.fixture(scope="module")
def cost(tiny_bundle) -> CostModel:
    return CostModel(synthetic_profile(Bundle.load(tiny_bundle)), Objective())


def _brute_voi(cm: CostModel, row: list[float], factors: list[float], lower: float) -> float:
    """VOI from CostModel.evaluate (the vectorised path), eligibility written out again."""
    x = np.array([row] * len(factors))
    c = cm.evaluate(x, tx_mbps=np.array([row[0] * f for f in factors]))
    blind_lat = cm.evaluate(np.array([row]), tx_mbps=np.array([row[0] * lower])).latency_ms[0]
    slo, local = (np.inf if cm.slo is None else cm.slo), cm.P
    ok_blind = (blind_lat <= slo) | (np.arange(local + 1) == local)
    blind = c.objective.mean(axis=0)[ok_blind].min()
    ok = (c.latency_ms <= slo) | (np.arange(local + 1) == local)[None, :]
    informed = np.where(ok, c.objective, np.inf).min(axis=1).mean()
    return max(0.0, blind - informed)


@pytest.mark.parametrize("slo_ms", [300.0, 70.0, 40.0, None])
def test_the_value_of_knowing_the_link_matches_a_brute_force_computation(tiny_bundle, slo_ms):
    # tight SLOs make eligibility bind (70 ms: slow transfers miss it; 40 ms: the local run
    # itself misses it, and stays eligible only when deciding blind)
    cost = CostModel(synthetic_profile(Bundle.load(tiny_bundle)), Objective(slo_ms=slo_ms))
    rng = random.Random(3)
    positive = 0
    for _ in range(300):
        b = 10 ** rng.uniform(-1, 3)
        row = [b, rng.uniform(1, 80), rng.random(), rng.random(), rng.uniform(0, 600),
               rng.uniform(0, 600), rng.uniform(1, 100)]  # fmt: skip
        k = rng.randint(1, 9)
        factors = sorted(math.exp(rng.gauss(0.0, 1.5)) for _ in range(k))
        lower = factors[0] * rng.uniform(0.2, 1.0)
        got = link_information_value(cost, row, factors, lower)
        assert got == pytest.approx(_brute_voi(cost, row, factors, lower), rel=1e-9, abs=1e-12)
        positive += got > 1e-9
    assert positive >= 20  # the draws reach contexts where knowing the link pays


def test_a_certain_link_has_no_value_to_learn(cost):
    row = (20.0, 10.0, 0.2, 0.1, 300.0, 100.0, 80.0)
    assert link_information_value(cost, row, [1.0, 1.0, 1.0], 1.0) == 0.0


def test_the_value_is_the_gap_between_deciding_blind_and_informed(cost):
    """Two equally likely rates, one where offloading wins and one where local does: the
    value is half the loss of the blind choice at the rate where it is wrong."""
    row = (50.0, 5.0, 0.0, 0.0, 400.0, 50.0, 80.0)
    lo, hi = 0.001, 20.0  # 0.05 and 1000 Mbit/s
    lat_lo, j_lo = cost.row(row, 50.0 * lo)
    lat_hi, j_hi = cost.row(row, 50.0 * hi)
    P = cost.P
    best_hi = min(j_hi[p] for p in range(P + 1) if lat_hi[p] <= cost.slo or p == P)
    best_lo = min(j_lo[p] for p in range(P + 1) if lat_lo[p] <= cost.slo or p == P)
    assert best_hi < j_hi[P] and best_lo == j_lo[P]  # the rates disagree: offload vs local
    # blind: eligible at the pessimistic rate (local, and the fallbacks within the SLO)
    blind = min(0.5 * (j_lo[p] + j_hi[p]) for p in range(P + 1) if lat_lo[p] <= cost.slo or p == P)
    assert blind > 0.5 * (best_lo + best_hi)
    expect = blind - 0.5 * (best_lo + best_hi)
    assert link_information_value(cost, row, [lo, hi], lo) == pytest.approx(expect)


def test_empty_factors_are_refused(cost):
    with pytest.raises(ValueError, match="at least one"):
        link_information_value(cost, (1.0,) * 7, [], 1.0)


@pytest.mark.parametrize("battery", [80.0, 20.0, 5.0])
def test_the_device_energy_weight_prices_the_local_run_as_the_cost_model_does(tiny_bundle, battery):
    cm = CostModel(
        synthetic_profile(Bundle.load(tiny_bundle)), Objective(w_latency=0.3, w_battery=0.5)
    )
    row = (20.0, 10.0, 0.4, 0.1, 321.0, 100.0, battery)
    lat, j = cm.row(row, 20.0)
    P = cm.P
    e_local_j = cm.p_act * lat[P] * 1e-6  # mW * ms = µJ
    assert cm.device_energy_weight(row) * e_local_j + cm.wt * lat[P] == pytest.approx(j[P])


def test_the_probe_costs_its_energy_and_time(tiny_bundle):
    cm = CostModel(synthetic_profile(Bundle.load(tiny_bundle)), Objective(w_latency=0.3))
    row = (8.0, 20.0, 0.0, 0.0, 250.0, 100.0, 90.0)
    t_ms = 8e-3 * 32768 / 8.0 + 20.0
    e_j = (cm.p_idle + cm.objective.radio_power_mw(8.0)) * t_ms * 1e-6
    want = cm.device_energy_weight(row) * e_j + cm.wt * t_ms
    assert probe_cost_j(cm, row, 32768) == pytest.approx(want)
    # a slow estimate and a sub-millisecond RTT are priced as they are (no floor at 1)
    slow = (0.5, 0.4, 0.0, 0.0, 250.0, 100.0, 90.0)
    t_ms = 8e-3 * 32768 / 0.5 + 0.4
    e_j = (cm.p_idle + cm.objective.radio_power_mw(0.5)) * t_ms * 1e-6
    want = cm.device_energy_weight(slow) * e_j + cm.wt * t_ms
    assert probe_cost_j(cm, slow, 32768) == pytest.approx(want)
    # a timeout bounds the probe's time
    capped = probe_cost_j(cm, row, 32768, timeout_s=0.01)
    e10 = (cm.p_idle + cm.objective.radio_power_mw(8.0)) * 10.0 * 1e-6
    assert capped == pytest.approx(cm.device_energy_weight(row) * e10 + cm.wt * 10.0)


def test_stale_factors_are_the_history_quantiles_over_the_estimate():
    hist = [3.0, 30.0, 12.0, 7.0, 20.0]
    factors, lower = stale_factors(hist, 10.0, 4)
    want = np.quantile(hist, [(i + 0.5) / 4 for i in range(4)]) / 10.0
    assert factors == pytest.approx(list(want)) and lower == pytest.approx(0.3)
    assert stale_factors([5.0, 5.0], 5.0, 1) == ([1.0], 1.0)
    assert stale_factors([0.2, 0.6], 0.4, 1) == (pytest.approx([1.0]), pytest.approx(0.5))
    for bad in (([5.0], 5.0, 3), ([1.0, 2.0], 0.0, 3), ([1.0, 2.0], 1.0, 0)):
        with pytest.raises(ValueError):
            stale_factors(*bad)


def test_a_probe_is_worth_it_when_the_informed_inferences_gain_more_than_it_costs(cost):
    assert ProbeValue(0.02, 0.1, 6.0).worth and not ProbeValue(0.02, 0.1, 5.0).worth
    assert not ProbeValue(0.0, 0.0, 1.0).worth  # nothing to learn: never, even if free
    row = (50.0, 5.0, 0.0, 0.0, 400.0, 50.0, 80.0)
    v = probe_value(cost, row, [0.001, 20.0], 0.001, 32768, informs=0.2)
    assert v.informs == 1.0  # at least the inference it precedes
    assert probe_value(cost, row, [0.001, 20.0], 0.001, 32768).informs == 1.0  # the default
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.value_j = 1.0  # type: ignore[misc]
    assert v.to_record() == {
        "value_j": v.value_j, "cost_j": v.cost_j, "informs": 1.0, "worth": v.worth,
    }  # fmt: skip


class _ScriptedCost:
    """Latency and J per rate, as CostModel.row returns them (two partitions, P = 1)."""

    slo, P = 100.0, 1

    def row(self, ctx, bandwidth_mbps):
        if bandwidth_mbps >= 10.0:  # offloading: exactly at the SLO, cheaper than local
            return [100.0, 50.0], [1.0, 3.0]
        return [200.0, 50.0], [9.0, 3.0]  # too slow: over the SLO and dearer


def test_a_latency_exactly_at_the_slo_meets_it():
    """The slack deadline rule makes a fallback end exactly at the SLO, so "meets" is <=, both
    when deciding blind (at the pessimistic rate) and when informed."""
    row = (10.0, 5.0, 0.0, 0.0, 300.0, 100.0, 80.0)
    # informed: at rate 10 partition 0 (J 1) is eligible, at rate 1 only local (J 3)
    # blind at the pessimistic rate 10: partition 0 eligible, mean J (1 + 9) / 2 = 5 > local 3
    assert link_information_value(_ScriptedCost(), row, [1.0, 0.1], 1.0) == pytest.approx(1.0)
    # blind with both rates good: partition 0 at exactly the SLO is eligible, J 1: no value
    assert link_information_value(_ScriptedCost(), row, [1.0, 1.0], 1.0) == 0.0
