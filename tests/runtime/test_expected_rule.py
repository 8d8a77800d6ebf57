"""Mode A's risk-neutral rule (issue 9, items 2-4): expected J over the table's bandwidth
quantiles, blended online with a window of observed residuals, and out-of-support contexts
decided from the live cost model over every partition. Each checked against a brute-force
computation written from docs/METHOD.md §7, not from the code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from carboncp.runtime.decision.conformal import BinnedLogit
from carboncp.runtime.decision.context import Context
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.decision.policy import ResidualWindow, TablePolicy
from carboncp.runtime.decision.table import Table, quantile_levels
from carboncp.runtime.errors import BundleError, ConfigError

from tests.support.cost_fixtures import random_contexts, resnet18_like_profile
from tests.support.decision import cost_model

CLF_EDGES = [[1.0, 10.0], [], [0.5], [], [200.0], [200.0], [50.0]]


def _random_table(rng, p1: int = 7, k: int = 9, support=None) -> Table:
    edges = [
        sorted(rng.uniform(1.0, 200.0, 3).tolist()),
        [],
        [0.5],
        [],
        sorted(rng.uniform(50.0, 600.0, 2).tolist()),
        [300.0],
        [30.0],
    ]
    n_cells = math.prod(len(e) + 1 for e in edges)
    n_lat = math.prod(len(e) + 1 for e in edges[:4])
    scores = rng.uniform(0.0, 1.0, (n_cells, p1))
    scores[np.arange(n_cells), rng.integers(0, p1, n_cells)] = 0.0
    q = np.sort(rng.normal(-0.3, 0.8, k))
    return Table(
        edges=edges,
        scores=scores.astype(np.float16),
        latency_ms=rng.uniform(50.0, 400.0, (n_lat, p1)).astype(np.float16),
        latency_offset_ms=[0.0] * p1,
        alpha=0.1,
        qhat=0.6,
        cal_scores=rng.uniform(0.0, 1.0, 300).astype(np.float32),
        cal_bins=np.zeros((300, 7), np.uint8),
        bandwidth_log_lower=float(q[0] - 0.5),
        slo_ms=300.0,
        classifier=BinnedLogit(CLF_EDGES).to_dict(),
        meta={"calibration": {"bandwidth_alpha": 0.1}},
        bandwidth_log_quantiles=q,
        support=support,
    )


def _table_set(t: Table, row, q: float) -> tuple[list[int], list[float]]:
    """(the conformal set at threshold q, the cell's scores) for `row`, read from the table
    itself, not from the policy under test. Mode A applies no table guard: the set is what
    it prices."""
    s = t.scores[int(t.cells(np.asarray(row))[0])].astype(np.float64).tolist()
    return [p for p in range(len(s)) if s[p] <= q], s


def _brute_pick(cm: CostModel, row, parts, scores, quantiles, lower) -> int:
    """docs/METHOD.md §7 from scratch: per partition, J averaged over B̂·exp(q_k) (row() at
    each rate, every partition priced) and the latency at B̂·exp(lower); the lowest mean J
    among those within the SLO, the fastest when none is; ties to the lowest score."""
    b = row[0]
    mean_j = {}
    for p in parts:
        js = [cm.row(row, b * math.exp(q))[1][p] for q in quantiles]
        mean_j[p] = sum(js) / len(js)
    lat = cm.row(row, b * math.exp(lower))[0]
    feas = [p for p in parts if lat[p] <= cm.slo] if cm.slo is not None else list(parts)
    cost = mean_j
    if not feas:
        feas, cost = list(parts), {p: lat[p] for p in parts}
    best = feas[0]
    for p in feas[1:]:
        if cost[p] < cost[best] or (cost[p] == cost[best] and scores[p] < scores[best]):
            best = p
    return best


def _objectives() -> list[Objective]:
    every_term = dict(w_latency=0.2, w_battery=0.2, e_net_j_per_bit=2e-7)
    return [
        Objective(slo_ms=300.0),
        Objective(slo_ms=300.0, early_abandon_ms=None, **every_term),
        Objective(slo_ms=250.0, deadline_rule="slack", **every_term),
        Objective(slo_ms=250.0, deadline_rule="slack", early_abandon_ms=None, **every_term),
        Objective(slo_ms=None, battery_protect_below_pct=None, **every_term),
    ]


@pytest.mark.parametrize(
    "obj", _objectives(), ids=["default", "wait", "slack", "slack_wait", "no_slo"]
)
def test_row_expected_is_the_mean_of_row_at_each_rate(obj: Objective) -> None:
    """Exactly (==) the mean of row()'s J at each rate, and row()'s latency at the SLO's
    rate, for random contexts with outages, every battery level and subsets."""
    cm = CostModel(resnet18_like_profile(), obj)
    rng = np.random.default_rng(1)
    x = random_contexts(300, seed=2)
    x[:, 6] = rng.uniform(0.0, 100.0, len(x))
    for i in range(len(x)):
        row = tuple(float(v) for v in x[i])
        rates = (row[0] * np.exp(rng.normal(0.0, 1.0, int(rng.integers(1, 10))))).tolist()
        if i % 7 == 0:
            rates[0] = 0.0  # an outage among the rates
        slo_rate = float(rng.uniform(0.0, 50.0))
        parts = None if i % 2 else sorted(rng.choice(7, int(rng.integers(1, 7)), replace=False))
        lat, j = cm.row_expected(row, rates, slo_rate, parts)
        want_lat = cm.row(row, slo_rate, parts)[0]
        js = [cm.row(row, r, parts)[1] for r in rates]
        want_j = [sum(col) / len(rates) for col in zip(*js, strict=True)]
        assert lat == want_lat and j == want_j, (i, row)
    with pytest.raises(ValueError):
        cm.row_expected(row, [], 1.0)
    with pytest.raises(ValueError):
        cm.row_expected(row, [1.0], 1.0, [7])


@pytest.mark.parametrize("slo", [300.0, 120.0, None])
def test_mode_a_is_the_brute_force_expected_rule_with_the_window_moving(slo) -> None:
    """Random tables and contexts; after each decision a residual enters the window, so
    the quantiles move from the table's to the window's. The policy's pick equals the brute
    force over the set (read from the table: mode A applies no table guard) with the blended
    quantiles recomputed here (np.quantile)."""
    rng = np.random.default_rng(3)
    cm = cost_model(slo_ms=slo)
    priced = 0
    for trial in range(3):
        t = _random_table(rng)
        size = 60
        pol = TablePolicy(t, cm, "A", online="split", residual_window=size)
        window: list[float] = []
        levels = quantile_levels(len(t.bandwidth_log_quantiles))
        x = random_contexts(200, seed=10 + trial)
        for i in range(len(x)):
            row = tuple(float(v) for v in x[i])
            w = min(len(window), size) / size
            last = window[-size:]
            if last:
                wq = np.quantile(last, levels)
                q = (1 - w) * t.bandwidth_log_quantiles + w * wq
                lower = (1 - w) * t.bandwidth_log_lower + w * np.quantile(last, 0.1)
            else:
                q, lower = t.bandwidth_log_quantiles, t.bandwidth_log_lower
            d = pol.decide(Context(*row))
            kept, s = _table_set(t, row, pol.qhat)
            assert d.candidates == tuple(kept)
            if len(kept) > 1:
                priced += 1
                # approx: the window's quantiles are numpy's here, the policy's own
                assert pol.residuals.quantiles == pytest.approx(list(q), abs=1e-12)
                assert pol.residuals.lower == pytest.approx(lower, abs=1e-12)
                want = _brute_pick(cm, row, kept, s, pol.residuals.quantiles, pol.residuals.lower)
                assert d.partition == want, (trial, i, row)
            else:
                assert d.partition == kept[0]
            realised = row[0] * float(rng.lognormal(-0.5, 1.0))
            pol.observe(d, Context(*row), Context(realised, *row[1:]))
            if d.partition < 6 or realised != row[0]:
                window.append(math.log(max(realised, 0.01) / max(row[0], 0.01)))
    assert priced > 100


def test_the_expected_rule_offloads_where_the_pessimistic_one_does_not() -> None:
    """issue 9's case: a link whose lower quantile is an outage-like 3% of the estimate, but
    whose median is the estimate. The pessimistic rule keeps the device local; the expected
    rule offloads (early abandonment bounds what the bad 1-in-9 costs)."""
    rng = np.random.default_rng(0)
    t = _random_table(rng)
    t.scores[:] = 0.0  # every partition in every set
    t.latency_ms[:] = 10.0  # the guard keeps them all
    t.bandwidth_log_quantiles = np.array([math.log(0.034)] + [0.0] * 8)
    t.bandwidth_log_lower = math.log(0.5)
    cm = CostModel(resnet18_like_profile(), Objective(slo_ms=300.0))
    row = (160.0, 10.0, 0.1, 0.1, 600.0, 50.0, 80.0)
    exp_ = TablePolicy(t, cm, "A", online="split").decide(Context(*row)).partition
    t.bandwidth_log_lower = math.log(0.034)
    low = TablePolicy(t, cm, "A", online="split", bandwidth_rule="lower").decide(Context(*row))
    assert low.partition == 6 and exp_ < 6


def test_residual_window_blends_and_slides() -> None:
    table_q = [-1.0, -0.5, 0.0, 0.2, 0.4]
    rw = ResidualWindow(table_q, -2.0, 0.25, 4)
    assert rw.levels == [0.1, 0.3, 0.5, 0.7, 0.9] and rw.quantiles == table_q
    assert rw.factors == [math.exp(v) for v in table_q] and rw.lower_factor == math.exp(-2.0)
    seen: list[float] = []
    for r in [0.3, -0.7, 1.5, -2.5, 0.9, 0.1]:
        rw.add(r)
        seen.append(r)
        last = seen[-4:]
        w = len(last) / 4
        want = (1 - w) * np.asarray(table_q) + w * np.quantile(last, rw.levels)
        assert rw.quantiles == pytest.approx(want.tolist(), abs=1e-12)
        assert rw.lower == pytest.approx((1 - w) * -2.0 + w * np.quantile(last, 0.25), abs=1e-12)
        assert len(rw) == len(last)
    # full: the table no longer counts; the oldest two left
    assert rw.quantiles == pytest.approx(np.quantile([-2.5, 0.9, 0.1, 1.5], rw.levels).tolist())
    frozen = ResidualWindow(table_q, -2.0, 0.25, 0)
    frozen.add(5.0)
    assert frozen.quantiles == table_q and len(frozen) == 0
    one = ResidualWindow(table_q, -2.0, 0.25, 1)  # the last residual only
    one.add(5.0)
    one.add(0.5)
    assert one.quantiles == [0.5] * 5 and one.lower == 0.5 and len(one) == 1


def test_observe_feeds_the_window_only_from_measured_links() -> None:
    t = _random_table(np.random.default_rng(4))
    pol = TablePolicy(t, cost_model(), "A", online="split")
    seen = Context(50.0, 10.0, 0.1, 0.1, 300.0, 100.0, 80.0)
    local = pol.decide(seen)
    from carboncp.runtime.decision.context import Decision

    local = Decision(6, local.candidates, "A", local.cell)
    pol.observe(local, seen, seen)  # ran locally, link not measured: no residual
    assert len(pol.residuals) == 0
    pol.observe(local, seen, Context(25.0, *list(vars(seen).values())[1:]))  # a probe measured
    off = Decision(0, local.candidates, "A", local.cell)
    pol.observe(off, seen, seen)  # offloaded at exactly the estimate: residual 0
    assert list(pol.residuals._fifo) == [math.log(0.5), 0.0]
    pol.observe_bandwidth(50.0, float("nan"))  # not finite: ignored
    pol.observe_bandwidth(0.0, 0.0)  # floored at 0.01 Mbit/s: residual 0
    assert list(pol.residuals._fifo) == [math.log(0.5), 0.0, 0.0]
    known = TablePolicy(t, cost_model(), "A", online="split", known_bandwidth=True)
    known.observe_bandwidth(50.0, 5.0)
    assert len(known.residuals) == 0 and known.bw_factor == 1.0
    assert known.residuals.factors == [1.0]


def _support() -> np.ndarray:
    lo = [1.0, -math.inf, 0.0, -math.inf, 100.0, 20.0, 10.0]
    hi = [300.0, math.inf, 0.9, math.inf, 700.0, 500.0, 100.0]
    return np.array([lo, hi])


INSIDE = (50.0, 10.0, 0.5, 0.5, 400.0, 200.0, 60.0)


@pytest.mark.parametrize("mode", ["A", "M", "R"])
def test_out_of_support_flags_each_feature_inside_and_outside(mode: str) -> None:
    rng = np.random.default_rng(5)
    t = _random_table(rng, support=_support())
    pol = TablePolicy(t, cost_model(), mode, online="split")
    d = pol.decide(Context(*INSIDE))
    assert "out_of_support" not in d.flags and not t.out_of_support(np.array(INSIDE))[0]
    n = 0
    sup = _support()
    for f in range(7):
        for side, bound in ((0, sup[0, f]), (1, sup[1, f])):
            if math.isinf(bound):  # an unbinned feature: any value is inside
                row = list(INSIDE)
                row[f] = 1e9 if side else -1e9
                assert "out_of_support" not in pol.decide(Context(*row)).flags
                continue
            for v, out in ((bound, False), (bound - 1e-6 if side == 0 else bound + 1e-6, True)):
                row = list(INSIDE)
                row[f] = v
                d = pol.decide(Context(*row))
                assert ("out_of_support" in d.flags) == out, (f, v)
                assert bool(t.out_of_support(np.array(row))[0]) == out
                n += out
        row = list(INSIDE)
        row[f] = float("nan")  # (decide() refuses it; decide_row still flags it)
        if not math.isinf(sup[0, f]) and mode != "A":
            assert "out_of_support" in pol.decide_row(tuple(row)).flags
            n += 1
    assert pol.n_out_of_support == n and n == (10 if mode == "A" else 15)
    # without a support nothing is flagged
    t.support = None
    free = TablePolicy(t, cost_model(), mode, online="split")
    assert "out_of_support" not in free.decide(Context(1e4, *INSIDE[1:])).flags


@pytest.mark.parametrize("mode", ["M", "R"])
def test_out_of_support_m_and_r_only_flag(mode: str) -> None:
    """Modes M and R pick from the table's set outside the support as inside: the same
    partitions as a twin without a support, seed for seed."""
    rng = np.random.default_rng(11)
    t = _random_table(rng, support=_support())
    plain = _random_table(np.random.default_rng(11))
    a = TablePolicy(t, cost_model(), mode, seed=3, online="split")
    b = TablePolicy(plain, cost_model(), mode, seed=3, online="split")
    x = random_contexts(200, seed=12)
    flagged = 0
    for i in range(len(x)):
        row = tuple(float(v) for v in x[i])
        da, db = a.decide(Context(*row)), b.decide(Context(*row))
        assert (da.partition, da.candidates) == (db.partition, db.candidates)
        flagged += "out_of_support" in da.flags
    assert 0 < flagged < len(x) and a.n_out_of_support == flagged


def test_out_of_support_mode_a_decides_over_every_partition() -> None:
    """Outside the support mode A ignores the table's set: the brute-force rule over 0..P.
    (The table's set is a single partition, so inside the support A would just take it.)"""
    rng = np.random.default_rng(6)
    t = _random_table(rng, support=_support())
    t.qhat = 0.0
    cm = cost_model()
    pol = TablePolicy(t, cm, "A", online="split")
    x = random_contexts(200, seed=7)
    differs = 0
    for i in range(len(x)):
        row = (float(x[i, 0]) + 400.0, *[float(v) for v in x[i, 1:]])  # bandwidth above 300
        d = pol.decide(Context(*row))
        assert "out_of_support" in d.flags
        s = pol.scores[pol.index.cell(row)]
        want = _brute_pick(cm, row, range(7), s, pol.residuals.quantiles, pol.residuals.lower)
        assert d.partition == want
        assert d.candidates == tuple(p for p in range(7) if s[p] <= 0.0)
        differs += d.partition not in d.candidates
    assert differs > 0


def test_table_round_trip_and_faults_of_the_new_arrays(tmp_path) -> None:
    rng = np.random.default_rng(8)
    t = _random_table(rng, support=_support())
    t.save(tmp_path)
    layout = __import__("json").loads((tmp_path / "table/table.json").read_text())

    def read(rel):
        return tmp_path / rel

    back = Table.from_layout(layout, read)
    assert back.bandwidth_log_quantiles.tolist() == t.bandwidth_log_quantiles.tolist()
    assert back.support.tolist() == t.support.tolist()
    assert back.bandwidth_levels() == quantile_levels(9)
    assert layout["files"]["bandwidth_log_quantiles"]["shape"] == [9]
    assert layout["files"]["support"]["shape"] == [2, 7]
    bad = {
        "nan quantile": ("bandwidth_log_quantiles", np.array([0.0, np.nan])),
        "decreasing": ("bandwidth_log_quantiles", np.array([0.5, 0.0])),
        "2-D quantiles": ("bandwidth_log_quantiles", np.zeros((2, 2))),
        "too many": ("bandwidth_log_quantiles", np.zeros(17)),
        "support shape": ("support", np.zeros((2, 6))),
        "support nan": ("support", np.where(np.eye(2, 7) > 0, np.nan, 0.0)),
        "support crossed": ("support", np.array([[1.0] * 7, [0.0] * 7])),
    }
    for why, (key, arr) in bad.items():
        np.save(tmp_path / f"table/{key}.npy", arr, allow_pickle=False)
        lay = dict(layout, files=dict(layout["files"]))
        lay["files"][key] = dict(lay["files"][key], shape=list(arr.shape))
        with pytest.raises(BundleError, match=key):
            Table.from_layout(lay, read)
        t.save(tmp_path)  # restore
        assert why
    # an older table: no quantiles, no support -> the single factor, flagged on the policy
    old = dict(layout, files={k: v for k, v in layout["files"].items() if k in
                              ("scores", "latency_ms", "cal_scores", "cal_bins")})  # fmt: skip
    o = Table.from_layout(old, read)
    assert o.bandwidth_log_quantiles is None and o.support is None
    pol = TablePolicy(o, cost_model(), "A", online="split")
    assert pol.bandwidth_fallback and pol.bandwidth_rule == "lower"
    assert not TablePolicy(t, cost_model(), "A").bandwidth_fallback


def test_bad_rule_and_window_are_config_errors() -> None:
    t = _random_table(np.random.default_rng(9))
    with pytest.raises(ConfigError, match="bandwidth_rule"):
        TablePolicy(t, cost_model(), bandwidth_rule="median")
    with pytest.raises(ConfigError, match="residual_window"):
        TablePolicy(t, cost_model(), residual_window=-1)
