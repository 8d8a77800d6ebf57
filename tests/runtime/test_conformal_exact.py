"""Exact checks of the conformal arithmetic (docs/METHOD.md §6), where statistical tests lack
the power: the split-CP rank for every small n, weighted CP's +∞ mass of the test point
(0.894 against 0.8906 coverage is invisible to a test with a 0.88 floor, an exact threshold
is not), its weights and ESS, ACI's update and clipping, the ESS floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from carboncp.runtime.decision.conformal import (
    ACI,
    INF,
    BinnedLogit,
    SmallCalibrationWarning,
    WeightedCP,
    conformal_rank,
    default_ess_floor,
    effective_sample_size,
    lower_bound_offset,
    split_threshold,
    upper_bound_offset,
    weighted_quantile_inf,
)


def _weighted_quantile_by_definition(scores, weights, w_test, alpha) -> float:
    """The smallest s_k with Σ_{i<=k} p_i >= 1 − α, p ∝ (w_1..w_n, w_test) (the +∞ point last)."""
    order = np.argsort(scores, kind="stable")
    total = float(np.sum(weights)) + w_test
    acc = 0.0
    for i in order:
        acc += weights[i] / total
        if acc >= 1 - alpha - 1e-12:
            return float(scores[i])
    return INF


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.25, 0.5, 0.9])
def test_split_rank_is_exact_for_every_small_n(alpha: float) -> None:
    for n in range(0, 80):
        k = math.ceil(round((n + 1) * (1 - alpha), 9))
        want = INF if k > n else float(k - 1)  # scores 0..n-1: the k-th smallest is k − 1
        with pytest.warns() if k > n else _no_warning():
            got = split_threshold(np.arange(n, dtype=float)[::-1], alpha)
        assert got == want, (n, alpha)
        assert conformal_rank(n, alpha) == max(1, k)


class _no_warning:
    def __enter__(self):
        import warnings

        self._c = warnings.catch_warnings()
        self._c.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._c.__exit__(*exc)


def test_split_threshold_without_warning_flag_and_bounds() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert split_threshold([1.0, 2.0], 0.1, warn=False) == INF
    r = np.arange(1.0, 20.0)  # 19 residuals 1..19, α = 0.1: rank 18
    assert upper_bound_offset(r, 0.1) == 18.0
    assert lower_bound_offset(r, 0.1) == 2.0  # the 18th largest
    assert lower_bound_offset(r[:5], 0.1) == -INF


def test_weighted_quantile_counts_the_test_points_infinite_mass() -> None:
    s = np.arange(1.0, 11.0)  # 10 scores, weight 1 each
    w = np.ones(10)
    # w_test = 1: total 11, need 0.9·11 = 9.9 -> the 10th score
    assert weighted_quantile_inf(s, w, 1.0, 0.1) == 10.0
    # without the test point's mass the need would be 9 -> the 9th: the +∞ mass matters
    assert weighted_quantile_inf(s, w, 0.0, 0.1) == 9.0
    # a heavy test point (w = 2): need 10.8 > 10, only +∞ reaches it
    assert weighted_quantile_inf(s, w, 2.0, 0.1) == INF
    # exactly at the boundary: w_test = 10/9 - tiny -> total·0.9 just <= 10
    assert weighted_quantile_inf(s, w, 1.1, 0.1) == 10.0
    assert weighted_quantile_inf(np.array([]), np.array([]), 1.0, 0.1) == INF
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        sc = np.sort(rng.random(n))
        wt = rng.exponential(1.0, n)
        wx = float(rng.exponential(1.0))
        a = float(rng.choice([0.05, 0.1, 0.2, 0.5]))
        assert weighted_quantile_inf(sc, wt, wx, a) == _weighted_quantile_by_definition(
            sc, wt, wx, a
        )


def _wcp(alpha: float = 0.1, floor: float | None = None) -> tuple[WeightedCP, np.ndarray]:
    """Two bins on one feature (edge 0.5); calibration: 60 points in bin 0 with scores
    0.00..0.59, 40 in bin 1 with scores 1.00..1.39; the window is mostly bin 1."""
    clf = BinnedLogit([[0.5]], l2=0.1)
    cal_bins = np.array([[0]] * 60 + [[1]] * 40)
    cal_scores = np.concatenate([np.arange(60) / 100, 1 + np.arange(40) / 100])
    wcp = WeightedCP(clf, cal_bins, cal_scores, alpha, ess_floor=floor)
    window = np.array([[0]] * 10 + [[1]] * 30)
    return wcp, window


def test_weighted_cp_weights_ess_and_threshold_by_definition() -> None:
    wcp, window = _wcp(floor=1.0)
    ess = wcp.refit(window)
    # w_i = c/(1−c)·n_cal/n_test = exp(logit)·100/40, from the fitted classifier
    logit = wcp.clf.logit_bins(wcp.cal_bins)
    w = np.exp(logit) * (100 / 40)
    assert wcp._ratio == 100 / 40
    assert wcp.ess_cal == pytest.approx(effective_sample_size(w), rel=1e-12)
    w_win = np.exp(wcp.clf.logit_bins(window)) * (100 / 40)
    want_ess = np.median((w.sum() + w_win) ** 2 / ((w * w).sum() + w_win**2))
    assert ess == pytest.approx(want_ess, rel=1e-12) and wcp.ess == ess
    assert wcp.ready  # floor 1
    # the classifier learnt the shift: bin-1 points weigh more than bin-0 points
    assert w[-1] > 2 * w[0]
    for x in (0.2, 0.9):
        wx = math.exp(wcp.clf.logit_row([x])) * (100 / 40)
        assert wcp.weight_row([x]) == pytest.approx(wx, rel=1e-12)
        for a in (0.05, 0.1, 0.3, 0.6):
            want = _weighted_quantile_by_definition(wcp.cal_scores, w, wx, a)
            assert wcp.threshold_row([x], a) == want, (x, a)
        assert wcp.threshold_row([x]) == _weighted_quantile_by_definition(
            wcp.cal_scores, w, wx, 0.1
        )


def test_weighted_cp_ready_only_at_or_above_the_floor() -> None:
    wcp, window = _wcp()
    ess = wcp.refit(window)
    assert wcp.ess_floor == 100.0 and not wcp.ready and 1 < ess < 100
    at, _ = _wcp(floor=ess)
    assert at.refit(window) == ess and at.ready  # >=: exactly at the floor is enough
    above, _ = _wcp(floor=ess * (1 + 1e-9))
    above.refit(window)
    assert not above.ready


def test_weighted_cp_refit_needs_two_points_on_each_side() -> None:
    wcp, window = _wcp(floor=1.0)
    assert wcp.refit(window[:1]) == 0.0 and not wcp.ready
    assert wcp.refit(window[:2]) > 0 and wcp.ready
    one_cal = WeightedCP(BinnedLogit([[0.5]]), np.array([[0]]), np.array([0.1]), 0.1, 1.0)
    assert one_cal.refit(window) == 0.0 and not one_cal.ready


def test_effective_sample_size_and_floor_exact() -> None:
    assert effective_sample_size([1.0, 2.0, 3.0]) == pytest.approx(36 / 14, rel=1e-15)
    assert effective_sample_size([0.0, 0.0]) == 0.0
    assert effective_sample_size([5.0]) == 1.0
    assert default_ess_floor(0.1) == pytest.approx(100.0)
    assert default_ess_floor(0.05) == pytest.approx(200.0)
    assert default_ess_floor(0.2) == 50.0 and default_ess_floor(0.5) == 50.0


def test_aci_update_and_clipping_exact() -> None:
    aci = ACI(0.2, gamma=0.1, sorted_scores=[0.5, 0.1, 0.3, 0.2, 0.4])
    assert aci.scores == [0.1, 0.2, 0.3, 0.4, 0.5] and aci.alpha_t == 0.2
    aci.update(True)  # 0.2 + 0.1·(0.2 − 1) = 0.12
    assert aci.alpha_t == pytest.approx(0.12, abs=1e-15)
    assert (aci.n_updates, aci.n_errors, aci.error_rate) == (1, 1, 1.0)
    aci.update(0)  # + 0.1·0.2
    assert aci.alpha_t == pytest.approx(0.14, abs=1e-15) and aci.error_rate == 0.5
    assert aci.threshold() == INF  # ⌈6·0.86⌉ = 6 > 5
    for _ in range(3):
        aci.update(False)
    assert aci.alpha_t == pytest.approx(0.2, abs=1e-12)
    assert aci.threshold() == 0.5  # ⌈6·0.8⌉ = 5 <= 5: the 5th smallest
    assert ACI(0.2).error_rate == 0.0


def test_aci_threshold_follows_alpha_t_exactly() -> None:
    scores = list(np.arange(1.0, 20.0))  # 19 scores
    aci = ACI(0.1, gamma=0.5, sorted_scores=scores)
    for a_t, want in [(0.1, 18.0), (0.5, 10.0), (0.04, INF), (0.95, 1.0), (0.0, INF),
                      (-0.2, INF), (1.0, 0.0), (1.3, 0.0)]:  # fmt: skip
        aci.alpha_t, aci._thr = a_t, None
        assert aci.threshold() == want, a_t
    aci = ACI(0.5, gamma=0.5, sorted_scores=scores)
    aci.update(False)  # 0.75
    aci.update(False)  # 1.0 exactly: only the best-scored partition
    assert aci.alpha_t == 1.0 and aci.threshold() == 0.0
    for _ in range(3):  # 1.25, 1.5, then clipped at 1 + γ
        aci.update(False)
    assert aci.alpha_t == 1.5
    for _ in range(10):  # −0.25 each
        aci.update(True)
    assert aci.alpha_t == -0.5  # clipped at −γ


def test_aci_gamma_bounds() -> None:
    from carboncp.runtime.errors import ConfigError

    for g in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="gamma"):
            ACI(0.1, gamma=g)
    assert ACI(0.1, gamma=0.999).gamma == 0.999 and ACI(0.1).gamma == 0.01


def test_binned_logit_bins_edges_go_up_and_storage() -> None:
    clf = BinnedLogit([[1.0, 2.0], []])
    assert clf.bins(np.array([[0.5, 9], [1.0, 9], [1.5, 9], [2.0, 9], [3.0, 9]]))[:, 0].tolist() == [
        0, 1, 1, 2, 2,
    ]  # fmt: skip
    assert clf.offsets.tolist() == [0, 3, 4] and clf.n_features == 2
    d = clf.to_dict()
    assert d["kind"] == "binned_logit" and d["l2"] == 0.1
    from carboncp.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="kind"):
        BinnedLogit.from_dict({**d, "kind": "other"})
    with pytest.raises(ConfigError, match="length"):
        BinnedLogit.from_dict({**d, "weights": [1.0]})
    e = BinnedLogit.from_dict({**d, "weights": [0.1, 0.2, 0.3, 0.4], "intercept": -1.0})
    assert e.logit_row([1.5, 0.0]) == pytest.approx(-1.0 + 0.2 + 0.4)
    assert BinnedLogit.from_dict({"kind": "binned_logit", "edges": [[0.0]]}).intercept == 0.0


def test_split_threshold_is_the_kth_smallest_of_large_shuffled_sets() -> None:
    rng = np.random.default_rng(11)
    for n in (200, 1001, 5000):
        s = rng.random(n)
        for alpha in (0.05, 0.1, 0.33):
            k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
            assert split_threshold(s, alpha) == np.sort(s)[k - 1]


def test_binned_logit_fit_reaches_the_penalised_optimum() -> None:
    """Newton's method stops at the minimum of the L2-penalised log-loss: the gradient
    z'(p − y) + λβ (λ = l2 on the bin weights, 1e-6 on the intercept) vanishes there."""
    rng = np.random.default_rng(3)
    clf = BinnedLogit([[0.0, 1.0], [0.5]], l2=0.3)
    a = np.column_stack([rng.normal(0.0, 1.0, 400), rng.random(400)])
    b = np.column_stack([rng.normal(0.8, 1.0, 200), rng.random(200) * 0.7])
    clf.fit(a, b)
    z = clf._design(np.concatenate([clf.bins(a), clf.bins(b)]))
    z = np.hstack([z, np.ones((len(z), 1))])
    y = np.concatenate([np.zeros(400), np.ones(200)])
    beta = np.concatenate([clf.weights, [clf.intercept]])
    p = 1 / (1 + np.exp(-(z @ beta)))
    lam = np.full(beta.size, 0.3)
    lam[-1] = 1e-6
    grad = z.T @ (p - y) + lam * beta
    assert np.abs(grad).max() < 1e-6
    # the fitted odds follow the data: mean predicted P(test) = share of test contexts
    assert p.mean() == pytest.approx(200 / 600, abs=1e-3)


def test_fresh_classifier_and_weighted_cp_before_any_refit() -> None:
    assert BinnedLogit([[0.5]]).logit_row([0.2]) == 0.0  # no shift known yet: odds 1
    d = {"kind": "binned_logit", "edges": [[0.5]], "weights": [0.5, -0.5], "intercept": 0.25}
    clf = BinnedLogit.from_dict(d)
    assert clf.l2 == 0.1  # the default regularisation
    wcp = WeightedCP(clf, np.array([[0], [1]]), np.array([0.1, 0.2]), 0.1)
    assert wcp.ess == 0.0 and not wcp.ready
    assert wcp.weight_row([0.9]) == pytest.approx(math.exp(-0.25), rel=1e-15)  # ratio 1
    assert effective_sample_size([0.1, 0.2, 0.3]) == pytest.approx(36 / 14, rel=1e-12)
    two = WeightedCP(BinnedLogit([[0.5]]), np.array([[0], [1]]), np.array([0.1, 0.2]), 0.1, 0.5)
    assert two.refit(np.array([[1], [1], [0]])) > 0 and two.ready  # two calibration points do


@pytest.mark.parametrize(
    "order",
    ["ascending", "descending", "organ_pipe"],
)
def test_split_threshold_rank_for_every_k_of_structured_orders(order: str) -> None:
    """The k-th smallest for EVERY rank k of n = 1000 structured scores. np.partition puts
    index k-1 in place only when asked for k-1: partitioning at k-2 and reading k-1 (a rank
    bug) gives the right value for most k and shuffles, but not for all k of these orders."""
    n = 1000
    base = np.arange(n, dtype=np.float64)
    s = {
        "ascending": base,
        "descending": base[::-1].copy(),
        "organ_pipe": np.r_[np.arange(0, n, 2), np.arange(n - 1, 0, -2)].astype(np.float64),
    }[order]
    for k in range(1, n + 1):
        alpha = 1.0 - (k - 0.5) / (n + 1)  # (n+1)(1-alpha) = k - 1/2: rank k
        assert split_threshold(s, alpha) == k - 1, k


class _FlatLogit:
    """A classifier stub whose logit is 0 everywhere: w(x) = ratio."""

    def logit_row(self, row) -> float:
        return 0.0


def _weighted_with(cum: list[float], scores: list[float], w_test: float) -> WeightedCP:
    wcp = WeightedCP(BinnedLogit([[0.5]]), np.zeros((2, 1), np.int32), np.zeros(2), 0.5)
    wcp.clf = _FlatLogit()  # type: ignore[assignment]
    wcp._ratio = w_test
    wcp._cum = cum
    wcp._scores_l = scores
    return wcp


def test_weighted_threshold_row_when_the_mass_lands_exactly_on_a_score() -> None:
    """Unit weights 1, 1, 1 and a test weight 1: total 4. At alpha = 0.5 the needed mass
    2.0 is reached exactly by the second score (the smallest whose cumulative mass reaches
    1 - alpha, as weighted_quantile_inf): a tolerance that pushes the target up instead of
    down takes the third. At alpha = 0.1 (3.6 > 3) only the +inf mass reaches: +inf."""
    wcp = _weighted_with([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], 1.0)
    assert wcp.threshold_row((0.0,), 0.5) == 0.2
    assert weighted_quantile_inf(np.array([0.1, 0.2, 0.3]), np.ones(3), 1.0, 0.5) == 0.2
    assert wcp.threshold_row((0.0,), 0.25) == 0.3  # 3.0 of 4 exactly
    assert wcp.threshold_row((0.0,), 0.1) == INF  # the test point's +inf mass is needed
    assert wcp.threshold_row((0.0,), 0.75) == 0.1  # 1.0 of 4 exactly


def test_weighted_quantile_reaches_a_mass_that_rounding_puts_just_short() -> None:
    """Weights 3000, 3000 and a test weight 4000 at alpha = 0.7: the first score holds 0.3
    of the mass, exactly 1 - alpha, so it is the quantile. In floats (1 - 0.7) * 10000 is
    3000.0000000000005: only a tolerance relative to the total (not 1e-12 / total)
    absorbs that rounding."""
    s = np.array([0.0, 1.0])
    assert weighted_quantile_inf(s, np.array([3000.0, 3000.0]), 4000.0, 0.7) == 0.0
    assert weighted_quantile_inf(s * 5, np.array([3e5, 1e5]), 6e5, 0.7) == 0.0
    assert _weighted_quantile_by_definition(s, np.array([3000.0, 3000.0]), 4000.0, 0.7) == 0.0


def test_the_small_calibration_warning_names_the_callers_line() -> None:
    """stacklevel=2: the warning points at the code that called split_threshold (here, this
    file), where the too-small calibration set came from, not at conformal.py or pytest."""
    with pytest.warns(SmallCalibrationWarning) as rec:
        split_threshold(np.zeros(5), 0.1)
    assert len(rec) == 1 and rec[0].filename == __file__
