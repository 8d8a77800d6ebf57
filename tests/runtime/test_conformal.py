"""Statistical tests of split CP, weighted CP and ACI (runtime/decision/conformal.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from carboncp.runtime.decision.conformal import (
    ACI,
    BinnedLogit,
    SmallCalibrationWarning,
    WeightedCP,
    effective_sample_size,
    lower_bound_offset,
    split_threshold,
    upper_bound_offset,
    weighted_quantile_inf,
)
from carboncp.runtime.errors import ConfigError


def _classification_split(rng: np.random.Generator, n: int, k: int = 7):
    """Scores of a noisy classifier over k partitions, and labels drawn from its softmax."""
    logits = rng.normal(0, 2.0, size=(n, k))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    q = -logits  # Q: lower is better
    s = q - q.min(1, keepdims=True)
    return s, y


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_split_cp_coverage_over_many_random_splits(alpha: float) -> None:
    rng = np.random.default_rng(1)
    n_cal, n_test, reps = 200, 200, 200
    covs = []
    for _ in range(reps):
        s, y = _classification_split(rng, n_cal + n_test)
        perm = rng.permutation(n_cal + n_test)
        cal, test = perm[:n_cal], perm[n_cal:]
        qhat = split_threshold(s[cal, y[cal]], alpha)
        covs.append(np.mean(s[test, y[test]] <= qhat))
    mean = float(np.mean(covs))
    # Coverage of one split: Beta-distributed given the calibration set plus test sampling.
    sd = math.sqrt(alpha * (1 - alpha) * (1 / (n_cal + 2) + 1 / n_test) / reps)
    assert mean >= 1 - alpha - 4 * sd, (mean, sd)
    # ... and not conservative beyond the 1/(n+1) rounding of the rank (the rule is tight).
    assert mean <= 1 - alpha + 1 / (n_cal + 1) + 4 * sd, (mean, sd)


def test_split_threshold_small_n_gives_full_set_with_warning() -> None:
    with pytest.warns(SmallCalibrationWarning):
        assert split_threshold([0.1] * 8, 0.1) == math.inf  # n = 8 < 1/0.1 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(split_threshold(np.arange(9.0), 0.1))  # n = 9 is enough
        assert split_threshold(np.arange(9.0), 0.1) == 8.0  # ⌈10·0.9⌉ = 9th smallest
    with pytest.warns(SmallCalibrationWarning):
        assert split_threshold([], 0.2) == math.inf


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), "x", None])
def test_alpha_out_of_range_is_a_config_error(alpha: object) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        split_threshold([1.0, 2.0], alpha)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ACI(alpha)  # type: ignore[arg-type]


def test_nan_scores_are_refused() -> None:
    with pytest.raises(ConfigError, match="NaN"):
        split_threshold([1.0, float("nan")] * 20, 0.1)


def test_one_sided_bounds_cover() -> None:
    rng = np.random.default_rng(2)
    r = rng.standard_t(3, size=4000)
    up = upper_bound_offset(r[:2000], 0.1)
    lo = lower_bound_offset(r[:2000], 0.1)
    assert abs(np.mean(r[2000:] <= up) - 0.9) < 0.03
    assert abs(np.mean(r[2000:] >= lo) - 0.9) < 0.03
    assert lo < 0 < up


def _shifted(rng: np.random.Generator, n: int, mean: float):
    x = rng.normal(mean, 1.0, size=n)
    s = np.abs(rng.normal(0, 1, size=n)) * (0.3 + x**2)  # heteroscedastic: shift hurts
    return x[:, None], s


def test_weighted_cp_recovers_coverage_under_covariate_shift() -> None:
    rng = np.random.default_rng(3)
    alpha = 0.1
    split_cov, weighted_cov, ess = [], [], []
    for _ in range(5):
        x_cal, s_cal = _shifted(rng, 3000, 0.0)
        x_win, _ = _shifted(rng, 1000, 1.2)  # recent unlabelled test contexts
        x_test, s_test = _shifted(rng, 2000, 1.2)
        q = split_threshold(s_cal, alpha)
        split_cov.append(np.mean(s_test <= q))
        clf = BinnedLogit([np.linspace(-3, 4, 22)])
        wcp = WeightedCP(clf, clf.bins(x_cal), s_cal, alpha)
        ess.append(wcp.refit(clf.bins(x_win)))
        assert wcp.ready
        qs = np.array([wcp.threshold_row(row) for row in x_test.tolist()])
        weighted_cov.append(np.mean(s_test <= qs))
    assert np.mean(split_cov) < 1 - alpha - 0.05, split_cov  # split CP misses under shift
    assert np.mean(weighted_cov) >= 1 - alpha - 0.02, weighted_cov
    assert all(100 < e < 3000 for e in ess)


def test_weighted_cp_ess_collapses_without_overlap() -> None:
    rng = np.random.default_rng(4)
    x_cal, s_cal = _shifted(rng, 2000, 0.0)
    x_win, _ = _shifted(rng, 500, 8.0)
    clf = BinnedLogit([np.linspace(-3, 10, 27)], l2=0.1)
    wcp = WeightedCP(clf, clf.bins(x_cal), s_cal, 0.1)
    ess = wcp.refit(clf.bins(x_win))
    assert ess < wcp.ess_floor and not wcp.ready


def test_weighted_quantile_equals_split_cp_with_equal_weights() -> None:
    rng = np.random.default_rng(5)
    s = np.sort(rng.random(99))
    for alpha in (0.05, 0.1, 0.2):
        assert weighted_quantile_inf(s, np.ones(99), 1.0, alpha) == split_threshold(s, alpha)
    assert weighted_quantile_inf(s[:5], np.ones(5), 1.0, 0.1) == math.inf
    assert effective_sample_size(np.ones(50)) == pytest.approx(50)


def test_binned_logit_roundtrip_and_row_path() -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(0, 1, size=(500, 2))
    b = rng.normal(0.5, 1, size=(300, 2))
    clf = BinnedLogit([np.linspace(-2, 2, 9), [-1.0, 0.0, 1.0]]).fit(a, b)
    clone = BinnedLogit.from_dict(clf.to_dict())
    rows = rng.normal(0, 1.5, size=(50, 2))
    ref = clf.logit_bins(clf.bins(rows))
    assert np.allclose([clone.logit_row(r) for r in rows.tolist()], ref)
    # The classifier learnt the direction of the shift.
    assert (
        clf.logit_bins(clf.bins(np.array([[1.5, 1.5]])))[0]
        > clf.logit_bins(clf.bins(np.array([[-1.5, -1.5]])))[0]
    )


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_aci_long_run_error_near_alpha_under_drift(alpha: float) -> None:
    rng = np.random.default_rng(7)
    cal = np.abs(rng.normal(0, 1, size=1000))
    aci = ACI(alpha, gamma=0.01, sorted_scores=np.sort(cal))
    q_split = split_threshold(cal, alpha)
    t_total = 20000
    errs_split = 0
    for t in range(t_total):
        scale = 1.0 + 1.5 * t / t_total  # scores drift upward: a split threshold undercovers
        s = abs(rng.normal(0, scale))
        errs_split += s > q_split
        aci.update(s > aci.threshold())
    assert abs(aci.error_rate - alpha) <= 0.01, aci.error_rate
    assert errs_split / t_total > alpha + 0.1


def test_aci_threshold_ends() -> None:
    aci = ACI(0.1, gamma=0.5, sorted_scores=[0.1, 0.2, 0.3])
    assert aci.threshold() == math.inf  # n = 3 is too small for α = 0.1
    for _ in range(40):
        aci.update(False)
    assert aci.alpha_t == pytest.approx(1.5) and aci.threshold() == 0.0
    for _ in range(20):
        aci.update(True)
    assert aci.alpha_t == pytest.approx(-0.5) and aci.threshold() == math.inf
