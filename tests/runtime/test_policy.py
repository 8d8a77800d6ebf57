"""TablePolicy: context -> cell -> set -> SLO guard -> mode, and observe() (ACI, weighted CP)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.conformal import BinnedLogit
from carboncp.runtime.decision.context import Context, Decision, Policy
from carboncp.runtime.decision.policy import TablePolicy
from carboncp.runtime.decision.table import Table
from carboncp.runtime.errors import ConfigError

from tests.support.decision import cost_model, make_bundle, trained

CLASSIFIER_EDGES = [[1.0, 10.0], [], [0.5], [], [200.0], [200.0], [50.0]]


def _table(scores, latency, slo_ms=300.0, qhat=0.5, offsets=None) -> Table:
    """One bandwidth edge at 10 Mbit/s: cell 0 (slow link), cell 1 (fast link)."""
    scores = np.asarray(scores, dtype=np.float16)
    p1 = scores.shape[1]
    return Table(
        edges=[[10.0], [], [], [], [], [], []],
        scores=scores,
        latency_ms=np.asarray(latency, dtype=np.float16),
        latency_offset_ms=list(offsets or [0.0] * p1),
        alpha=0.1,
        qhat=qhat,
        cal_scores=np.linspace(0, 2, 200).astype(np.float32),
        cal_bins=np.zeros((200, 7), np.uint8),
        bandwidth_log_lower=math.log(0.5),
        slo_ms=slo_ms,
        classifier=BinnedLogit(CLASSIFIER_EDGES).to_dict(),
    )


def _ctx(bw: float, **kw) -> Context:
    d = dict(
        bandwidth_mbps=bw, rtt_ms=20.0, device_load=0.2, server_load=0.3,
        device_gco2_per_kwh=400.0, server_gco2_per_kwh=50.0, battery_pct=80.0,
    )  # fmt: skip
    d.update(kw)
    return Context(**d)


SCORES = [[0.4, 0.9, 0.6, 0.8, 0.7, 0.3, 0.0], [0.0, 0.45, 0.2, 0.9, 0.9, 0.9, 0.1]]
LAT = [[900, 900, 800, 500, 400, 200, 100], [50, 80, 90, 100, 120, 130, 100]]


def test_policy_protocol_and_modes() -> None:
    cm = cost_model()
    t = _table(SCORES, LAT, qhat=0.5)
    for mode in "AMR":
        pol = TablePolicy(t, cm, mode, online="split")
        assert isinstance(pol, Policy)
        d = pol.decide(_ctx(100.0))
        assert isinstance(d, Decision) and d.mode == mode and d.cell == 1
        assert d.candidates == (0, 1, 2, 6)  # scores <= q̂ = 0.5
        assert d.partition in d.candidates
    m = TablePolicy(t, cm, "M", online="split").decide(_ctx(100.0))
    assert m.partition == 0  # lowest score
    picks = {
        TablePolicy(t, cm, "R", seed=s, online="split").decide(_ctx(100.0)).partition
        for s in range(40)
    }
    assert picks == {0, 1, 2, 6}  # uniform over the set...
    r1 = [
        TablePolicy(t, cm, "R", seed=7, online="split").decide(_ctx(100.0)).partition
        for _ in range(3)
    ]
    assert len(set(r1)) == 1  # ... and seeded


def test_mode_a_takes_the_lowest_live_cost_at_the_pessimistic_bandwidth() -> None:
    cm = cost_model()
    t = _table([[0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0]] * 2, [[10] * 7] * 2, qhat=0.2)
    pol = TablePolicy(t, cm, "A", online="split")
    for bw in (2.0, 30.0, 200.0, 800.0):
        ctx = _ctx(bw)
        d = pol.decide(ctx)
        b_low = bw * 0.5
        lat, j = cm.row((b_low, *[ctx.rtt_ms, 0.2, 0.3, 400.0, 50.0, 80.0]), b_low)
        feas = [p for p in range(7) if lat[p] <= 300.0] or list(range(7))
        assert d.partition == min(feas, key=j.__getitem__)
    # With the bandwidth known the bound is not applied: a faster guess can flip the choice.
    known = TablePolicy(t, cm, "A", online="split", known_bandwidth=True)
    assert known.bw_factor == 1.0 and pol.bw_factor == pytest.approx(0.5)


def test_slo_guard_drops_slow_partitions_unless_that_empties_the_set() -> None:
    cm = cost_model()
    t = _table(SCORES, LAT, qhat=0.5, offsets=[0, 0, 0, 0, 0, 0, 250])
    d = TablePolicy(t, cm, "M", online="split").decide(_ctx(1.0))  # slow cell
    # set {0, 5, 6}: 0 (900 ms) and 6 (100 + 250 ms) exceed 300 ms; 5 stays
    assert d.candidates == (0, 5, 6) and d.partition == 5 and not d.flags
    t2 = _table(SCORES, [[900] * 7, LAT[1]], qhat=0.5)
    d2 = TablePolicy(t2, cm, "M", online="split").decide(_ctx(1.0))
    assert d2.flags == ("slo_guard_relaxed",) and d2.partition == 6


def test_observe_updates_aci_from_the_realised_context() -> None:
    cm = cost_model()
    t = _table(SCORES, LAT, qhat=0.0)
    pol = TablePolicy(t, cm, "M", online="aci")
    seen = _ctx(100.0)
    d = pol.decide(seen)
    realised = _ctx(0.0)  # an outage at the moment of sending: local is the oracle
    assert pol.oracle_row(tuple(realised.__dict__.values())) == 6
    a0 = pol.aci.alpha_t
    pol.observe(d, seen, realised)
    err = 6 not in d.candidates
    assert pol.aci.alpha_t == pytest.approx(a0 + 0.01 * (0.1 - err))
    assert pol.n_observed == 1 and pol.n_errors == int(err)
    # Repeated misses shrink α_t until the threshold grows and the set covers local too.
    for _ in range(200):
        d = pol.decide(seen)
        pol.observe(d, seen, realised)
    assert 6 in pol.decide(seen).candidates


def test_weighted_mode_refits_from_the_window() -> None:
    cm = cost_model()
    t = _table(SCORES, LAT, qhat=0.5)
    rng = np.random.default_rng(0)
    t.cal_bins = BinnedLogit(CLASSIFIER_EDGES).bins(
        np.column_stack([rng.uniform(0.5, 50, 200), np.full(200, 20), rng.random(200), rng.random(200),
                         rng.uniform(100, 300, 200), rng.uniform(20, 100, 200), rng.uniform(20, 100, 200)])
    ).astype(np.uint8)  # fmt: skip
    pol = TablePolicy(t, cm, "M", online="weighted", window=100, refit_every=50)
    assert pol.wcp is not None and not pol.wcp.ready
    windows = []  # what each refit was given
    refit = pol.wcp.refit
    pol.wcp.refit = lambda bins: (windows.append(np.array(bins)), refit(bins))[1]
    for i in range(120):
        seen = _ctx(float(rng.uniform(0.5, 50)), device_gco2_per_kwh=150.0 + i)
        pol.observe(pol.decide(seen), seen, seen)
    # refits after 50 and 100 observations; the ESS is the one of the last window
    assert pol.events_since_refit == 20 and len(pol._window) == 100
    wcp = pol.wcp
    assert [len(b) for b in windows] == [50, 100]
    window = windows[-1]
    w = np.exp(wcp.clf.logit_bins(wcp.cal_bins)) * (200 / 100)
    w_win = np.exp(wcp.clf.logit_bins(window)) * (200 / 100)
    ess = np.median((w.sum() + w_win) ** 2 / ((w * w).sum() + w_win**2))
    assert wcp.ess == pytest.approx(ess, rel=1e-9) and wcp.ready == (ess >= 100)
    row = tuple(_ctx(5.0).__dict__.values())
    want = wcp.threshold_row(row) if wcp.ready else pol.aci.threshold()
    assert pol.threshold(row) == want


def test_bad_mode_online_and_alpha() -> None:
    cm = cost_model()
    t = _table(SCORES, LAT)
    with pytest.raises(ConfigError, match="mode"):
        TablePolicy(t, cm, "Z")
    with pytest.raises(ConfigError, match="online"):
        TablePolicy(t, cm, "A", online="psychic")
    with pytest.raises(ConfigError, match="alpha"):
        TablePolicy(t, cm, "A", alpha=1.2)
    assert TablePolicy(t, cm, "A", alpha=0.2).qhat < TablePolicy(t, cm, "A", alpha=0.05).qhat


def test_from_bundle_decides_like_the_tooling_table(tmp_path) -> None:
    from carboncp.tooling.table_build import calibrate_from_replay, write_table

    _cm, rp, _, table = trained()
    calibrate_from_replay(table, rp, "cal", 0.1)
    root = make_bundle(tmp_path / "b")
    write_table(root, table)
    pol = TablePolicy.from_bundle(Bundle.load(root), mode="M", online="split")
    x = rp.x_seen[rp.splits["test"][:200]]
    cells = table.cells(x)
    for row, cell in zip(x.tolist(), cells, strict=True):
        d = pol.decide_row(tuple(row))
        assert d.cell == cell
        assert set(d.candidates) == set(
            np.flatnonzero(table.scores[cell].astype(float) <= table.qhat)
        )


def test_runtime_policy_imports_neither_torch_nor_tooling() -> None:
    code = (
        "import sys, carboncp.runtime.decision.policy, carboncp.runtime.decision.table, carboncp.runtime.decision.conformal;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('carboncp.tooling')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _random_table(rng: np.random.Generator, p1: int = 7) -> Table:
    """Many cells (bandwidth, RTT, load, both carbons, battery) with random scores (one 0 per
    cell) and random guard bounds around the 300 ms SLO: sets of every size, some guarded."""
    edges = [[2.0, 10.0, 40.0], [30.0], [0.5], [], [250.0], [150.0], [30.0]]
    n_cells = math.prod(len(e) + 1 for e in edges)
    n_lat = math.prod(len(e) + 1 for e in edges[:4])
    scores = rng.uniform(0.0, 1.0, (n_cells, p1))
    scores[np.arange(n_cells), rng.integers(0, p1, n_cells)] = 0.0
    cal = rng.uniform(0.0, 1.0, 300).astype(np.float32)
    return Table(
        edges=edges,
        scores=scores.astype(np.float16),
        latency_ms=rng.uniform(50.0, 500.0, (n_lat, p1)).astype(np.float16),
        latency_offset_ms=[0.0] * p1,
        alpha=0.1,
        qhat=0.5,
        cal_scores=cal,
        cal_bins=np.zeros((300, 7), np.uint8),
        bandwidth_log_lower=math.log(0.6),
        slo_ms=300.0,
        classifier=BinnedLogit(CLASSIFIER_EDGES).to_dict(),
    )


def _decide_on_the_full_row(pol: TablePolicy, row: tuple[float, ...]) -> tuple[int, tuple, bool]:
    """The decision as it was made before mode A priced only its set: the whole row
    (partitions=None) indexed by partition. Returns (partition, candidates, relaxed)."""
    cell = pol.index.cell(row)
    lcell = pol.index.latency_cell(cell)
    s = pol.scores[cell]
    q = pol.threshold(row)
    cand = [p for p in range(pol.p1) if s[p] <= q]
    guarded = [p for p in cand if pol.table.guard_ok()[lcell][p]] if pol.table_guard else cand
    kept = guarded or cand
    relaxed = not guarded
    if len(kept) == 1:
        return kept[0], tuple(cand), relaxed
    if pol.mode == "M":
        return min(kept, key=s.__getitem__), tuple(cand), relaxed
    b_low = row[0] * pol.bw_factor
    lat, j = pol.cost.row((b_low, *row[1:]), b_low)
    feas = [k for k in kept if lat[k] <= pol.slo]
    cost = j
    if not feas:  # mode A's own chance constraint relaxed (flagged once)
        feas, cost, relaxed = kept, lat, True
    p = feas[0]
    for k in feas[1:]:
        if cost[k] < cost[p] or (cost[k] == cost[p] and s[k] < s[p]):
            p = k
    return p, tuple(cand), relaxed


@pytest.mark.parametrize(("mode", "table_guard"), [("A", None), ("A", True), ("M", None)])
def test_decisions_on_the_set_equal_decisions_on_the_full_row(mode: str, table_guard) -> None:
    """Replays of random contexts with ACI moving the threshold (α from 0.1 to 0.8: large and
    small sets): the policy (live cost of the kept partitions only, cached sets) decides
    exactly as the full-row computation does, flags included. Mode A's guard is its live
    chance constraint unless table_guard=True adds the table's (the rule before c6f2d4e)."""
    from tests.support.cost_fixtures import random_contexts

    rng = np.random.default_rng(5)
    cm = cost_model(slo_ms=150.0)  # local runs near the SLO: mode A's constraint binds
    table = _random_table(rng)
    live, relaxed_total, sizes = 0, 0, set()
    for alpha in (0.1, 0.5, 0.8):
        relaxed = 0
        pol = TablePolicy(
            table, cm, mode, alpha=alpha, online="aci", gamma=0.05, table_guard=table_guard
        )
        assert pol.table_guard == (table_guard or mode != "A")
        x = random_contexts(300, seed=int(alpha * 10))
        x[:, 2] = rng.uniform(0.0, 1.0, len(x))
        for i in range(len(x)):
            row = tuple(float(v) for v in x[i])
            p, cand, flagged = _decide_on_the_full_row(pol, row)
            d = pol.decide(Context(*row))
            assert (d.partition, d.candidates) == (p, cand), f"α={alpha}, context {i}: {row}"
            assert d.flags == (("slo_guard_relaxed",) if flagged else ()), f"context {i}"
            sizes.add(len(d.candidates))
            live += len(d.candidates) > 1
            relaxed += flagged
            # the realised bandwidth differs from the seen one: misses move α_t and q
            realised = Context(row[0] * float(rng.uniform(0.2, 1.5)), *row[1:])
            pol.observe(d, Context(*row), realised)
        assert pol.n_guard_relaxed == relaxed
        relaxed_total += relaxed
    # the test exercised mode A's live cost, sets of many sizes and the relaxed guard
    assert live > 300 and len(sizes) >= 5 and 0 < relaxed_total < live


class _FlatCost:
    """A cost model pricing every partition alike: mode A has only ties to break."""

    def __init__(self, latency_ms: float, slo: float | None = 300.0) -> None:
        self.latency_ms, self.slo = latency_ms, slo

    def row(self, ctx, bandwidth_mbps, partitions=None):
        n = 7 if partitions is None else len(partitions)
        return [self.latency_ms] * n, [1.0] * n


# all within the SLO / none within it / no SLO
@pytest.mark.parametrize(("latency_ms", "slo"), [(100.0, 300.0), (900.0, 300.0), (900.0, None)])
def test_mode_a_ties_go_to_the_lowest_score_like_mode_m(latency_ms: float, slo) -> None:
    t = _table(SCORES, [[10] * 7] * 2, qhat=0.95)
    for bw in (1.0, 100.0):
        a = TablePolicy(t, _FlatCost(latency_ms, slo), "A", online="split").decide(_ctx(bw))
        m = TablePolicy(t, _FlatCost(latency_ms, slo), "M", online="split").decide(_ctx(bw))
        assert len(a.candidates) > 2 and a.partition == m.partition


def test_a_nan_or_negative_threshold_is_refused_not_turned_into_a_set() -> None:
    from carboncp.runtime.errors import BundleError

    t = _table(SCORES, LAT, qhat=0.5)
    for q in (float("nan"), -1.0):  # bisect alone would count every / no partition
        pol = TablePolicy(t, cost_model(), "A", online="split")
        pol.qhat = q
        with pytest.raises(BundleError, match="threshold"):
            pol.decide(_ctx(100.0))
