"""Conformal prediction on the device and in the tooling (docs/METHOD.md §6, §7). numpy only.

- split CP: `split_threshold(scores, alpha)`, the ⌈(n+1)(1−α)⌉-th smallest score;
- weighted CP (Tibshirani, Barber, Candès, Ramdas 2019): `BinnedLogit` (a probabilistic
  classifier telling calibration contexts from recent test contexts, piecewise constant per
  feature, storable as JSON) and `WeightedCP` (the weighted quantile with the +inf mass, its
  effective sample size and a floor below which the caller falls back to ACI);
- adaptive conformal inference (Gibbs and Candès 2021): `ACI`;
- `lower_bound_offset` / `upper_bound_offset`: one-sided conformal bounds from residuals
  (mode A's pessimistic bandwidth, the SLO guard's latency bounds).
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from carboncp.runtime.checks import check_number
from carboncp.runtime.errors import ConfigError

INF = float("inf")


class SmallCalibrationWarning(UserWarning):
    """The calibration set is too small for α: the set becomes every partition."""


def check_alpha(alpha: float, key: str = "alpha") -> float:
    """α must be a finite number strictly between 0 and 1.

    Parameters:
        alpha: the value to check (anything float() accepts).
        key: the setting's name in the error message.

    Returns:
        alpha as a float.

    Raises:
        ConfigError: alpha is not a number, or not finite and in (0, 1).
    """
    try:
        a = float(alpha)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{key}={alpha!r} is not a number; use a value in (0, 1), e.g. 0.1"
        ) from exc
    try:
        return check_number(a, key, lo=0, hi=1, lo_open=True, hi_open=True)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; use a value such as 0.1") from None


def conformal_rank(n: int, alpha: float) -> int:
    """k = ⌈(n+1)(1−α)⌉ (1-based); k > n means the threshold is +inf."""
    # The tiny epsilon stops float noise, e.g. (9+1)*(1-0.1) = 9.000000000000002, bumping k.
    return max(1, math.ceil((n + 1) * (1.0 - alpha) - 1e-9))


def _clean_scores(scores: Any, what: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if np.isnan(s).any():
        raise ConfigError(f"{what}: {int(np.isnan(s).sum())} NaN values; fix the calibration data")
    return s


def split_threshold(scores: Any, alpha: float, *, warn: bool = True) -> float:
    """Split-CP threshold q̂: the ⌈(n+1)(1−α)⌉-th smallest calibration score.

    With n < 1/α − 1 no finite threshold has the guarantee: returns +inf (the full set)
    and warns, rather than failing.

    Parameters:
        scores: the calibration scores (any shape; flattened).
        alpha: target miss rate in (0, 1).
        warn: emit `SmallCalibrationWarning` when the threshold is +inf.

    Returns:
        q̂, or +inf when the calibration set is too small for α.

    Raises:
        ConfigError: alpha is invalid (`check_alpha`) or a score is NaN.
    """
    alpha = check_alpha(alpha)
    s = _clean_scores(scores)
    n = s.size
    k = conformal_rank(n, alpha)
    if k > n:
        if warn:
            warnings.warn(
                f"calibration set of {n} is too small for alpha={alpha} (needs n >= "
                f"{math.ceil(1 / alpha - 1)}); using the full set of partitions",
                SmallCalibrationWarning,
                stacklevel=2,
            )
        return INF
    return float(np.partition(s, k - 1)[k - 1])


def upper_bound_offset(residuals: Any, alpha: float) -> float:
    """One-sided conformal upper offset: P(r_new <= offset) >= 1 − α (r = realised − predicted).

    Returns +inf when there are too few residuals for α. Raises ConfigError as
    `split_threshold` does (invalid alpha, NaN residuals).
    """
    return split_threshold(residuals, alpha)


def lower_bound_offset(residuals: Any, alpha: float) -> float:
    """One-sided conformal lower offset: P(r_new >= offset) >= 1 − α (−inf when n is too small).

    Raises ConfigError as `split_threshold` does (invalid alpha, NaN residuals).
    """
    return -split_threshold(-_clean_scores(residuals, "residuals"), alpha)


class ACI:
    """Adaptive conformal inference: α_{t+1} = α_t + γ(α − err_t).

    The threshold is the calibration scores' ⌈(n+1)(1−α_t)⌉-th smallest: +inf when α_t is
    so small that no score qualifies, and 0 (only the best-scored partition) once α_t >= 1.
    α_t is kept in [−γ, 1 + γ]: the lower end is never passed (an infinite threshold covers),
    and cutting the upper end only removes upward steps, so the long-run miss rate stays <= α.

    Parameters:
        alpha: target miss rate in (0, 1).
        gamma: step size γ in (0, 1).
        sorted_scores: the calibration scores (sorted here; empty means +inf below α_t = 1).

    Raises:
        ConfigError: alpha or gamma is outside (0, 1).
    """

    def __init__(self, alpha: float, gamma: float = 0.01, sorted_scores: Sequence[float] = ()):
        self.alpha = check_alpha(alpha)
        if not (0.0 < float(gamma) < 1.0):
            raise ConfigError(f"aci gamma={gamma!r} is outside (0, 1); use e.g. 0.01")
        self.gamma = float(gamma)
        self.alpha_t = self.alpha
        self.scores = [float(x) for x in sorted(sorted_scores)]
        self.n_updates = 0
        self.n_errors = 0
        self._thr: float | None = None

    def update(self, err: bool | int | float) -> None:
        """One step of α_t with err_t = 1 when `err` is truthy (the set missed), else 0."""
        e = 1.0 if err else 0.0
        self.n_updates += 1
        self.n_errors += int(e)
        a = self.alpha_t + self.gamma * (self.alpha - e)
        self.alpha_t = min(max(a, -self.gamma), 1.0 + self.gamma)
        self._thr = None

    def threshold(self) -> float:
        """The current threshold at α_t (+inf, a calibration score, or 0 once α_t >= 1)."""
        if self._thr is None:  # α_t only changes in update(): cache the lookup
            self._thr = self._threshold()
        return self._thr

    def _threshold(self) -> float:
        a = self.alpha_t
        if a >= 1.0:
            return 0.0
        n = len(self.scores)
        if a <= 0.0:
            return INF
        k = conformal_rank(n, a)
        return INF if k > n else self.scores[k - 1]

    @property
    def error_rate(self) -> float:
        """Fraction of updates that were misses (0.0 before the first update)."""
        return self.n_errors / self.n_updates if self.n_updates else 0.0


class BinnedLogit:
    """P(test | x) by logistic regression on one-hot per-feature bins (an additive,
    piecewise-constant model), fitted by L2-regularised Newton steps.

    Flexible enough to follow a carbon zone's whole intensity range (a linear classifier
    missed coverage by 4 points while planning), tiny to store (one weight per bin), and
    cheap to evaluate in pure Python on the device.

    Parameters:
        edges: per feature, the increasing bin edges (feature f has len(edges[f]) + 1 bins).
        l2: the L2 penalty on the bin weights (the intercept is not penalised).
    """

    def __init__(self, edges: Sequence[Sequence[float]], l2: float = 0.1):
        self.edges = [np.asarray(e, dtype=np.float64) for e in edges]
        self.l2 = float(l2)
        self.offsets = np.cumsum([0] + [len(e) + 1 for e in self.edges])
        self.weights = np.zeros(int(self.offsets[-1]))
        self.intercept = 0.0

    @property
    def n_features(self) -> int:
        """F: the number of features (one edges list each)."""
        return len(self.edges)

    def bins(self, x: np.ndarray) -> np.ndarray:
        """(N, F) bin index of every feature of x, (N, F) or (F,) (np.searchsorted right: edge
        values go up)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return np.stack(
            [np.searchsorted(e, x[:, f], side="right") for f, e in enumerate(self.edges)], axis=1
        ).astype(np.int32)

    def _design(self, bins: np.ndarray) -> np.ndarray:
        n = bins.shape[0]
        z = np.zeros((n, int(self.offsets[-1])))
        for f in range(self.n_features):
            z[np.arange(n), self.offsets[f] + bins[:, f]] = 1.0
        return z

    def fit_bins(self, cal_bins: np.ndarray, test_bins: np.ndarray, iters: int = 12) -> BinnedLogit:
        """Fit on bin indices: calibration contexts labelled 0, test contexts labelled 1.

        Parameters:
            cal_bins, test_bins: (N, F) bin indices (`bins`) of the two sets of contexts.
            iters: at most this many Newton steps.

        Returns:
            self, fitted.
        """
        z = self._design(np.concatenate([cal_bins, test_bins]))
        y = np.concatenate([np.zeros(len(cal_bins)), np.ones(len(test_bins))])
        z = np.hstack([z, np.ones((len(z), 1))])
        beta = np.zeros(z.shape[1])
        reg = np.full(z.shape[1], self.l2)
        reg[-1] = 1e-6  # the intercept is not shrunk
        for _ in range(iters):
            eta = np.clip(z @ beta, -30, 30)
            p = 1.0 / (1.0 + np.exp(-eta))
            grad = z.T @ (p - y) + reg * beta
            h = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg)
            step = np.linalg.solve(h, grad)
            beta -= step
            if np.max(np.abs(step)) < 1e-6:
                break
        self.weights = beta[:-1]
        self.intercept = float(beta[-1])
        return self

    def fit(self, x_cal: np.ndarray, x_test: np.ndarray, iters: int = 12) -> BinnedLogit:
        """`fit_bins` on raw (N, F) contexts; returns self."""
        return self.fit_bins(self.bins(x_cal), self.bins(x_test), iters)

    def logit_bins(self, bins: np.ndarray) -> np.ndarray:
        """(N,) logit of P(test | x) for (N, F) bin indices."""
        idx = self.offsets[:-1][None, :] + bins
        return self.intercept + self.weights[idx].sum(axis=1)

    def logit_row(self, row: Sequence[float]) -> float:
        """Pure-Python logit for one context (the per-decision path)."""
        out = self.intercept
        w = self._wlist if hasattr(self, "_wlist") else self._cache()
        for f in range(self.n_features):
            out += w[f][bisect.bisect_right(self._elist[f], row[f])]
        return out

    def _cache(self) -> list[list[float]]:
        self._elist = [e.tolist() for e in self.edges]
        self._wlist = [
            self.weights[self.offsets[f] : self.offsets[f + 1]].tolist()
            for f in range(self.n_features)
        ]
        return self._wlist

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (kind, edges, l2, weights, intercept) that `from_dict` reads."""
        return {
            "kind": "binned_logit",
            "edges": [e.tolist() for e in self.edges],
            "l2": self.l2,
            "weights": self.weights.tolist(),
            "intercept": self.intercept,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BinnedLogit:
        """The classifier `to_dict` wrote (weights zero when the dict has none).

        Raises:
            ConfigError: the kind is not 'binned_logit', or 'weights' does not match 'edges'.
            KeyError: the dict has no 'edges'.
        """
        if d.get("kind") != "binned_logit":
            raise ConfigError(
                f"weighted-CP classifier kind {d.get('kind')!r} is not 'binned_logit'"
            )
        m = cls(d["edges"], d.get("l2", 0.1))
        w = np.asarray(d.get("weights", []), dtype=np.float64)
        if w.size:
            if w.size != m.weights.size:
                raise ConfigError("weighted-CP classifier: 'weights' length does not match 'edges'")
            m.weights = w
        m.intercept = float(d.get("intercept", 0.0))
        return m


def effective_sample_size(weights: Any) -> float:
    """(Σw)² / Σw²: how many equally weighted points the weighted calibration set is worth."""
    w = np.asarray(weights, dtype=np.float64)
    s2 = float((w * w).sum())
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0


def default_ess_floor(alpha: float) -> float:
    """Below this ESS the weighted threshold is too noisy to trust: fall back to ACI.

    10/α (100 at α = 0.1): about ten effective points beyond the rank the quantile needs.
    Never below 50. Raises ConfigError when alpha is invalid (`check_alpha`).
    """
    return max(50.0, 10.0 / check_alpha(alpha))


def weighted_quantile_inf(
    sorted_scores: np.ndarray, sorted_weights: np.ndarray, w_test: float, alpha: float
) -> float:
    """(1−α)-quantile of Σ p_i δ_{s_i} + p_{n+1} δ_{+inf}, with p ∝ (w_i, w_test).

    Parameters:
        sorted_scores: the calibration scores, ascending.
        sorted_weights: their weights w_i, in the same order.
        w_test: the test point's weight (its mass sits at +inf).
        alpha: target miss rate (not checked here).

    Returns:
        The smallest score whose cumulative mass reaches 1 − α, or +inf.
    """
    cum = np.cumsum(sorted_weights)
    total = cum[-1] + w_test if cum.size else w_test
    need = (1.0 - alpha) * total
    k = int(np.searchsorted(cum, need - 1e-12 * total, side="left"))
    return INF if k >= cum.size else float(sorted_scores[k])


class WeightedCP:
    """Weighted split CP under covariate shift, recomputed from a window of recent contexts.

    `refit(window_bins)` trains the classifier on calibration vs window and computes the
    calibration weights w_i = c/(1−c)·n_cal/n_test and their ESS; `threshold_row(row)` then
    costs one classifier evaluation and one bisection (pure Python).

    Parameters:
        classifier: the `BinnedLogit` to refit (its edges fixed at build).
        cal_bins: (n_cal, F) bin indices of the calibration contexts.
        cal_scores: (n_cal,) their scores.
        alpha: target miss rate in (0, 1).
        ess_floor: `ready` needs ESS >= this; None uses `default_ess_floor(alpha)`.

    Raises:
        ConfigError: alpha is invalid, or a calibration score is NaN.
    """

    def __init__(
        self,
        classifier: BinnedLogit,
        cal_bins: np.ndarray,
        cal_scores: np.ndarray,
        alpha: float,
        ess_floor: float | None = None,
    ):
        self.clf = classifier
        self.cal_bins = np.asarray(cal_bins, dtype=np.int32)
        self.cal_scores = _clean_scores(cal_scores, "calibration scores")
        self.alpha = check_alpha(alpha)
        self.ess_floor = default_ess_floor(alpha) if ess_floor is None else float(ess_floor)
        self.ess = 0.0
        self.ready = False
        self._ratio = 1.0

    def refit(self, window_bins: np.ndarray) -> float:
        """Fit on the window; returns the ESS (ready only when ESS >= floor).

        Parameters:
            window_bins: (n_test, F) bin indices of the recent contexts.

        Returns:
            The median ESS a window point sees; 0.0 (and not ready) when the window or the
            calibration set has fewer than two contexts.
        """
        window_bins = np.asarray(window_bins, dtype=np.int32)
        if len(window_bins) < 2 or len(self.cal_bins) < 2:
            self.ready = False
            return 0.0
        self.clf.fit_bins(self.cal_bins, window_bins)
        if hasattr(self.clf, "_wlist"):
            del self.clf._wlist
        self._ratio = len(self.cal_bins) / len(window_bins)
        w = np.exp(np.clip(self.clf.logit_bins(self.cal_bins), -30, 30)) * self._ratio
        order = np.argsort(self.cal_scores, kind="stable")
        self._scores = self.cal_scores[order]
        self._cum = np.cumsum(w[order]).tolist()
        self._scores_l = self._scores.tolist()
        # ESS as each recent test point sees it: (Σw_i + w(x))² / (Σw_i² + w(x)²), median over
        # the window. (Σw)²/Σw² over the calibration weights alone is scale-free: when the
        # zones do not overlap at all every w_i is uniformly tiny and it stays near n, while
        # the test point's own +inf mass makes every set full.
        w_win = np.exp(np.clip(self.clf.logit_bins(window_bins), -30, 30)) * self._ratio
        s1, s2 = float(w.sum()), float((w * w).sum())
        self.ess_cal = effective_sample_size(w)
        self.ess = float(np.median((s1 + w_win) ** 2 / (s2 + w_win**2)))
        self.ready = self.ess >= self.ess_floor
        return self.ess

    def weight_row(self, row: Sequence[float]) -> float:
        """w(x) = c/(1−c)·n_cal/n_test = exp(logit)·ratio."""
        return math.exp(min(30.0, max(-30.0, self.clf.logit_row(row)))) * self._ratio

    def threshold_row(self, row: Sequence[float], alpha: float | None = None) -> float:
        """Weighted threshold for one context (CONTEXT_FIELDS order); +inf when the +inf mass
        is needed. `alpha` overrides the target (not checked). Needs a `refit` that fitted
        (one with two or more contexts on each side) first: AttributeError otherwise.
        """
        a = self.alpha if alpha is None else alpha
        w = self.weight_row(row)
        cum = self._cum
        total = (cum[-1] if cum else 0.0) + w
        k = bisect.bisect_left(cum, (1.0 - a) * total * (1 - 1e-12))
        return INF if k >= len(cum) else self._scores_l[k]
