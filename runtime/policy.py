"""The device-side decision (METHOD.md §6-8): context -> cell -> conformal set -> SLO guard
-> mode (R, M or A), with ACI state and a window for weighted CP. numpy only, no torch.

The per-decision path is pure Python over lists prepared at load (no numpy per call).
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any

import numpy as np
from carboncp.runtime.conformal import ACI, BinnedLogit, WeightedCP, check_alpha
from carboncp.runtime.context import Context, Decision
from carboncp.runtime.errors import ConfigError
from carboncp.runtime.table import CellIndex, Table

MODES = ("A", "M", "R")
ONLINE = ("aci", "weighted", "split")


class TablePolicy:
    """CarbonCP's decision from the threshold table.

    online: "aci" (default; α_t adapts from each realised context), "weighted" (weighted CP
    from a window of recent contexts, falling back to ACI while its ESS is below the floor
    or the window is still filling) or "split" (the table's fixed q̂).
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
    ):
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
        self.scores: list[list[float]] = table.scores.astype(np.float64).tolist()
        self.guard: list[list[bool]] = table.guard_ok().tolist()
        cal = np.sort(table.cal_scores.astype(np.float64))
        if alpha is None or alpha == table.alpha:
            self.qhat = float(table.qhat)
        else:  # recompute q̂ at the requested α from the stored calibration scores
            from carboncp.runtime.conformal import split_threshold

            self.qhat = split_threshold(cal, self.alpha)
        self.aci = ACI(self.alpha, gamma, cal)
        self.bw_factor = 1.0 if known_bandwidth else math.exp(table.bandwidth_log_lower)
        self.wcp: WeightedCP | None = None
        if online == "weighted":
            clf = BinnedLogit.from_dict(table.classifier)
            self.wcp = WeightedCP(clf, table.cal_bins, table.cal_scores, self.alpha)
            self._window: deque[tuple[float, ...]] = deque(maxlen=window)
        self.slo = getattr(cost_model, "slo", table.slo_ms)
        self.refit_every = refit_every
        self._decisions: dict[tuple, Decision] = {}
        self._since_refit = 0
        self.n_decisions = 0
        self.n_observed = 0
        self.n_errors = 0
        self.n_guard_relaxed = 0

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
        """Load the table, the profile and the objective the bundle was built for."""
        from carboncp.runtime.costs import CostModel
        from carboncp.runtime.objective import Objective
        from carboncp.runtime.profile import load_profile

        obj = bundle.section("objective")
        if obj is None:
            raise ConfigError(
                f"{bundle.path}: the bundle has no 'objective' section; build it with 'carboncp build'"
            )
        cost = CostModel(load_profile(bundle), Objective.from_dict(obj))
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
        row = (
            seen.bandwidth_mbps,
            seen.rtt_ms,
            seen.device_load,
            seen.server_load,
            seen.device_gco2_per_kwh,
            seen.server_gco2_per_kwh,
            seen.battery_pct,
        )
        return self.decide_row(row)

    def decide_row(self, row: tuple[float, ...]) -> Decision:
        """decide() on a CONTEXT_FIELDS-ordered tuple (the evaluation's fast path)."""
        self.n_decisions += 1
        cell, lcell = self.index.cell_of(row)
        s = self.scores[cell]
        q = self.threshold(row)
        cand = [p for p in self._range if s[p] <= q]
        ok = self.guard[lcell]
        kept = [p for p in cand if ok[p]]
        flags: tuple[str, ...] = ()
        if not kept:
            kept = cand
            flags = ("slo_guard_relaxed",)
            self.n_guard_relaxed += 1
        if len(kept) == 1:
            p = kept[0]
        elif self.mode == "M":
            p = min(kept, key=s.__getitem__)
        elif self.mode == "R":
            p = kept[self.rng.randrange(len(kept))]
        else:
            b_low = row[0] * self.bw_factor
            lat, j = self.cost.row((b_low, *row[1:]), b_low)
            p = self._pick_a(kept, lat, j, s)
        # Decisions are immutable: reuse an equal one (creating a frozen dataclass costs more
        # than the whole table lookup).
        key = (p, *cand, -1, cell, flags)
        d = self._decisions.get(key)
        if d is None:
            if len(self._decisions) > 100_000:
                self._decisions.clear()
            d = self._decisions[key] = Decision(p, tuple(cand), self.mode, cell, flags)
        return d

    def _pick_a(self, kept: list[int], lat: list[float], j: list[float], s: list[float]) -> int:
        """Lowest live J among partitions meeting the SLO at the pessimistic bandwidth (the
        fastest when none does); ties go to the lowest score (mode M). Plain loops: this is
        the per-decision path."""
        slo = self.slo
        feas = kept if slo is None else [k for k in kept if lat[k] <= slo]
        cost = j
        if not feas:
            feas, cost = kept, lat
        p = feas[0]
        bc, bs = cost[p], s[p]
        for k in feas[1:]:
            c = cost[k]
            if c < bc or (c == bc and s[k] < bs):
                p, bc, bs = k, c, s[k]
        return p

    def observe(self, decision: Decision, seen: Context, realised: Context) -> None:
        """Oracle under the realised context; err = oracle not in the set; update ACI/WCP."""
        r = (
            realised.bandwidth_mbps,
            realised.rtt_ms,
            realised.device_load,
            realised.server_load,
            realised.device_gco2_per_kwh,
            realised.server_gco2_per_kwh,
            realised.battery_pct,
        )
        self.observe_label(decision, self.oracle_row(r), seen)

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
