"""The deadline and early abandonment AT their boundaries, in both cost paths (CostModel.evaluate
and CostModel.row) against hand-computed numbers (docs/METHOD.md §3.1, docs/COSTS.md).

The agreement tests between the two paths catch a bug made in one of them only; these pin
each path to the arithmetic: the RTT counts in the "can the upload still make it" rule, the
slack rule abandons early too, and every comparison sits on the right side of its boundary.

Profile (all numbers exact in binary): partition 0 sends 100 kB (upload 800/B ms) and gets
1 kB back (8/B ms); its tail takes 20 ms on the server; the whole model takes 40 ms on the
device (5 W active, 2 W idle); B = 4 Mbit/s, so the upload takes 200 ms, the return 2 ms.
"""

from __future__ import annotations

import numpy as np
import pytest
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.decision.profile import Profile

B = 4.0
P_RADIO = 283.17 * B + 132.86  # WiFi uplink power at 4 Mbit/s (mW), below the cap
I_D, I_S, BATTERY = 400.0, 100.0, 80.0


def _objective(**kw: object) -> Objective:
    """Latency and battery terms on at every charge level (w = 1, 0.2, 0.2, no battery
    threshold), so that the hand computations check every term's arithmetic."""
    base: dict[str, object] = {
        "w_latency": 0.2,
        "w_battery": 0.2,
        "battery_protect_below_pct": None,
    }
    return Objective(**{**base, **kw})  # type: ignore[arg-type]


def _profile(wire0: float = 100_000.0) -> Profile:
    return Profile(
        device_ms=[0.0, 10.0, 40.0],
        device_ms_p90=[0.0, 12.0, 45.0],
        server_ms=[20.0, 5.0, 0.0],
        wire_bytes=[wire0, 50_000, 0],
        return_bytes=[1000, 1000, 0],
        p_active_mw=5000.0,
        p_idle_mw=2000.0,
        radio="wifi",
        battery_wh=10.0,
        server_p_marginal_mw=10_000.0,
        device_load_u=[0.0, 1.0],
        device_slowdown_g=[1.0, 2.0],
    )


def _j(cm: CostModel, latency: float, e_d_uj: float, e_s_j: float) -> float:
    """J by docs/METHOD.md §4 from hand-computed latency and energies (battery above b_low)."""
    ref = cm.reference()
    e_d = e_d_uj * 1e-6
    carbon = (I_D * e_d + I_S * e_s_j) / 3.6e6
    soc = 100.0 * e_d / (3600.0 * 10.0)
    ob = cm.objective
    return (
        ob.w_carbon * carbon / ref.carbon_g
        + ob.w_latency * latency / ref.latency_ms
        + ob.w_battery * soc / ref.battery_pct
    )


def _check_p0(cm: CostModel, rtt: float, latency: float, fallback: bool, e_d_uj: float,
              e_s_j: float, load: float = 0.0) -> None:  # fmt: skip
    """Partition 0's latency, fallback, energies and J in both paths equal the hand values."""
    ctx = (B, rtt, load, 0.0, I_D, I_S, BATTERY)
    c = cm.evaluate(np.array([ctx]))
    assert c.latency_ms[0, 0] == pytest.approx(latency, rel=1e-12), "evaluate latency"
    assert bool(c.fallback[0, 0]) is fallback
    assert c.device_energy_j[0, 0] == pytest.approx(e_d_uj * 1e-6, rel=1e-12)
    assert c.server_energy_j[0, 0] == pytest.approx(e_s_j, rel=1e-12, abs=1e-15)
    j = _j(cm, latency, e_d_uj, e_s_j)
    assert c.objective[0, 0] == pytest.approx(j, rel=1e-9)
    lat, obj = cm.row(ctx, B, [0])
    assert lat[0] == pytest.approx(latency, rel=1e-12), "row latency"
    assert obj[0] == pytest.approx(j, rel=1e-9), "row J"
    # mode A's expected J: the same floats as row at the same rate (one rate, or two equal)
    for rates in ([B], [B, B]):
        assert cm.row_expected(ctx, rates, B, [0]) == (lat, obj), "row_expected"


OK_E_S = 10_000 * 20 * 1e-6  # the server ran its 20 ms tail at 10 W


def _fallback_e_d(wasted: float, local: float = 40.0) -> float:
    """uJ: the whole model locally plus the radio on (idle + radio) for the wasted time."""
    return 5000 * local + (2000 + P_RADIO) * wasted


# fixed deadline = SLO = 300 ms, early abandonment after 50 ms
@pytest.mark.parametrize(
    ("rtt", "latency", "fallback", "e_d_uj", "e_s_j"),
    [
        # up + RTT + tail + return = 200 + 78 + 20 + 2 = 300 = deadline: completes (not >)
        (78.0, 300.0, False, (2000 + P_RADIO) * 280 + 2000 * 20, OK_E_S),
        # 300.5 > 300: falls back; the upload (200 + 78.5) could arrive, so the device waits
        # for the deadline (300) and the server ran its tail
        (78.5, 340.0, True, _fallback_e_d(300.0), OK_E_S),
        # up + RTT = 300 = deadline exactly: still "can arrive" (not >), waited for
        (100.0, 340.0, True, _fallback_e_d(300.0), OK_E_S),
        # up + RTT = 300.5 > 300, with the upload alone (200) well inside the deadline: the
        # RTT makes it hopeless, so the device abandons after 50 ms; nothing reached the
        # server (200 + 50.25 > 50)
        (100.5, 90.0, True, _fallback_e_d(50.0), 0.0),
        (150.0, 90.0, True, _fallback_e_d(50.0), 0.0),
    ],
)
def test_fixed_deadline_and_early_abandonment_at_the_boundary(
    rtt, latency, fallback, e_d_uj, e_s_j
):
    cm = CostModel(_profile(), _objective(slo_ms=300.0, early_abandon_ms=50.0))
    _check_p0(cm, rtt, latency, fallback, e_d_uj, e_s_j)


# slack rule: deadline = SLO − local time = 300 − 40 = 260 ms, early abandonment after 50 ms
@pytest.mark.parametrize(
    ("rtt", "latency", "fallback", "e_d_uj", "e_s_j"),
    [
        (38.0, 260.0, False, (2000 + P_RADIO) * 240 + 2000 * 20, OK_E_S),  # 260 = deadline
        (40.0, 300.0, True, _fallback_e_d(260.0), OK_E_S),  # 262 > 260: ends at the SLO
        (60.0, 300.0, True, _fallback_e_d(260.0), OK_E_S),  # up + RTT = 260: waited for
        (60.5, 90.0, True, _fallback_e_d(50.0), 0.0),  # 260.5 > 260: abandoned early
    ],
)
def test_slack_deadline_and_early_abandonment_at_the_boundary(
    rtt, latency, fallback, e_d_uj, e_s_j
):
    ob = _objective(slo_ms=300.0, deadline_rule="slack", early_abandon_ms=50.0)
    _check_p0(CostModel(_profile(), ob), rtt, latency, fallback, e_d_uj, e_s_j)


@pytest.mark.parametrize("early", [280.0, None])
def test_slack_rule_under_load_and_an_early_limit_beyond_the_slack(early):
    # load u = 0.5: g = 1.5, local 60 ms, slack deadline 240; early (280) > slack, or off:
    # an upload that cannot make it wastes the slack, 240 ms, and the fallback ends at the SLO
    ob = _objective(slo_ms=300.0, deadline_rule="slack", early_abandon_ms=early)
    cm = CostModel(_profile(), ob)
    fb = _fallback_e_d(240.0, local=60.0)
    _check_p0(cm, 41.0, 300.0, True, fb, OK_E_S, load=0.5)  # arrived (220.5 <= 240)
    # the upload arrives exactly when the device gives up (200 + 80/2 = 240): it was served
    _check_p0(cm, 80.0, 300.0, True, fb, OK_E_S, load=0.5)
    _check_p0(cm, 80.5, 300.0, True, fb, 0.0, load=0.5)  # 240.25 > 240: never arrived


def test_no_slack_left_means_the_fixed_deadline():
    # SLO 40 ms = the local time exactly: the slack is 0, not a deadline of 0 ms; the fixed
    # deadline (1000 ms) applies and partition 0 completes (232 ms)
    ob = _objective(slo_ms=40.0, deadline_rule="slack", deadline_ms=1000.0, early_abandon_ms=None)
    cm = CostModel(_profile(), ob)
    _check_p0(cm, 10.0, 232.0, False, (2000 + P_RADIO) * 212 + 2000 * 20, OK_E_S)


def test_a_slack_under_a_millisecond_is_still_the_deadline():
    # SLO 40.5 ms: 0.5 ms of slack is a (hopeless) deadline, not "no slack": partition 0
    # falls back at once (nothing arrives: 200 + 5 > 0.5), instead of completing in 232 ms
    ob = _objective(slo_ms=40.5, deadline_rule="slack", deadline_ms=1000.0, early_abandon_ms=None)
    cm = CostModel(_profile(), ob)
    _check_p0(cm, 10.0, 40.5, True, _fallback_e_d(0.5), 0.0)


def test_upload_arriving_exactly_at_the_deadline_was_served():
    # 150 kB: the upload takes exactly 300 ms = the deadline, with RTT 0; the answer is late
    # (tail + return), so the device completes locally, but the server did run the tail.
    cm = CostModel(_profile(wire0=150_000.0), _objective(slo_ms=300.0, early_abandon_ms=50.0))
    _check_p0(cm, 0.0, 340.0, True, _fallback_e_d(300.0), OK_E_S)


def test_network_energy_of_an_abandoned_upload_counts_only_the_bits_sent():
    ob = _objective(slo_ms=300.0, early_abandon_ms=50.0, e_net_j_per_bit=1e-7)
    cm = CostModel(_profile(), ob)
    ctx = (B, 100.5, 0.0, 0.0, I_D, I_S, BATTERY)
    c = cm.evaluate(np.array([ctx]))
    # 50 ms at 4 Mbit/s = 200,000 bits of the 800,000
    assert c.network_energy_j[0, 0] == pytest.approx(1e-7 * 200_000)
    waited = cm.evaluate(np.array([(B, 78.5, 0.0, 0.0, I_D, I_S, BATTERY)]))
    assert waited.network_energy_j[0, 0] == pytest.approx(1e-7 * 800_000)  # all of it, once
    done = cm.evaluate(np.array([(B, 78.0, 0.0, 0.0, I_D, I_S, BATTERY)]))
    assert done.network_energy_j[0, 0] == pytest.approx(1e-7 * 8 * 101_000)  # up and back
    for row_ctx, cc in ((ctx, c), ((B, 78.5, 0.0, 0.0, I_D, I_S, BATTERY), waited)):
        assert cm.row(row_ctx, B)[1] == pytest.approx(cc.objective[0].tolist(), rel=1e-12)


@pytest.mark.parametrize("i_d", [0.0, 2000.0])
@pytest.mark.parametrize("i_s", [0.0, 2000.0])
def test_zero_and_extreme_carbon(i_d: float, i_s: float):
    """0 g/kWh (real zones report it) prices that side's energy at nothing; 2000 at the top of
    the accepted range stays finite; both paths agree."""
    cm = CostModel(_profile(), _objective(slo_ms=300.0))
    ctx = (B, 10.0, 0.0, 0.0, i_d, i_s, BATTERY)
    c = cm.evaluate(np.array([ctx]))
    expected = (i_d * c.device_energy_j[0] + i_s * c.server_energy_j[0]) / 3.6e6
    np.testing.assert_array_equal(c.carbon_g[0], expected)
    if i_d == 0.0 and i_s == 0.0:
        assert (c.carbon_g[0] == 0).all()
    assert np.isfinite(c.objective).all()
    assert cm.row(ctx, B)[1] == pytest.approx(c.objective[0].tolist(), rel=1e-12)


def _zero_device_profile() -> Profile:
    """A device that costs nothing locally (0 ms, 0 W active): every reference is 0."""
    return Profile(
        device_ms=[0.0, 0.0, 0.0], device_ms_p90=[0.0, 0.0, 0.0], server_ms=[20.0, 5.0, 0.0],
        wire_bytes=[100_000, 50_000, 0], return_bytes=[1000, 1000, 0], p_active_mw=0.0,
        p_idle_mw=2000.0, radio="wifi", battery_wh=10.0, server_p_marginal_mw=10_000.0,
    )  # fmt: skip


def test_a_zero_reference_drops_its_term_instead_of_dividing_by_zero():
    cm = CostModel(_zero_device_profile(), _objective(slo_ms=300.0))
    ref = cm.reference()
    assert (ref.carbon_g, ref.latency_ms, ref.battery_pct) == (0.0, 0.0, 0.0)
    assert (cm.wc, cm.wt, cm.wb) == (0.0, 0.0, 0.0)
    ctx = (B, 10.0, 0.0, 0.0, I_D, I_S, BATTERY)
    c = cm.evaluate(np.array([ctx]))
    assert c.objective[0].tolist() == [0.0, 0.0, 0.0] and c.latency_ms[0, 0] > 0
    assert cm.row(ctx, B)[1] == [0.0, 0.0, 0.0]
    # a fixed device intensity of 0 g/kWh: the carbon term goes, latency and battery stay
    ob = _objective(device_carbon="fixed", device_fixed_gco2_per_kwh=0.0, slo_ms=300.0)
    cm0 = CostModel(_profile(), ob)
    assert cm0.reference().carbon_g == 0.0 and cm0.wc == 0.0
    assert cm0.wt == pytest.approx(0.2 / 40.0) and cm0.wb > 0
    assert np.isfinite(cm0.evaluate(np.array([ctx])).objective).all()


def test_the_reference_context_load_slows_the_reference():
    from carboncp.runtime.decision.objective import DEFAULT_REFERENCE

    ob = _objective(reference={**DEFAULT_REFERENCE, "device_load": 0.5})
    assert CostModel(_profile(), ob).reference().latency_ms == pytest.approx(60.0)  # 40 × 1.5


def test_costs_are_frozen_and_hash_by_identity():
    import dataclasses

    cm = CostModel(_profile(), _objective())
    c = cm.evaluate(np.array([(B, 10.0, 0.0, 0.0, I_D, I_S, BATTERY)]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.latency_ms = c.latency_ms  # type: ignore[misc]
    assert hash(c) == hash(c) and {c: 1}[c] == 1  # eq=False: identity, arrays never compared
    with pytest.raises(dataclasses.FrozenInstanceError):
        cm.reference().latency_ms = 1.0  # type: ignore[misc]


def test_an_outage_falls_back_even_when_nothing_comes_back():
    prof = Profile(
        device_ms=[0.0, 10.0, 40.0], device_ms_p90=[0.0, 12.0, 45.0], server_ms=[20.0, 5.0, 0.0],
        wire_bytes=[100_000, 50_000, 0], return_bytes=[0, 0, 0], p_active_mw=5000.0,
        p_idle_mw=2000.0, radio="wifi", battery_wh=10.0, server_p_marginal_mw=10_000.0,
    )  # fmt: skip
    cm = CostModel(prof, _objective(slo_ms=300.0))
    ctx = (0.0, 10.0, 0.0, 0.0, I_D, I_S, BATTERY)
    c = cm.evaluate(np.array([ctx]))
    assert c.fallback[0].tolist() == [True, True, False]
    np.testing.assert_allclose(c.latency_ms[0], [50 + 40, 10 + 50 + 30, 40])
    assert cm.row(ctx, 0.0)[0] == pytest.approx(c.latency_ms[0].tolist())


def test_load_curves_outside_inside_and_at_their_ends_in_both_paths():
    """A three-point server curve (g_s = 1, 1.5, 3 at v = 0, 0.5, 1) and a device curve:
    below the first point the first value, above the last the last, linear between."""
    prof = Profile(
        device_ms=[0.0, 10.0, 40.0], device_ms_p90=[0.0, 12.0, 45.0], server_ms=[20.0, 5.0, 0.0],
        wire_bytes=[100_000, 50_000, 0], return_bytes=[1000, 1000, 0], p_active_mw=5000.0,
        p_idle_mw=2000.0, radio="wifi", battery_wh=10.0, server_p_marginal_mw=10_000.0,
        device_load_u=[0.0, 0.5, 1.0], device_slowdown_g=[1.0, 2.0, 2.5],
        server_load_v=[0.0, 0.5, 1.0], server_slowdown_g=[1.0, 1.5, 3.0],
    )  # fmt: skip
    cm = CostModel(prof, _objective(slo_ms=None, deadline_ms=5000.0))
    for v, g_s in [(-0.5, 1.0), (0.0, 1.0), (0.25, 1.25), (0.5, 1.5), (0.75, 2.25), (1.0, 3.0),
                   (2.0, 3.0)]:  # fmt: skip
        ctx = (B, 10.0, 0.0, v, I_D, I_S, BATTERY)
        want = 200 + 10 + 20 * g_s + 2  # partition 0: upload, RTT, tail, return
        assert cm.row(ctx, B, [0])[0] == [pytest.approx(want, rel=1e-12)], v
        assert cm.evaluate(np.array([ctx])).latency_ms[0, 0] == pytest.approx(want, rel=1e-12)
    for u, g_d in [(-1.0, 1.0), (0.0, 1.0), (0.25, 1.5), (1.0, 2.5), (3.0, 2.5)]:
        ctx = (B, 10.0, u, 0.0, I_D, I_S, BATTERY)
        assert cm.row(ctx, B, [2])[0] == [pytest.approx(40 * g_d, rel=1e-12)], u


def test_a_negative_bandwidth_is_an_outage_in_the_row_path():
    cm = CostModel(_profile(), _objective(slo_ms=300.0))
    ctx = (B, 10.0, 0.0, 0.0, I_D, I_S, BATTERY)
    assert cm.row(ctx, -5.0) == cm.row(ctx, 0.0)
    assert cm.row(ctx, 0.0)[0] == pytest.approx(
        cm.evaluate(np.array([ctx]), np.array([0.0])).latency_ms[0].tolist()
    )


def test_local_completion_shorter_than_a_millisecond():
    # head 1 takes 39.5 of the 40 ms: a fallback there completes in 0.5 ms
    prof = Profile(
        device_ms=[0.0, 39.5, 40.0], device_ms_p90=[0.0, 40.0, 45.0], server_ms=[20.0, 5.0, 0.0],
        wire_bytes=[100_000, 50_000, 0], return_bytes=[1000, 1000, 0], p_active_mw=5000.0,
        p_idle_mw=2000.0, radio="wifi", battery_wh=10.0, server_p_marginal_mw=10_000.0,
    )  # fmt: skip
    cm = CostModel(prof, _objective(slo_ms=300.0, early_abandon_ms=50.0))
    ctx = (0.0, 10.0, 0.0, 0.0, I_D, I_S, BATTERY)  # an outage: everything remote falls back
    want = 39.5 + 50.0 + 0.5
    assert cm.evaluate(np.array([ctx])).latency_ms[0, 1] == pytest.approx(want, rel=1e-12)
    assert cm.row(ctx, 0.0, [1])[0] == [pytest.approx(want, rel=1e-12)]


def test_a_sub_millisecond_device_still_weighs_latency_and_battery():
    prof = Profile(
        device_ms=[0.0, 0.25, 0.5], device_ms_p90=[0.0, 0.3, 0.6], server_ms=[20.0, 5.0, 0.0],
        wire_bytes=[100_000, 50_000, 0], return_bytes=[1000, 1000, 0], p_active_mw=5000.0,
        p_idle_mw=2000.0, radio="wifi", battery_wh=10.0, server_p_marginal_mw=10_000.0,
    )  # fmt: skip
    cm = CostModel(prof, _objective())
    assert cm.reference().latency_ms == 0.5 and cm.wt == pytest.approx(0.2 / 0.5)
    assert cm.wb == pytest.approx(0.2 / cm.reference().battery_pct)


def test_row_names_the_partitions_outside_the_model():
    cm = CostModel(_profile(), _objective())
    ctx = (B, 10.0, 0.0, 0.0, I_D, I_S, BATTERY)
    with pytest.raises(ValueError, match=r"partitions \[-1, 3\] are outside 0\.\.2"):
        cm.row(ctx, B, [0, -1, 2, 3])
