"""Mode A's expected J (CostModel.row_expected) at every branch of its arithmetic, and the
battery term at its protection threshold in all three cost paths (docs/METHOD.md §4, §7).

row_expected is documented as the same floats as row() at each rate (== , not approx):
here on contexts chosen to reach every branch, which random contexts miss: loads below,
at, inside and above both load curves (three-point curves, so the first, second and last
points differ), the battery exactly at the protection threshold and at b_low, negative
and zero rates, rates at and beyond the radio's cap, the slack deadline rule with and
without early abandonment, a fixed device carbon intensity, and no SLO.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.decision.profile import Profile

from tests.support.cost_fixtures import resnet18_like_profile

U_CURVE = ([0.2, 0.5, 1.0], [1.1, 1.4, 2.1])
V_CURVE = ([0.1, 0.6, 1.0], [1.05, 1.3, 1.6])


def _profile() -> Profile:
    """The shared ResNet-18-like profile with slower tails and load curves that start above 0."""
    base = resnet18_like_profile(10.0)
    return replace(
        base,
        server_ms=base.server_ms * 10.0,
        device_load_u=U_CURVE[0],
        device_slowdown_g=U_CURVE[1],
        server_load_v=V_CURVE[0],
        server_slowdown_g=V_CURVE[1],
    )


EVERY_TERM = dict(w_latency=0.2, w_battery=0.3, e_net_j_per_bit=2e-7)
OBJECTIVES = {
    "default": Objective(),
    "every_term": Objective(slo_ms=300.0, battery_protect_below_pct=60.0, **EVERY_TERM),
    "wait": Objective(slo_ms=300.0, early_abandon_ms=None, **EVERY_TERM),
    "slack": Objective(slo_ms=250.0, deadline_rule="slack", **EVERY_TERM),
    "slack_wait": Objective(slo_ms=250.0, deadline_rule="slack", early_abandon_ms=None, **EVERY_TERM),
    "slack_early_short": Objective(
        slo_ms=400.0, deadline_rule="slack", early_abandon_ms=20.0, **EVERY_TERM
    ),
    "fixed_device_carbon": Objective(
        slo_ms=300.0, device_carbon="fixed", device_fixed_gco2_per_kwh=123.0, **EVERY_TERM
    ),
    "no_slo": Objective(slo_ms=None, battery_protect_below_pct=None, **EVERY_TERM),
}  # fmt: skip

LOADS_U = [-0.5, 0.0, 0.2, 0.35, 0.5, 0.75, 1.0, 1.4]  # below, at, inside, above the curve
LOADS_V = [-0.5, 0.1, 0.3, 0.6, 0.9, 1.0, 1.7]
BATTERY = [0.0, 12.0, 30.0, 45.0, 60.0, 100.0]  # 30 = b_low (and the default threshold), 60
RATE_SETS = [
    [20.0],
    [0.0, 8.0, 60.0],  # an outage among the rates
    [-3.0, 0.5, 25.0, 200.0, 1000.0],  # negative: an outage; above the radio's cap
    [2.0, 2.0, 4.0, 900.0],
]


def _contexts() -> list[tuple[float, ...]]:
    rng = np.random.default_rng(5)
    out = []
    for u, v, b in itertools.product(LOADS_U, LOADS_V, BATTERY):
        rtt = float(rng.choice([2.0, 30.0, 120.0]))
        out.append((-1.0, rtt, u, v, float(rng.uniform(0, 700)), float(rng.uniform(0, 700)), b))
    return out


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_row_expected_is_row_at_each_rate_on_every_branch(name: str) -> None:
    cm = CostModel(_profile(), OBJECTIVES[name])
    for i, ctx in enumerate(_contexts()):
        rates = RATE_SETS[i % len(RATE_SETS)]
        lat_rate = [3.0, -1.0, 0.0, 40.0, 1000.0][i % 5]
        parts = None if i % 3 else [6, 0, 3]
        lat, j = cm.row_expected(ctx, rates, lat_rate, parts)
        want_lat = cm.row(ctx, lat_rate, parts)[0]
        js = [cm.row(ctx, r, parts)[1] for r in rates]
        want_j = [sum(col) / len(rates) for col in zip(*js, strict=True)]
        assert lat == want_lat and j == want_j, (name, ctx, rates, lat_rate)


def test_row_prices_the_load_curves_by_np_interp() -> None:
    """g_d(u) and g_s(v): linear inside, flat outside, exact at the points: the local
    partition's latency is tau_d(P)·g_d(u) and partition 0's server share moves with g_s."""
    cm = CostModel(_profile(), OBJECTIVES["no_slo"])
    for u, v in itertools.product(LOADS_U, LOADS_V):
        ctx = (0.0, 10.0, u, v, 100.0, 100.0, 80.0)
        gd = float(np.interp(u, *U_CURVE))
        gs = float(np.interp(v, *V_CURVE))
        for lat in (cm.row(ctx, 100.0)[0], cm.row_expected(ctx, [100.0], 100.0)[0]):
            assert lat[6] == pytest.approx(82.0 * gd, rel=1e-14), (u, v)
            # p = 0 at 100 Mbit/s: upload + RTT + tail on the server + return
            want = 8e-3 * 150528 / 100.0 + 10.0 + 8.2 * 5.0 * gs + 8e-3 * 4000 / 100.0
            assert lat[0] == pytest.approx(want, rel=1e-14), (u, v)


@pytest.mark.parametrize("protect", [30.0, 60.0])
def test_battery_term_is_off_exactly_at_the_protection_threshold(protect: float) -> None:
    """h(b) = 0 at b == battery_protect_below_pct in evaluate, row and row_expected; just
    below it the battery term counts (Objective.battery_shape is the definition)."""
    ob = Objective(slo_ms=300.0, battery_protect_below_pct=protect, **EVERY_TERM)
    cm = CostModel(_profile(), ob)
    below = math.nextafter(protect, 0.0)
    b = np.array([0.0, 12.0, 30.0, below, protect, 80.0, 100.0])
    want = [ob.battery_shape(float(v)) for v in b]
    assert want[4] == 0.0 and want[3] >= 1.0
    assert cm.battery_shape(b).tolist() == want
    x = np.array([(20.0, 10.0, 0.3, 0.3, 300.0, 200.0, float(v)) for v in b])
    costs = cm.evaluate(x)
    ref = cm.reference()
    j_no_battery = ob.w_carbon * costs.carbon_g / ref.carbon_g + ob.w_latency * (
        costs.latency_ms / ref.latency_ms
    )
    np.testing.assert_allclose(costs.objective[4], j_no_battery[4], rtol=1e-12)
    assert (costs.objective[3] > j_no_battery[3] * (1 + 1e-9)).all()
    for k in (3, 4):
        ctx = tuple(float(v) for v in x[k])
        _, j_row = cm.row(ctx, 20.0)
        np.testing.assert_allclose(j_row, costs.objective[k], rtol=1e-12)
        _, j_exp = cm.row_expected(ctx, [20.0], 20.0)
        assert j_exp == j_row


def test_bad_partitions_are_named_exactly() -> None:
    cm = CostModel(_profile(), OBJECTIVES["every_term"])
    ctx = (20.0, 10.0, 0.3, 0.3, 300.0, 200.0, 80.0)
    for call in (
        lambda parts: cm.row(ctx, 20.0, parts),
        lambda parts: cm.row_expected(ctx, [20.0], 20.0, parts),
    ):
        with pytest.raises(ValueError, match=r"partitions \[9, -1\] are outside 0\.\.6"):
            call([0, 9, 6, -1])


def test_cost_model_of_a_bundle_reads_its_objective_or_refuses(tmp_path) -> None:
    """The bundle's own objective section (not the default); without one a BundleError
    unless objective_required=False, which then takes the default objective; an invalid
    section is a ConfigError naming its file."""
    import json

    from carboncp.runtime.artifacts.bundle import Bundle, register_file, save_manifest
    from carboncp.runtime.decision.costs import cost_model_of
    from carboncp.runtime.errors import BundleError, ConfigError

    from tests.support.decision import make_bundle

    ob = OBJECTIVES["slack"]
    root = make_bundle(tmp_path / "b", _profile(), ob)
    cm = cost_model_of(Bundle.load(root))
    assert cm.objective == ob and cm.slo == 250.0 and cm.slack
    m = json.loads((root / "manifest.json").read_text())
    del m["sections"]["objective"]
    save_manifest(root, m)
    b = Bundle.load(root)
    with pytest.raises(BundleError, match="no 'objective' section"):
        cost_model_of(b)
    assert cost_model_of(b, objective_required=False).objective == Objective()
    bad = ob.to_dict()
    bad["slo_ms"] = -1.0
    (root / "objective.json").write_text(json.dumps(bad))
    m["sections"]["objective"] = "objective.json"
    m["files"].pop("objective.json", None)
    register_file(m, root, "objective.json")
    save_manifest(root, m)
    with pytest.raises(ConfigError, match=r"objective\.json"):
        cost_model_of(Bundle.load(root))


def test_an_outage_falls_back_even_for_a_partition_that_sends_nothing() -> None:
    """A profile may give a split 0 bytes each way (>= 0 is valid). At B = 0 it still
    falls back in both paths (no 0/0 = NaN round trip that compares as 'in time')."""
    prof = Profile(
        device_ms=[0.0, 10.0, 40.0], device_ms_p90=[0.0, 12.0, 45.0], server_ms=[20.0, 5.0, 0.0],
        wire_bytes=[0, 50_000, 0], return_bytes=[0, 1000, 0], p_active_mw=5000.0,
        p_idle_mw=2000.0, radio="wifi", battery_wh=10.0, server_p_marginal_mw=10_000.0,
    )  # fmt: skip
    cm = CostModel(prof, Objective())
    ctx = (0.0, 10.0, 0.0, 0.0, 300.0, 300.0, 80.0)
    c = cm.evaluate(np.array([ctx]))
    assert c.fallback[0].tolist() == [True, True, False]
    assert c.latency_ms[0].tolist() == [0.0 + 50.0 + 40.0, 10.0 + 50.0 + 30.0, 40.0]
    assert np.isfinite(c.objective).all()
    lat, j = cm.row(ctx, 0.0)
    assert lat == c.latency_ms[0].tolist()
    np.testing.assert_allclose(j, c.objective[0], rtol=1e-12)
