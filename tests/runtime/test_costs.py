"""Cost model: hand-checked numbers from docs/METHOD.md §3-4, deadline fallback, outages, the oracle's
SLO rule, and agreement of the pure-Python row path with the vectorised one."""

from __future__ import annotations

import numpy as np
import pytest
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.decision.profile import Profile

from tests.support.cost_fixtures import random_contexts, resnet18_like_profile


def _small_profile(**kw: object) -> Profile:
    base = dict(
        device_ms=[0.0, 10.0, 40.0],
        device_ms_p90=[0.0, 12.0, 45.0],
        server_ms=[20.0, 5.0, 0.0],
        wire_bytes=[100_000, 50_000, 0],
        return_bytes=[1000, 1000, 0],
        p_active_mw=5000.0,
        p_idle_mw=2000.0,
        radio="wifi",
        battery_wh=10.0,
        server_p_marginal_mw=10_000.0,
    )
    base.update(kw)
    return Profile(**base)  # type: ignore[arg-type]


# B=8 Mbit/s, RTT 10 ms, no load, I_d=400, I_s=100, battery 80 %
CTX = np.array([[8.0, 10.0, 0.0, 0.0, 400.0, 100.0, 80.0]])


def test_hand_checked_costs_and_objective() -> None:
    # The battery term at every charge level (not only below the protection threshold).
    ob = Objective(
        w_carbon=1.0, w_latency=0.5, w_battery=0.25, slo_ms=300.0, battery_protect_below_pct=None
    )
    cm = CostModel(_small_profile(), ob)
    c = cm.evaluate(CTX)
    p_radio = 283.17 * 8 + 132.86  # WiFi, below the 10 Mbit/s cap
    # p = 0: upload 8*100000 bit / 8 Mbit/s = 100 ms; return 8*1000/8e6 s = 1 ms; tail 20 ms.
    lat0 = 0 + 100 + 10 + 20 + 1
    ed0 = ((2000 + p_radio) * (100 + 10 + 1) + 2000 * 20) * 1e-6  # mW*ms = uJ
    es0 = 10_000 * 20 * 1e-6
    # p = 1: head 10 ms; upload 50 ms; tail 5 ms; return 1 ms.
    lat1 = 10 + 50 + 10 + 5 + 1
    ed1 = (5000 * 10 + (2000 + p_radio) * (50 + 10 + 1) + 2000 * 5) * 1e-6
    es1 = 10_000 * 5 * 1e-6
    # p = 2: all local.
    lat2, ed2, es2 = 40.0, 5000 * 40 * 1e-6, 0.0
    np.testing.assert_allclose(c.latency_ms[0], [lat0, lat1, lat2])
    np.testing.assert_allclose(c.device_energy_j[0], [ed0, ed1, ed2])
    np.testing.assert_allclose(c.server_energy_j[0], [es0, es1, es2])
    carbon = [(400 * e + 100 * s) / 3.6e6 for e, s in ((ed0, es0), (ed1, es1), (ed2, es2))]
    np.testing.assert_allclose(c.carbon_g[0], carbon)
    soc = [100 * e / (3600 * 10.0) for e in (ed0, ed1, ed2)]
    np.testing.assert_allclose(c.battery_pct[0], soc)
    assert not c.fallback.any()
    # References: local-only at the reference context (I_d = 300, u = 0).
    e_ref = 5000 * 40 * 1e-6
    c_ref, t_ref, s_ref = 300 * e_ref / 3.6e6, 40.0, 100 * e_ref / 36000
    ref = cm.reference()
    assert (ref.carbon_g, ref.latency_ms, ref.battery_pct) == pytest.approx((c_ref, t_ref, s_ref))
    j = [
        1.0 * cg / c_ref + 0.5 * t / t_ref + 0.25 * s * 1.0 / s_ref
        for cg, t, s in zip(carbon, (lat0, lat1, lat2), soc, strict=True)
    ]
    np.testing.assert_allclose(c.objective[0], j)
    assert cm.oracle(c)[0] == int(np.argmin(j))


def test_battery_shaping_raises_the_battery_term() -> None:
    ob = Objective(
        w_carbon=0.0, w_latency=0.0, w_battery=1.0, battery_low_pct=30, battery_k=2,
        battery_protect_below_pct=None,
    )  # fmt: skip
    cm = CostModel(_small_profile(), ob)
    full = cm.evaluate(CTX).objective[0]
    assert (full > 0).all()
    low = CTX.copy()
    low[0, 6] = 15.0  # h = 1 + (30 - 15)/30 * 2 = 2
    np.testing.assert_allclose(cm.evaluate(low).objective[0], 2.0 * full)


def test_deadline_fallback_wastes_radio_time_and_completes_locally() -> None:
    ob = Objective(slo_ms=300.0, early_abandon_ms=None)  # deadline = SLO = 300 ms, waited for
    cm = CostModel(_small_profile(), ob)
    x = CTX.copy()
    x[0, 0] = 0.5  # p = 0 upload alone would take 1.6 s
    c = cm.evaluate(x)
    assert c.fallback[0].tolist() == [True, True, False]
    p_radio = 283.17 * 0.5 + 132.86
    # p = 0: wasted 300 ms, then the whole model locally (40 ms).
    assert c.latency_ms[0, 0] == pytest.approx(300 + 40)
    assert c.device_energy_j[0, 0] == pytest.approx((5000 * 40 + (2000 + p_radio) * 300) * 1e-6)
    assert c.server_energy_j[0, 0] == 0.0  # the upload never arrived
    # p = 1: head 10 ms, 300 ms wasted, remaining 30 ms locally.
    assert c.latency_ms[0, 1] == pytest.approx(10 + 300 + 30)
    assert c.device_energy_j[0, 1] == pytest.approx((5000 * 40 + (2000 + p_radio) * 300) * 1e-6)
    # Both exceed the SLO, so the oracle keeps the feasible local partition.
    assert cm.oracle(c)[0] == 2


def test_fallback_when_only_the_server_makes_it_late() -> None:
    # Upload arrives in time but the slow tail pushes the round past the deadline: the server
    # still ran (and pays) its tail, the device completes locally.
    cm = CostModel(_small_profile(server_ms=[400.0, 5.0, 0.0]), Objective(slo_ms=300.0))
    c = cm.evaluate(CTX)
    assert c.fallback[0, 0] and not c.fallback[0, 1]
    assert c.server_energy_j[0, 0] == pytest.approx(10_000 * 400 * 1e-6)
    # Early abandonment (on by default) cannot see a slow tail in the bytes sent: the device
    # waits for the answer until the deadline, then completes locally (40 ms).
    assert cm.objective.early_abandon_ms == 50.0
    assert c.latency_ms[0, 0] == pytest.approx(300 + 40)


def test_outage_always_falls_back_with_finite_costs() -> None:
    cm = CostModel(resnet18_like_profile(), Objective(slo_ms=None))
    x = random_contexts(50, seed=3)
    x[:, 0] = 0.0
    c = cm.evaluate(x)
    assert c.fallback[:, :-1].all() and not c.fallback[:, -1].any()
    for name in ("latency_ms", "device_energy_j", "carbon_g", "objective"):
        assert np.isfinite(getattr(c, name)).all()
    g = cm.profile.device_slowdown(x[:, 2])
    # Nothing is sent, so the default early abandonment gives up after 50 ms (of the 1000 ms
    # deadline without an SLO): latency = head + 50 + rest = 50 + tau_d(P)*g.
    np.testing.assert_allclose(c.latency_ms[:, 0], 50 + cm.profile.device_ms[-1] * g)
    waiting = CostModel(cm.profile, Objective(slo_ms=None, early_abandon_ms=None)).evaluate(x)
    np.testing.assert_allclose(waiting.latency_ms[:, 0], 1000 + cm.profile.device_ms[-1] * g)
    assert (cm.oracle(c) == cm.P).all()


def test_early_abandonment_cuts_the_waste() -> None:
    late = CTX.copy()
    late[0, 0] = 0.5
    base = CostModel(_small_profile(), Objective(slo_ms=300.0, early_abandon_ms=None)).evaluate(
        late
    )
    early = CostModel(_small_profile(), Objective(slo_ms=300.0, early_abandon_ms=50.0)).evaluate(
        late
    )
    assert early.latency_ms[0, 0] == pytest.approx(50 + 40)
    assert base.latency_ms[0, 0] - early.latency_ms[0, 0] == pytest.approx(250)
    assert early.device_energy_j[0, 0] < base.device_energy_j[0, 0]


def test_slack_deadline_finishes_a_fallback_at_the_slo() -> None:
    ob = Objective(slo_ms=300.0, deadline_rule="slack", early_abandon_ms=None)
    prof = _small_profile(device_load_u=[0.0, 1.0], device_slowdown_g=[1.0, 2.0])
    cm = CostModel(prof, ob)
    x = CTX.copy()
    x[0, 0] = 0.5  # the uploads cannot finish
    x[0, 2] = 0.5  # g = 1.5: local takes 60 ms, so the slack is 300 - 60 = 240 ms
    c = cm.evaluate(x)
    assert c.fallback[0, :2].all()
    np.testing.assert_allclose(c.latency_ms[0, :2], [300.0, 300.0])  # 0 + 240 + 60; 15 + 240 + 45
    p_radio = 283.17 * 0.5 + 132.86
    assert c.device_energy_j[0, 0] == pytest.approx((5000 * 60 + (2000 + p_radio) * 240) * 1e-6)
    assert cm.feasible(c)[0].all()  # a fallback now meets the SLO
    # A transfer that fits the fixed deadline (300) but not the slack (240) falls back too.
    y = CTX.copy()
    y[0, 0] = 3.0  # p = 0: upload 266.7 ms + 10 + 20 + 2.7 > 240
    assert cm.evaluate(y).fallback[0, 0]
    assert not CostModel(prof, Objective(slo_ms=400.0)).evaluate(y).fallback[0, 0]
    # When local alone misses the SLO, the slack is gone and the fixed deadline applies.
    z = x.copy()
    z[0, 2] = 1.0
    tight = CostModel(_small_profile(device_ms=[0, 100, 400], device_load_u=[0.0, 1.0],
                                     device_slowdown_g=[1.0, 2.0]), ob)  # fmt: skip
    assert tight.evaluate(z).latency_ms[0, 0] == pytest.approx(300 + 800)


def test_tx_mbps_overrides_the_context_bandwidth() -> None:
    cm = CostModel(resnet18_like_profile(), Objective())
    x = random_contexts(200, seed=1)
    tx = np.random.default_rng(2).exponential(20.0, 200)
    x2 = x.copy()
    x2[:, 0] = tx
    a, b = cm.evaluate(x, tx_mbps=tx), cm.evaluate(x2)
    np.testing.assert_array_equal(a.objective, b.objective)
    np.testing.assert_array_equal(a.latency_ms, b.latency_ms)


def test_radio_cap_and_network_energy() -> None:
    fast = CTX.copy()
    fast[0, 0] = 80.0
    cm = CostModel(_small_profile(), Objective(e_net_j_per_bit=1e-7))
    c = cm.evaluate(fast)
    up, ret = 8 * 100_000 / 80e3, 8 * 1000 / 80e3  # ms
    p_radio = 283.17 * 10 + 132.86  # capped at 10 Mbit/s
    ed0 = ((2000 + p_radio) * (up + 10 + ret) + 2000 * 20) * 1e-6
    assert c.device_energy_j[0, 0] == pytest.approx(ed0)
    assert c.network_energy_j[0, 0] == pytest.approx(1e-7 * 8 * (100_000 + 1000))
    assert c.network_energy_j[0, 2] == 0.0
    es0 = 10_000 * 20 * 1e-6
    assert c.carbon_g[0, 0] == pytest.approx((400 * ed0 + 100 * (es0 + 8.08e-2)) / 3.6e6)


def test_fixed_device_carbon_and_server_power_override() -> None:
    ob = Objective(device_carbon="fixed", device_fixed_gco2_per_kwh=50.0, server_marginal_mw=1000.0)
    cm = CostModel(_small_profile(), ob)
    c = cm.evaluate(CTX)
    assert c.carbon_g[0, 2] == pytest.approx(50 * 5000 * 40 * 1e-6 / 3.6e6)
    assert c.server_energy_j[0, 0] == pytest.approx(1000 * 20 * 1e-6)


def test_oracle_respects_the_slo_and_falls_back_to_the_fastest() -> None:
    # Carbon-only objective: offloading (clean server) is cheapest but slower than the SLO.
    prof = _small_profile(
        device_ms=[0.0, 10.0, 150.0], server_ms=[150.0, 140.0, 0.0], p_active_mw=20_000.0
    )
    cm = CostModel(prof, Objective(w_latency=0.0, w_battery=0.0, slo_ms=160.0, deadline_ms=1000.0))
    c = cm.evaluate(CTX)
    assert int(np.argmin(c.objective[0])) != 2
    assert cm.oracle(c)[0] == 2  # the only feasible one
    cm2 = CostModel(prof, Objective(slo_ms=5.0, deadline_ms=1000.0))
    c2 = cm2.evaluate(CTX)
    assert not cm2.feasible(c2).any()
    assert cm2.oracle(c2)[0] == int(np.argmin(c2.latency_ms[0]))


def test_load_slowdowns_are_interpolated() -> None:
    prof = _small_profile(device_load_u=[0.0, 1.0], device_slowdown_g=[1.0, 3.0],
                          server_load_v=[0.0, 1.0], server_slowdown_g=[1.0, 2.0])  # fmt: skip
    cm = CostModel(prof, Objective())
    x = CTX.copy()
    x[0, 2], x[0, 3] = 0.5, 0.5
    c = cm.evaluate(x)
    assert c.latency_ms[0, 2] == pytest.approx(40 * 2.0)
    assert c.latency_ms[0, 1] == pytest.approx(10 * 2 + 50 + 10 + 5 * 1.5 + 1)


@pytest.mark.parametrize(
    "objective",
    [
        Objective(),
        Objective(slo_ms=None, radio="lte", e_net_j_per_bit=5e-8, battery_k=4.0),
        Objective(early_abandon_ms=40.0, device_carbon="fixed", device_fixed_gco2_per_kwh=80.0),
        Objective(radio="3g", w_latency=1.0, server_marginal_mw=5000.0, radio_cap_mbps=50.0),
        Objective(slo_ms=150.0, deadline_rule="slack"),
        Objective(slo_ms=200.0, deadline_rule="slack", early_abandon_ms=60.0),
    ],
)
def test_row_path_agrees_with_vectorised(objective: Objective) -> None:
    cm = CostModel(resnet18_like_profile(), objective)
    x = random_contexts(3000, seed=7)
    x[::97, 0] = 0.0
    x[::89, 2] = 1.7  # outside the measured load range: held flat in both paths
    bw = np.random.default_rng(8).exponential(25.0, len(x))
    c = cm.evaluate(x, tx_mbps=bw)
    for i in range(len(x)):
        lat, j = cm.row(tuple(float(v) for v in x[i]), float(bw[i]))
        np.testing.assert_allclose(lat, c.latency_ms[i], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(j, c.objective[i], rtol=1e-12, atol=1e-12)
    # row_objective is J of the row path, equal to the vectorised J at that bandwidth
    ref = cm.evaluate(x[:1], tx_mbps=np.array([3.0])).objective[0]
    np.testing.assert_allclose(cm.row_objective(tuple(x[0]), 3.0), ref, rtol=1e-12)


def test_costs_take_rows() -> None:
    cm = CostModel(resnet18_like_profile(), Objective())
    c = cm.evaluate(random_contexts(10))
    sub = c.take(np.array([2, 5]))
    np.testing.assert_array_equal(sub.objective, c.objective[[2, 5]])
    assert len(sub) == 2


@pytest.mark.parametrize(
    "objective",
    [
        Objective(),
        Objective(slo_ms=None, radio="lte", e_net_j_per_bit=5e-8, battery_k=4.0),
        Objective(early_abandon_ms=40.0, device_carbon="fixed", device_fixed_gco2_per_kwh=80.0),
        Objective(slo_ms=200.0, deadline_rule="slack", early_abandon_ms=60.0),
    ],
)
def test_row_subset_equals_the_full_rows_entries(objective: Objective) -> None:
    """Mode A prices only its set: each subset entry must be the very float of the full row."""
    cm = CostModel(resnet18_like_profile(), objective)
    x = random_contexts(1500, seed=11)
    x[::53, 2] = 1.6  # loads outside the measured range, held flat
    x[::59, 3] = -0.1
    rng = np.random.default_rng(12)
    bw = x[:, 0] * rng.choice([1.0, 0.5, 0.9], len(x))
    n_parts = cm.P + 1
    for i in range(len(x)):
        ctx = tuple(float(v) for v in x[i])
        lat, j = cm.row(ctx, float(bw[i]))
        sub = [int(p) for p in rng.permutation(n_parts)[: rng.integers(1, n_parts + 1)]]
        lat_s, j_s = cm.row(ctx, float(bw[i]), sub)
        assert lat_s == [lat[p] for p in sub]  # exact, not approximate
        assert j_s == [j[p] for p in sub]
        assert cm.row_objective(ctx, float(bw[i]), sub) == j_s
    assert cm.row(ctx, 5.0, []) == ([], [])


def test_row_load_curves_are_the_textbook_interpolation_to_the_bit() -> None:
    """row() reads its load curves from per-segment constants: g(u) must be the very float
    of g[i-1] + (g[i] - g[i-1]) * (u - u[i-1]) / (u[i] - u[i-1]), flat outside the curve."""
    pr = resnet18_like_profile()
    cm = CostModel(pr, Objective())
    us, gs = list(pr.device_load_u), list(pr.device_slowdown_g)
    tau = float(pr.device_ms[-1])
    rng = np.random.default_rng(4)
    for u in [*us, -0.3, 1.7, *rng.uniform(0.0, 1.0, 200).tolist()]:
        if u <= us[0]:
            g = gs[0]
        elif u >= us[-1]:
            g = gs[-1]
        else:
            i = next(k for k, x in enumerate(us) if x > u)
            g = gs[i - 1] + (gs[i] - gs[i - 1]) * (u - us[i - 1]) / (us[i] - us[i - 1])
        lat, _ = cm.row((10.0, 20.0, u, 0.5, 300.0, 300.0, 80.0), 10.0, [cm.P])
        assert lat == [tau * g], u


def test_row_subset_refuses_partitions_outside_the_model() -> None:
    cm = CostModel(resnet18_like_profile(), Objective())
    ctx = tuple(float(v) for v in random_contexts(1)[0])
    for bad in ([cm.P + 1], [0, -1]):
        with pytest.raises(ValueError, match="outside"):
            cm.row(ctx, 10.0, bad)
