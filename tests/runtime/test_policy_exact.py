"""TablePolicy's bookkeeping pinned exactly: its defaults (ACI with γ = 0.01, weighted CP's
window of 500 refitted every 100 decisions), which threshold each online rule uses in which
state, the stored q̂ against a recomputed one, the oracle without an SLO or with none
feasible, coverage, and the guard-relaxed count."""

from __future__ import annotations

import math

import numpy as np
import pytest
from carboncp.runtime.decision.conformal import INF, split_threshold
from carboncp.runtime.decision.context import Context
from carboncp.runtime.decision.policy import TablePolicy

from tests.runtime.test_policy import LAT, SCORES, _ctx, _table
from tests.support.decision import cost_model


def _row(ctx: Context) -> tuple[float, ...]:
    return tuple(ctx.__dict__.values())


def test_defaults_aci_gamma_window_and_refit_period() -> None:
    t = _table(SCORES, LAT, qhat=0.5)
    pol = TablePolicy(t, cost_model())
    assert pol.mode == "A" and pol.online == "aci" and pol.aci.gamma == 0.01
    assert pol.alpha == t.alpha == 0.1 and pol.wcp is None
    w = TablePolicy(t, cost_model(), online="weighted")
    assert w._window.maxlen == 500 and w.refit_every == 100
    assert w.wcp is not None and w.wcp.ess_floor == pytest.approx(100.0)
    seen = _ctx(5.0)
    for i in range(1, 100):
        w.observe(w.decide(seen), seen, seen)
        assert w.events_since_refit == i
    w.observe(w.decide(seen), seen, seen)  # the 100th: refit
    assert w.events_since_refit == 0 and len(w._window) == 100


def test_refit_waits_for_a_full_period_of_window() -> None:
    t = _table(SCORES, LAT, qhat=0.5)
    pol = TablePolicy(t, cost_model(), online="weighted", window=3, refit_every=5)
    seen = _ctx(5.0)
    fits = []
    for _ in range(10):
        pol.observe(pol.decide(seen), seen, seen)
        fits.append(pol.events_since_refit)
    # the window (3) is shorter than the period: a refit needs min(5, 3) = 3 contexts
    assert fits == [1, 2, 3, 4, 0, 1, 2, 3, 4, 0]


def test_which_threshold_each_online_rule_uses() -> None:
    t = _table(SCORES, LAT, qhat=0.5)
    cm = cost_model()
    row = _row(_ctx(5.0))
    split = TablePolicy(t, cm, online="split")
    assert split.threshold(row) == 0.5
    aci = TablePolicy(t, cm, online="aci")
    cal = np.sort(t.cal_scores.astype(np.float64))
    assert aci.threshold(row) == aci.aci.threshold() == split_threshold(cal, 0.1)
    w = TablePolicy(t, cm, online="weighted")
    assert not w.wcp.ready and w.threshold(row) == w.aci.threshold()  # below the floor: ACI
    w.wcp.ready, w.wcp._cum, w.wcp._scores_l = True, [float(i) for i in range(1, 201)], [0.25] * 200
    assert w.threshold(row) == 0.25  # ready: weighted CP's own threshold


def test_stored_qhat_is_used_at_the_tables_alpha() -> None:
    t = _table(SCORES, LAT, qhat=0.4321)  # not what the calibration scores would give
    cm = cost_model()
    assert TablePolicy(t, cm, online="split").qhat == 0.4321
    assert TablePolicy(t, cm, alpha=0.1, online="split").qhat == 0.4321
    cal = np.sort(t.cal_scores.astype(np.float64))
    assert TablePolicy(t, cm, alpha=0.3, online="split").qhat == split_threshold(cal, 0.3)


def test_known_bandwidth_and_the_pessimistic_factor() -> None:
    t = _table(SCORES, LAT)
    assert TablePolicy(t, cost_model()).bw_factor == pytest.approx(0.5, rel=1e-15)
    assert TablePolicy(t, cost_model(), known_bandwidth=True).bw_factor == 1.0


class _Cost:
    """Latency and J per partition fixed by the test."""

    def __init__(self, lat, j, slo):
        self.lat, self.j, self.slo = lat, j, slo

    def row(self, ctx, bw, partitions=None):
        ps = range(len(self.lat)) if partitions is None else partitions
        return [self.lat[p] for p in ps], [self.j[p] for p in ps]


def test_oracle_row_with_and_without_an_slo() -> None:
    t = _table(SCORES, LAT)
    row = _row(_ctx(5.0))
    lat = [400.0, 350.0, 290.0, 300.0, 100.0, 301.0, 50.0]
    j = [0.1, 0.2, 0.9, 0.8, 0.95, 0.05, 1.0]
    assert TablePolicy(t, _Cost(lat, j, 300.0)).oracle_row(row) == 3  # feasible: 2, 3, 4, 6
    assert TablePolicy(t, _Cost(lat, j, None)).oracle_row(row) == 5  # no SLO: argmin J
    assert TablePolicy(t, _Cost(lat, j, 10.0)).oracle_row(row) == 6  # none feasible: fastest


def test_mode_a_without_an_slo_and_with_none_meeting_it() -> None:
    t = _table([[0.0] * 7] * 2, [[10] * 7] * 2, qhat=0.5)
    lat = [400.0, 350.0, 290.0, 300.0, 100.0, 301.0, 50.0]
    j = [0.1, 0.2, 0.9, 0.8, 0.95, 0.05, 1.0]
    ctx = _ctx(5.0)
    assert TablePolicy(t, _Cost(lat, j, None), online="split").decide(ctx).partition == 5
    assert TablePolicy(t, _Cost(lat, j, 300.0), online="split").decide(ctx).partition == 3
    assert TablePolicy(t, _Cost(lat, j, 10.0), online="split").decide(ctx).partition == 6
    # equal J within the SLO: the lower score wins, then the lower partition
    t2 = _table([[0.0, 0.2, 0.1, 0.3, 0.3, 0.3, 0.3]] * 2, [[10] * 7] * 2, qhat=0.5)
    tie = _Cost([100.0] * 7, [1.0, 0.5, 0.5, 0.7, 0.7, 0.7, 0.7], 300.0)
    assert TablePolicy(t2, tie, online="split").decide(ctx).partition == 2
    slow = _Cost([400.0, 500.0, 500.0, 900.0, 900.0, 900.0, 900.0], [1.0] * 7, 300.0)
    assert TablePolicy(t2, slow, online="split").decide(ctx).partition == 0  # the fastest


def test_mode_a_guards_by_its_live_chance_constraint_not_the_tables_guard() -> None:
    """The table's guard drops partition 0 (its latency cell's bound, 900 ms, is over the SLO)
    while the live latency at the bandwidth bound meets it: mode A keeps 0 (its own chance
    constraint at the exact context), with table_guard=True it does not (the rule before
    commit c6f2d4e), and mode M still applies the table's guard."""
    t = _table([[0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2]] * 2, [[900] + [10] * 6] * 2, qhat=0.5)
    lat = [200.0, 350.0, 350.0, 350.0, 350.0, 350.0, 250.0]
    j = [0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0]
    ctx = _ctx(5.0)
    a = TablePolicy(t, _Cost(lat, j, 300.0), online="split")
    assert a.table_guard is False and (a.decide(ctx).partition, a.decide(ctx).flags) == (0, ())
    both = TablePolicy(t, _Cost(lat, j, 300.0), online="split", table_guard=True)
    assert both.decide(ctx).partition == 6  # 0 guarded away; 6 the only one within the SLO
    m = TablePolicy(t, _Cost(lat, j, 300.0), "M", online="split")
    assert m.table_guard is True and m.decide(ctx).partition == 1  # the lowest score after 0
    # none meets the SLO at the bound: the fastest, flagged and counted once per decision,
    # also when the table's guard was relaxed as well (table_guard=True, every bound 900 ms)
    slow = _Cost([400.0, 500.0, 500.0, 350.0, 900.0, 900.0, 320.0], j, 300.0)
    for pol in (
        TablePolicy(t, slow, online="split"),
        TablePolicy(
            _table([[0.0] * 7] * 2, [[900] * 7] * 2, qhat=0.5),
            slow,
            online="split",
            table_guard=True,
        ),
    ):
        for _ in range(3):
            d = pol.decide(ctx)
            assert (d.partition, d.flags) == (6, ("slo_guard_relaxed",))
        assert pol.n_guard_relaxed == 3
    # out of support: flagged both ways
    oos = TablePolicy(t, slow, online="split")
    oos._support = ((0, 0.0, 1.0),)
    assert oos.decide(ctx).flags == ("slo_guard_relaxed", "out_of_support")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["bandwidth_mbps", "device_load", "server_load", "battery_pct"])
def test_a_context_that_is_not_finite_is_refused_by_name(field, value) -> None:
    """NaN in an unbinned field used to give an IndexError in the cost model, or a silent
    pick; decide() names the field instead (the device loop passes its last good reading)."""
    pol = TablePolicy(_table(SCORES, LAT, qhat=0.5), cost_model())
    ctx = Context(**(_ctx(5.0).__dict__ | {field: value}))
    with pytest.raises(
        ValueError, match=f"context {field}={value}: every field must be a finite number"
    ):
        pol.decide(ctx)
    assert pol.n_decisions == 0
    assert pol.decide(_ctx(5.0)).partition in range(7)


def test_coverage_and_counters() -> None:
    t = _table(SCORES, LAT, qhat=0.5)
    pol = TablePolicy(t, cost_model(), "M", online="split")
    assert math.isnan(pol.coverage)
    d = pol.decide(_ctx(100.0))  # set (0, 1, 2, 6)
    pol.observe_label(d, 6, _ctx(100.0))
    pol.observe_label(d, 3, _ctx(100.0))
    pol.observe_label(d, 0, _ctx(100.0))
    pol.observe_label(d, 5, _ctx(100.0))
    assert (pol.n_observed, pol.n_errors, pol.coverage) == (4, 2, 0.5)
    assert pol.n_decisions == 1
    # the guard relaxed: counted per decision
    t2 = _table(SCORES, [[900] * 7, [900] * 7], qhat=0.5)
    p2 = TablePolicy(t2, cost_model(), "M", online="split")
    for _ in range(3):
        assert p2.decide(_ctx(100.0)).flags == ("slo_guard_relaxed",)
    assert p2.n_guard_relaxed == 3


def test_an_infinite_threshold_is_the_whole_set() -> None:
    t = _table(SCORES, LAT, qhat=INF)
    d = TablePolicy(t, cost_model(), "M", online="split").decide(_ctx(100.0))
    assert d.candidates == tuple(range(7))


def test_default_seed_is_zero() -> None:
    t = _table(SCORES, LAT, qhat=0.5)
    cm = cost_model()
    a = TablePolicy(t, cm, "R", online="split")
    b = TablePolicy(t, cm, "R", online="split", seed=0)
    ctxs = [_ctx(100.0)] * 30
    assert [a.decide(c).partition for c in ctxs] == [b.decide(c).partition for c in ctxs]


def test_default_seed_from_the_bundle(tmp_path) -> None:
    from carboncp.runtime.artifacts.bundle import Bundle, register_file, save_manifest

    from tests.support.decision import make_bundle

    t = _table(SCORES, LAT, qhat=0.5)
    root = make_bundle(tmp_path / "b")
    b = Bundle.load(root)
    m = b.manifest
    for rel in t.save(root):
        register_file(m, root, rel)
    m["sections"]["table"] = "table/table.json"
    save_manifest(root, m)
    pol = TablePolicy.from_bundle(Bundle.load(root), "R", online="split")
    ref = TablePolicy(t, pol.cost, "R", online="split", seed=0)
    ctxs = [_ctx(100.0)] * 30
    assert [pol.decide(c).partition for c in ctxs] == [ref.decide(c).partition for c in ctxs]


def test_cached_sets_of_neighbouring_cells_never_collide() -> None:
    # at q = 0.5 cell 0 (slow link) keeps all 7 partitions, cell 1 (fast) only partition 0:
    # the cache must tell (cell 0, 7 members) from (cell 1, 1 member)
    scores = [[0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5], [0.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]]
    t = _table(scores, [[10] * 7] * 2, qhat=0.5)
    pol = TablePolicy(t, cost_model(), "M", online="split")
    assert pol.decide(_ctx(1.0)).candidates == tuple(range(7))
    assert pol.decide(_ctx(100.0)).candidates == (0,)
    assert pol.decide(_ctx(1.0)).candidates == tuple(range(7))


def test_a_single_kept_partition_uses_no_randomness() -> None:
    # cell 0: the guard keeps only partition 0; cell 1: a set of four for mode R
    t = _table(SCORES, [[100, 900, 900, 900, 900, 900, 900], LAT[1]], qhat=0.5)
    a = TablePolicy(t, cost_model(), "R", seed=3, online="split")
    b = TablePolicy(t, cost_model(), "R", seed=3, online="split")
    assert a.decide(_ctx(1.0)).partition == 0  # the set {0, 5, 6} guarded down to {0}
    assert [a.decide(_ctx(100.0)).partition for _ in range(20)] == [
        b.decide(_ctx(100.0)).partition for _ in range(20)
    ]


@pytest.mark.parametrize("slo", [None, 300.0, 10.0])
def test_mode_a_full_ties_go_to_the_lowest_partition(slo) -> None:
    t = _table([[0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]] * 2, [[10] * 7] * 2, qhat=0.5)
    lat = [400.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0]
    j = [9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # J, latency and score all tie for 1..6
    assert TablePolicy(t, _Cost(lat, j, slo), online="split").decide(_ctx(5.0)).partition == 1


def test_mode_a_keeps_a_feasible_partition_zero_over_a_faster_one() -> None:
    t = _table([[0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]] * 2, [[10] * 7] * 2, qhat=0.5)
    # 1 is the fastest; 6 the cheapest but it misses the 300 ms SLO; 0 is the cheapest feasible
    lat = [200.0, 150.0, 350.0, 350.0, 350.0, 350.0, 301.0]
    j = [1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 0.5]
    assert TablePolicy(t, _Cost(lat, j, 300.0), online="split").decide(_ctx(5.0)).partition == 0
    # the same with J in the latencies' range (J has no unit): a search that skipped a
    # feasible pick of 0 would go on to the fastest, partition 1
    j = [400.0, 500.0, 600.0, 600.0, 600.0, 600.0, 100.0]
    assert TablePolicy(t, _Cost(lat, j, 300.0), online="split").decide(_ctx(5.0)).partition == 0


def test_the_default_residual_window_is_200_and_then_the_table_no_longer_counts() -> None:
    """After 200 measured transfers the default window is full: its quantiles alone (the
    table's weight (1 - n/200) is 0); after 199 the table still counts."""
    from tests.runtime.test_expected_rule import _random_table

    t = _random_table(np.random.default_rng(21))
    pol = TablePolicy(t, cost_model(), "A", online="split")
    for i in range(200):
        assert pol.residuals.quantiles != [math.log(0.5)] * 9, i
        pol.observe_bandwidth(40.0, 20.0)
    assert pol.residuals.quantiles == [math.log(0.5)] * 9
    assert pol.residuals.lower == math.log(0.5) and pol.bw_factor == pytest.approx(0.5)


def test_bandwidth_floor_is_a_hundredth_of_a_megabit() -> None:
    """Residuals are of rates floored at 0.01 Mbit/s: an outage seen against 0.5 Mbit/s
    is log(0.01 / 0.5), and 0.02 against 0 is log(2)."""
    from tests.runtime.test_expected_rule import _random_table

    pol = TablePolicy(_random_table(np.random.default_rng(22)), cost_model(), "A", online="split")
    pol.observe_bandwidth(0.5, 0.0)
    pol.observe_bandwidth(0.0, 0.02)
    assert list(pol.residuals._fifo) == [math.log(0.01 / 0.5), math.log(0.02 / 0.01)]


def test_a_residual_window_of_zero_keeps_the_tables_quantiles() -> None:
    from carboncp.runtime.errors import ConfigError

    from tests.runtime.test_expected_rule import _random_table

    t = _random_table(np.random.default_rng(23))
    pol = TablePolicy(t, cost_model(), "A", online="split", residual_window=0)
    pol.observe_bandwidth(40.0, 1.0)
    assert pol.residuals.quantiles == t.bandwidth_log_quantiles.tolist()
    assert len(pol.residuals) == 0
    for bad in (-1, 2.5, "3"):
        with pytest.raises(ConfigError, match="residual_window"):
            TablePolicy(t, cost_model(), "A", residual_window=bad)  # type: ignore[arg-type]


def test_known_bandwidth_prices_at_the_seen_rate_even_with_quantiles() -> None:
    """known_bandwidth: the table's quantiles are ignored, not a fallback; mode A picks the
    least J at the seen rate (row()), no residual window."""
    from tests.runtime.test_expected_rule import _brute_pick, _random_table, _table_set

    t = _random_table(np.random.default_rng(24))
    cm = cost_model()
    pol = TablePolicy(t, cm, "A", online="split", known_bandwidth=True)
    assert pol.bandwidth_rule == "expected" and not pol.bandwidth_fallback
    assert pol.residuals.quantiles == [0.0] and pol.bw_factor == 1.0
    from tests.support.cost_fixtures import random_contexts

    x = random_contexts(150, seed=25)
    priced = 0
    for i in range(len(x)):
        row = tuple(float(v) for v in x[i])
        d = pol.decide(Context(*row))
        kept, s = _table_set(t, row, pol.qhat)
        if len(kept) > 1:
            priced += 1
            assert d.partition == _brute_pick(cm, row, kept, s, [0.0], 0.0), i
    assert priced > 20


@pytest.mark.parametrize("mode", ["M", "R"])
def test_half_infinite_support_bounds_still_flag_their_finite_side(mode: str) -> None:
    """A feature with one infinite bound is checked on its finite side; only a feature
    with both bounds infinite (the table does not bin it) is never flagged, whatever the
    value (NaN too: decide_row skips such features; decide() refuses a NaN context)."""
    from tests.runtime.test_expected_rule import INSIDE, _random_table

    lo = [-math.inf, 0.0, -math.inf, -math.inf, 100.0, -math.inf, 10.0]
    hi = [300.0, math.inf, 0.9, math.inf, 700.0, math.inf, 100.0]
    t = _random_table(np.random.default_rng(26), support=np.array([lo, hi]))
    pol = TablePolicy(t, cost_model(), mode, online="split")
    cases = [
        (0, 300.0, False), (0, 300.5, True), (0, -1e9, False),
        (1, 0.0, False), (1, -0.5, True), (1, 1e9, False),
        (2, 0.95, True), (2, -5.0, False),
        (3, -1e9, False), (3, 1e9, False), (3, math.nan, False),
        (5, -1e9, False), (5, math.nan, False),
    ]  # fmt: skip
    for f, v, out in cases:
        row = list(INSIDE)
        row[f] = v
        assert ("out_of_support" in pol.decide_row(tuple(row)).flags) == out, (f, v)
        if not math.isnan(v):
            assert bool(t.out_of_support(np.array(row))[0]) == out, (f, v)


def test_offloading_the_last_remote_partition_measures_the_link() -> None:
    """p = P-1 (the last split before all-local) still sends: its transfer is a residual;
    p = P is local and adds none (the rates are equal, so no probe measured them)."""
    from carboncp.runtime.decision.context import Decision

    from tests.runtime.test_expected_rule import _random_table

    pol = TablePolicy(_random_table(np.random.default_rng(27)), cost_model(), "A", online="split")
    seen = Context(50.0, 10.0, 0.1, 0.1, 300.0, 100.0, 80.0)
    cand = pol.decide(seen).candidates
    pol.observe(Decision(6, cand, "A", 0), seen, seen)
    assert len(pol.residuals) == 0
    pol.observe(Decision(5, cand, "A", 0), seen, seen)
    assert list(pol.residuals._fifo) == [0.0]


def test_a_weighted_window_of_zero_never_refits() -> None:
    """window=0 keeps no context: the refit period passes but there is nothing to fit on,
    so no refit happens (weighted CP stays on ACI) and the count keeps growing."""
    t = _table(SCORES, LAT, qhat=0.5)
    pol = TablePolicy(t, cost_model(), online="weighted", window=0, refit_every=2)
    seen = _ctx(5.0)
    for i in range(1, 6):
        pol.observe(pol.decide(seen), seen, seen)
        assert pol.events_since_refit == i
    assert pol.wcp is not None and not pol.wcp.ready
