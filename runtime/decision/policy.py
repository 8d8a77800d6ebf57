"""The device-side decision (docs/METHOD.md §6-8): context -> cell -> conformal set -> SLO guard
-> mode (R, M or A), with ACI state and a window for weighted CP. numpy only, no torch.

The per-decision path is pure Python over lists prepared at load (no numpy per call); the
set and guard of a cell at a set size are computed once and looked up after, and mode A
prices only the set's partitions (`CostModel.row_expected` with a subset).

Mode A is risk-neutral inside the set (docs/METHOD.md §7): among the set's partitions whose
live latency at the pessimistic bandwidth B̂·exp(lower) meets the SLO (its chance
constraint, which replaces the table's coarser guard in mode A), the one with the least
J averaged over B̂·exp(r_k), r_k the K quantiles of log(B_real / B̂) the table stores, blended
with a sliding window of the residuals the device observes (`ResidualWindow`). A context
outside the table's calibration support is decided by the same rule over every partition.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right, insort
from collections import deque
from typing import Any, NamedTuple

import numpy as np
from carboncp.runtime.decision.conformal import ACI, BinnedLogit, WeightedCP, check_alpha
from carboncp.runtime.decision.context import CONTEXT_FIELDS, Context, Decision
from carboncp.runtime.decision.table import CellIndex, Table
from carboncp.runtime.errors import BundleError, ConfigError

MODES = ("A", "M", "R")
ONLINE = ("aci", "weighted", "split")
BANDWIDTH_RULES = ("expected", "lower")
RESIDUAL_WINDOW = 200  # observed log(B_real / B̂) residuals mode A's quantiles blend in
BW_FLOOR_MBPS = 0.01  # residuals are taken of rates floored here (as the table's build does)
OUT_OF_SUPPORT = "out_of_support"
RELAXED = "slo_guard_relaxed"
_CACHE_MAX = 50_000  # cached sets (cells seen x set sizes); cleared when full


class _SetEntry(NamedTuple):
    """What (cell, latency cell, set size) fixes: the set, the guard, mode M's pick."""

    candidates: tuple[int, ...]  # the conformal set
    kept: tuple[int, ...]  # after the SLO guard (the set itself when the guard would empty it)
    scores: list[float]  # the cell's scores
    relaxed: bool
    flags: tuple[str, ...]
    single: int  # the only kept partition, or -1
    lowest_score: int  # mode M's pick (the lowest score among kept)
    decisions: dict[int, Decision]  # partition -> the (immutable) Decision, reused


class TablePolicy:
    """CarbonCP's decision from the threshold table (docs/METHOD.md §6-8; a `Policy`).

    Per inference: the context's table cell, the conformal set (partitions whose cell score is
    <= the threshold), then the SLO guard. Modes M and R use the table's guard (keeps the
    partitions whose conformal latency upper bound in the latency cell meets the SLO; when
    none would, the whole set is kept and the decision is flagged "slo_guard_relaxed").
    Mode A's guard is its own chance constraint, priced live: it keeps the set's partitions
    whose live latency at the conformal lower bound of the bandwidth meets the SLO (when none
    does, the fastest there, flagged "slo_guard_relaxed") and picks the lowest expected live
    J among them (`CostModel.row_expected`, J averaged over the bandwidth quantiles
    B̂·exp(r_k); ties to the lowest score). When two or more partitions survive, `mode` picks
    one: "A" as above, "M" the lowest table score, "R" one uniformly at random. A context
    outside the table's calibration support (`Table.support`) is flagged "out_of_support";
    mode A then applies its rule to every partition, not to the table's set.

    online: "aci" (default; α_t adapts from each realised context), "weighted" (weighted CP
    from a window of recent contexts, falling back to ACI while its ESS is below the floor
    or the window is still filling) or "split" (the table's fixed q̂).

    Parameters:
        table: the loaded threshold table (`Table.from_bundle`).
        cost_model: the bundle's `CostModel` (mode A's pricing, the oracle in `observe`);
            its `slo` (ms, or None) is mode A's and the oracle's SLO (the guard's is the
            table's `slo_ms`).
        mode: "A", "M" or "R".
        alpha: target miss rate in (0, 1); None uses the table's α, another value recomputes
            q̂ from the table's calibration scores.
        seed: seed of mode R's random choice.
        online: "aci", "weighted" or "split".
        gamma: ACI step size in (0, 1).
        window: how many recent contexts weighted CP fits its weights on.
        refit_every: observations between two weighted-CP refits.
        known_bandwidth: mode A prices at the seen bandwidth only (it is the realised one:
            the evaluation's known-bandwidth bound); no residual window.
        bandwidth_rule: "expected" (default: mean J over the bandwidth quantiles) or "lower"
            (the old rule: J at the single pessimistic bandwidth, kept for comparison). A
            table without quantiles (an older bundle) uses "lower" and sets
            `bandwidth_fallback`.
        residual_window: how many observed residuals log(B_real / B̂) the quantiles blend in
            (0: the table's quantiles only).
        table_guard: apply the table's SLO guard (None: in modes M and R, not in mode A,
            whose live chance constraint tests the same thing at the exact context; True in
            mode A is the rule before commit c6f2d4e, both tests, kept for comparison).

    Raises:
        ConfigError: `mode`, `online`, `alpha`, `gamma`, `bandwidth_rule` or
            `residual_window` is invalid, or (online="weighted") the table's weighted-CP
            classifier does not load.
    """

    def __init__(
        self,
        table: Table,
        cost_model: Any,
        mode: str = "A",
        alpha: float | None = None,
        seed: int = 0,
        online: str = "aci",
        *,
        gamma: float = 0.01,
        window: int = 500,
        refit_every: int = 100,
        known_bandwidth: bool = False,
        bandwidth_rule: str = "expected",
        residual_window: int = RESIDUAL_WINDOW,
        table_guard: bool | None = None,
    ):
        if bandwidth_rule not in BANDWIDTH_RULES:
            raise ConfigError(f"bandwidth_rule={bandwidth_rule!r} is not one of {BANDWIDTH_RULES}")
        if not isinstance(residual_window, int) or residual_window < 0:
            raise ConfigError(f"residual_window={residual_window!r} must be an integer >= 0")
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r} is not one of {MODES}")
        if online not in ONLINE:
            raise ConfigError(f"online={online!r} is not one of {ONLINE}")
        self.table = table
        self.cost = cost_model
        self.mode = mode
        self.online = online
        self.alpha = check_alpha(table.alpha if alpha is None else alpha)
        self.rng = random.Random(seed)
        self.index = CellIndex(table)
        self.p1 = table.n_partitions
        self._range = list(range(self.p1))
        self._all = tuple(self._range)
        self.scores: list[list[float]] = table.scores.astype(np.float64).tolist()
        # Mode A's chance constraint is the live latency at the conformal bandwidth bound; the
        # table's guard (latency cell + a marginal offset) is a coarser test of the same
        # constraint, and requiring both is stricter than α (measured: docs/RESULTS.md).
        self.table_guard = mode != "A" if table_guard is None else bool(table_guard)
        ok = table.guard_ok()
        self.guard: list[list[bool]] = (ok if self.table_guard else np.ones_like(ok)).tolist()
        # Each cell's scores in ascending order: the set at threshold q is the k partitions
        # scored <= q, k = bisect_right(sorted scores, q), so (cell, k) fixes the set and the
        # guard (the latency cell is a function of the cell) however q moves: the cache key is
        # cell * (P+2) + k.
        scores64 = table.scores.astype(np.float64)
        self._sorted_scores: list[list[float]] = np.sort(scores64, axis=1).tolist()
        self._k_span = self.p1 + 1
        cal = np.sort(table.cal_scores.astype(np.float64))
        if alpha is None or alpha == table.alpha:
            self.qhat = float(table.qhat)
        else:  # recompute q̂ at the requested α from the stored calibration scores
            from carboncp.runtime.decision.conformal import split_threshold

            self.qhat = split_threshold(cal, self.alpha)
        self.aci = ACI(self.alpha, gamma, cal)
        self.known_bandwidth = known_bandwidth
        quantiles = table.bandwidth_log_quantiles
        no_q = quantiles is None and not known_bandwidth
        self.bandwidth_rule = "lower" if no_q else bandwidth_rule
        # An older table without quantiles: mode A's single-factor rule, flagged here (the
        # decisions keep their flags; the device names it once at start-up).
        self.bandwidth_fallback = no_q
        if known_bandwidth:
            self.residuals = ResidualWindow([0.0], 0.0, 0.0, 0)
        else:
            level = table.meta.get("calibration", {}).get("bandwidth_alpha", table.alpha)
            self.residuals = ResidualWindow(
                [table.bandwidth_log_lower] if quantiles is None else quantiles.tolist(),
                table.bandwidth_log_lower,
                float(level),
                residual_window,
            )
        self._support: tuple[tuple[int, float, float], ...] = ()
        if table.support is not None:
            lo, hi = table.support.tolist()
            self._support = tuple(
                (f, lo[f], hi[f])
                for f in range(len(lo))
                if not (lo[f] == -math.inf and hi[f] == math.inf)
            )
        self.n_out_of_support = 0
        self.wcp: WeightedCP | None = None
        if online == "weighted":
            clf = BinnedLogit.from_dict(table.classifier)
            self.wcp = WeightedCP(clf, table.cal_bins, table.cal_scores, self.alpha)
            self._window: deque[tuple[float, ...]] = deque(maxlen=window)
        self.slo = getattr(cost_model, "slo", table.slo_ms)
        self.refit_every = refit_every
        self._sets: dict[int, _SetEntry] = {}
        self._since_refit = 0
        self.n_decisions = 0
        self.n_observed = 0
        self.n_errors = 0
        self.n_guard_relaxed = 0

    @property
    def bw_factor(self) -> float:
        """exp(the current pessimistic offset): mode A's SLO check prices at B̂ times this."""
        return self.residuals.lower_factor

    @classmethod
    def from_bundle(
        cls,
        bundle: Any,
        mode: str = "A",
        alpha: float | None = None,
        seed: int = 0,
        online: str = "aci",
        **kw: Any,
    ) -> TablePolicy:
        """Load the table, the profile and the objective the bundle was built for.

        Parameters:
            bundle: a loaded `Bundle` with 'table', 'profile' and 'objective' sections.
            mode, alpha, seed, online: as for `TablePolicy`.
            **kw: the keyword-only options of `TablePolicy` (gamma, window, refit_every,
                known_bandwidth, bandwidth_rule, residual_window, table_guard).

        Returns:
            The policy over the bundle's table and `cost_model_of(bundle)`.

        Raises:
            BundleError: the bundle lacks the table, profile or objective section, or one is
                malformed or disagrees with the bundle's partitions.
            ConfigError: the bundle's objective is invalid, or an argument is (as above).
        """
        from carboncp.runtime.decision.costs import cost_model_of

        cost = cost_model_of(bundle)  # a bundle without an objective: BundleError naming it
        return cls(Table.from_bundle(bundle), cost, mode, alpha, seed, online, **kw)

    # -- threshold -------------------------------------------------------------------------
    def threshold(self, row: Any) -> float:
        if self.online == "split":
            return self.qhat
        if self.wcp is not None and self.wcp.ready:
            return self.wcp.threshold_row(row)
        return self.aci.threshold()

    # -- Policy protocol -------------------------------------------------------------------
    def decide(self, seen: Context) -> Decision:
        """Choose the partition for one inference.

        Parameters:
            seen: the context observed before the inference.

        Returns:
            The `Decision`: the partition, the conformal set it came from (`candidates`), the
            mode, the table cell and flags ("slo_guard_relaxed" when the guard was relaxed,
            "out_of_support" when the context lies outside the table's calibration range).

        Raises:
            BundleError: the threshold is NaN or a cell's set is empty (a corrupt table or
                calibration scores; rebuild the bundle).
            ValueError: a field of `seen` is NaN or infinite (the device loop never passes
                one: it substitutes its last good reading, docs/FAULTS.md).
        """
        row = (
            seen.bandwidth_mbps,
            seen.rtt_ms,
            seen.device_load,
            seen.server_load,
            seen.device_gco2_per_kwh,
            seen.server_gco2_per_kwh,
            seen.battery_pct,
        )
        if not all(map(math.isfinite, row)):  # else a silent pick, or the cost model's IndexError
            bad = [
                f"{k}={v}" for k, v in zip(CONTEXT_FIELDS, row, strict=True) if not math.isfinite(v)
            ]
            raise ValueError(
                f"context {', '.join(bad)}: every field must be a finite number; pass the "
                "last good reading instead (as the device loop does)"
            )
        return self.decide_row(row)

    def decide_row(self, row: tuple[float, ...]) -> Decision:
        """decide() on a CONTEXT_FIELDS-ordered tuple (the evaluation's fast path)."""
        self.n_decisions += 1
        cell = self.index.cell(row)
        q = self.aci.threshold() if self.online == "aci" else self.threshold(row)
        if q != q:  # NaN: no partition scores <= q (bisect would count them all)
            raise BundleError(
                f"the conformal threshold is NaN (online={self.online!r}): the calibration "
                "scores are corrupt; rebuild the bundle with 'carboncp build'"
            )
        key = cell * self._k_span + bisect_right(self._sorted_scores[cell], q)
        st = self._sets.get(key)
        if st is None:
            st = self._set_of(cell, self.index.latency_cell(cell), q)
            if len(self._sets) >= _CACHE_MAX:
                self._sets.clear()
            self._sets[key] = st
        cand, kept, s, relaxed, flags, p, lowest, decisions = st
        if relaxed:
            self.n_guard_relaxed += 1
        oos = False
        for f, lo, hi in self._support:
            x = row[f]
            if not lo <= x <= hi:  # NaN too
                oos = True
                self.n_out_of_support += 1
                if self.mode == "A":  # the live cost over every partition, not the table's set
                    p = -1
                    kept = self._all
                break
        key = p  # of the reused Decision: p, or p + P + 1 when mode A relaxed its constraint
        if p < 0:  # two or more partitions survive the guard: the mode picks
            mode = self.mode
            if mode == "A":  # live cost of the kept partitions only
                p = key = self._mode_a(row, kept, s)
                if p < 0:  # none meets the SLO at the bound: the fastest, flagged once
                    p = key = -p - 1
                    if not relaxed:
                        self.n_guard_relaxed += 1
                        flags = (*flags, RELAXED)
                        key += self.p1
            elif mode == "M":
                p = key = lowest
            else:
                p = key = kept[self.rng.randrange(len(kept))]
        if oos:  # flagged (the table's set is kept for coverage)
            return Decision(p, cand, self.mode, cell, (*flags, OUT_OF_SUPPORT))
        # Decisions are immutable: reuse an equal one (creating a frozen dataclass costs more
        # than the whole table lookup).
        d = decisions.get(key)
        if d is None:
            d = decisions[key] = Decision(p, cand, self.mode, cell, flags)
        return d

    def _mode_a(self, row: tuple[float, ...], parts: tuple[int, ...], s: list[float]) -> int:
        """Mode A's pick among `parts`: the SLO at the pessimistic bandwidth, then the lowest
        J averaged over the bandwidth quantiles ("expected") or at the pessimistic bandwidth
        ("lower"); -(p + 1) when none meets the SLO there (p the fastest)."""
        res = self.residuals
        b_low = row[0] * res.lower_factor
        if self.bandwidth_rule == "lower":
            lat, j = self.cost.row(row, b_low, parts)
        else:
            b = row[0]
            lat, j = self.cost.row_expected(row, [b * m for m in res.factors], b_low, parts)
        return self._pick_a(parts, lat, j, s)

    def _set_of(self, cell: int, lcell: int, q: float) -> _SetEntry:
        """Conformal set at threshold q, the SLO guard (relaxed when it would empty the set)."""
        s = self.scores[cell]
        cand = [p for p in self._range if s[p] <= q]
        if not cand:  # every cell scores its best partition 0 and q >= 0: a broken table
            raise BundleError(
                f"table cell {cell} has no score <= threshold {q}: the table is corrupt; "
                "rebuild it with 'carboncp build'"
            )
        ok = self.guard[lcell]
        kept = tuple(p for p in cand if ok[p])
        relaxed = not kept
        if relaxed:
            kept = tuple(cand)
        return _SetEntry(
            candidates=tuple(cand),
            kept=kept,
            scores=s,
            relaxed=relaxed,
            flags=(RELAXED,) if relaxed else (),
            single=kept[0] if len(kept) == 1 else -1,
            lowest_score=min(kept, key=s.__getitem__),
            decisions={},
        )

    def _pick_a(
        self, kept: tuple[int, ...], lat: list[float], j: list[float], s: list[float]
    ) -> int:
        """Lowest J (expected or pessimistic) among partitions meeting the SLO at the
        pessimistic bandwidth; when none does, -(p + 1) for p the fastest there. Ties go to
        the lowest score (mode M), then to the lowest partition. lat and j are aligned with
        kept (row() returns them so).

        Plain loops (the per-decision path): scores are read only on a tie, and zip has no
        strict=, whose keyword argument costs more (~0.15 µs) than the loop over a set."""
        slo = self.slo
        p = -1
        best = 0.0
        if slo is None:
            for k, c in zip(kept, j):  # noqa: B905
                if p < 0 or c < best or (c == best and s[k] < s[p]):
                    p, best = k, c
            return p
        for k, t, c in zip(kept, lat, j):  # noqa: B905
            if t <= slo and (p < 0 or c < best or (c == best and s[k] < s[p])):
                p, best = k, c
        if p >= 0:
            return p
        for k, t in zip(kept, lat):  # noqa: B905 (none meets the SLO: the fastest)
            if p < 0 or t < best or (t == best and s[k] < s[p]):
                p, best = k, t
        return -p - 1

    def observe(self, decision: Decision, seen: Context, realised: Context) -> None:
        """Oracle under the realised context; err = oracle not in the set; update ACI/WCP.

        The oracle is the lowest-J partition within the SLO under `realised` (the fastest
        when none is). Call once per decision, after the inference.

        The residual log(B_real / B̂) enters mode A's window (`ResidualWindow`) when the
        link was measured between decide and observe: the decision offloaded (p < P), or
        the realised bandwidth differs from the seen one (a probe measured it).

        Parameters:
            decision: what `decide` returned for this inference.
            seen: the context `decide` was given (online="weighted" adds it to its window
                and refits every `refit_every` observations).
            realised: the context measured once the inference is done.
        """
        r = (
            realised.bandwidth_mbps,
            realised.rtt_ms,
            realised.device_load,
            realised.server_load,
            realised.device_gco2_per_kwh,
            realised.server_gco2_per_kwh,
            realised.battery_pct,
        )
        if decision.partition < self.p1 - 1 or realised.bandwidth_mbps != seen.bandwidth_mbps:
            self.observe_bandwidth(seen.bandwidth_mbps, realised.bandwidth_mbps)
        self.observe_label(decision, self.oracle_row(r), seen)

    def observe_bandwidth(self, seen_mbps: float, realised_mbps: float) -> None:
        """Add one measured transfer (or probe) to mode A's residual window: the residual
        log(max(realised, 0.01) / max(seen, 0.01)); ignored when either is not finite or
        the policy knows the bandwidth."""
        if self.known_bandwidth or not (math.isfinite(seen_mbps) and math.isfinite(realised_mbps)):
            return
        self.residuals.add(
            math.log(max(realised_mbps, BW_FLOOR_MBPS) / max(seen_mbps, BW_FLOOR_MBPS))
        )

    def oracle_row(self, row: tuple[float, ...]) -> int:
        """argmin J over partitions within the SLO (the fastest when none is): CostModel.oracle."""
        lat, j = self.cost.row(row, row[0])
        slo = self.slo
        if slo is None:
            return min(self._range, key=j.__getitem__)
        feas = [p for p in self._range if lat[p] <= slo]
        if feas:
            return min(feas, key=j.__getitem__)
        return min(self._range, key=lat.__getitem__)

    def observe_label(self, decision: Decision, oracle: int, seen: Context | tuple) -> None:
        """observe() when the oracle partition is already known (the evaluation's path)."""
        err = oracle not in decision.candidates
        self.n_observed += 1
        self.n_errors += err
        self.aci.update(err)
        if self.online == "aci":
            # α_t is final: compute (and cache) the next decision's threshold here, after the
            # inference, rather than on the next decision's path.
            self.aci.threshold()
        if self.wcp is not None:
            row = seen if isinstance(seen, tuple) else _row(seen)
            self._window.append(row)
            self._since_refit += 1
            if self._since_refit >= self.refit_every and len(self._window) >= min(
                self.refit_every, self._window.maxlen or 1
            ):
                self._since_refit = 0
                self.wcp.refit(self.wcp.clf.bins(np.asarray(self._window)))

    @property
    def coverage(self) -> float:
        return 1.0 - self.n_errors / self.n_observed if self.n_observed else float("nan")

    @property
    def events_since_refit(self) -> int:
        """Observations since weighted CP last refit its weights (0 right after a refit)."""
        return self._since_refit


class ResidualWindow:
    """Mode A's predictive distribution of r = log(B_real / B̂), updated online (issue 9, 3).

    The table's K quantiles q_k (levels (k + 1/2)/K) and its pessimistic offset are blended
    with the same quantiles of the last `size` observed residuals: with n of them,
    w = n / size and q_k = (1 − w)·table_k + w·window_k (averaging quantile functions: the
    1-D Wasserstein barycentre of the two distributions). Window quantiles interpolate
    linearly between order statistics (numpy's default), the offset at the table's bound
    level β. Once the window is full, the table's values no longer count.

    Parameters:
        table_quantiles: the table's K quantiles (non-decreasing).
        table_lower: the table's pessimistic offset (bandwidth_log_lower).
        level: the level β of that offset (its window counterpart is the β-quantile).
        size: the window's length; 0 keeps the table's values.
    """

    def __init__(
        self, table_quantiles: list[float], table_lower: float, level: float, size: int
    ) -> None:
        self.table_quantiles = [float(v) for v in table_quantiles]
        self.table_lower = float(table_lower)
        self.levels = [(k + 0.5) / len(self.table_quantiles) for k in range(len(table_quantiles))]
        self.level = float(level)
        self.size = size
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []
        self.quantiles = list(self.table_quantiles)
        self.lower = self.table_lower
        self._refresh()

    def __len__(self) -> int:
        return len(self._fifo)

    def add(self, r: float) -> None:
        """One observed residual (finite); the oldest leaves once `size` are held."""
        if self.size <= 0:
            return
        if len(self._fifo) >= self.size:
            old = self._fifo.popleft()
            del self._sorted[bisect_right(self._sorted, old) - 1]
        self._fifo.append(r)
        insort(self._sorted, r)
        w = len(self._fifo) / self.size
        xs = self._sorted
        self.quantiles = [
            (1.0 - w) * t + w * _quantile(xs, lv)
            for t, lv in zip(self.table_quantiles, self.levels, strict=True)
        ]
        self.lower = (1.0 - w) * self.table_lower + w * _quantile(xs, self.level)
        self._refresh()

    def _refresh(self) -> None:
        self.factors = [math.exp(q) for q in self.quantiles]
        self.lower_factor = math.exp(self.lower)


def _quantile(xs: list[float], level: float) -> float:
    """The `level` quantile of sorted xs, linear between order statistics (numpy's default)."""
    pos = level * (len(xs) - 1)
    i = int(pos)
    if i >= len(xs) - 1:
        return xs[-1]
    frac = pos - i
    return xs[i] + (xs[i + 1] - xs[i]) * frac


def _row(ctx: Context) -> tuple[float, ...]:
    return (
        ctx.bandwidth_mbps,
        ctx.rtt_ms,
        ctx.device_load,
        ctx.server_load,
        ctx.device_gco2_per_kwh,
        ctx.server_gco2_per_kwh,
        ctx.battery_pct,
    )
