#!/usr/bin/env python3
"""How far can a rule that decides from the device's link estimate go on the headline?

    python docs/scenarios/headline_ceiling.py [OUT_DIR]   # default $E/out/transfer/headline_7x

(any `carboncp evaluate` output works; RESULTS.md also runs it on default_fast_gb)

Re-runs the scenario of OUT_DIR/metrics.json (written by `carboncp evaluate`, e.g.
docs/scenarios/transfer.sh's headline_7x) with the same bundle, calibration and test events,
and prints the carbon saving against local-only and the SLO-violation rate of:

- CarbonCP-A as shipped, and with the table's guard added back (the rule before c6f2d4e);
- mode A at the other bandwidth levels the build chooses between (β = 0.25, 0.5);
- mode A with residual quantiles conditioned on the estimate (a window per log-B̂ bin);
- mode A without any SLO check, and over every partition without one (the set ignored):
  the expected-J (Bayes) choice given B̂ and the residual distribution, no constraint;
- mode A with other estimators of the link in the replay (median, geometric mean and last
  of the same 8 samples the EWMA averages);
- the references: server-only, the causal reference, the known-bandwidth bound, the oracle.

Used in docs/RESULTS.md ("The headline"); about a minute.
"""

from __future__ import annotations

import json
import math
import os
import sys
from bisect import bisect_right
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.costs import cost_model_of
from carboncp.runtime.decision.policy import ResidualWindow, TablePolicy
from carboncp.runtime.decision.table import Table
from carboncp.tooling import contexts
from carboncp.tooling.baselines import causal_best, oracle, run_events, server_only
from carboncp.tooling.evaluate import Scenario, _calibrated_case

E = os.environ.get("E", "/root/.cache/carboncp/eval")


class _BinnedResiduals(TablePolicy):
    """Mode A whose residual quantiles come from a window per bin of log B̂."""

    EDGES = (3.0, 10.0, 30.0, 100.0, 300.0)

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.residuals
        self.bins = [
            ResidualWindow(r.table_quantiles, r.table_lower, r.level, r.size)
            for _ in range(len(self.EDGES) + 1)
        ]

    def _mode_a(self, row: tuple[float, ...], parts: tuple[int, ...], s: list[float]) -> int:
        w = self.bins[bisect_right(self.EDGES, row[0])]
        res = w if len(w) >= 50 else self.residuals
        b = row[0]
        lat, j = self.cost.row_expected(
            row, [b * m for m in res.factors], b * res.lower_factor, parts
        )
        return self._pick_a(parts, lat, j, s)

    def observe_bandwidth(self, seen_mbps: float, realised_mbps: float) -> None:
        super().observe_bandwidth(seen_mbps, realised_mbps)
        if math.isfinite(seen_mbps) and math.isfinite(realised_mbps):
            r = math.log(max(realised_mbps, 0.01) / max(seen_mbps, 0.01))
            self.bins[bisect_right(self.EDGES, seen_mbps)].add(r)


def _estimator(kind: str, shipped: Any = contexts._bandwidth) -> Any:
    """The replay's link process (`contexts._bandwidth`: where in the trace each event falls,
    the realised rate) with the estimate replaced by `kind` of the past samples the EWMA
    averages."""

    def bandwidth(trace: Any, rng: Any, t: np.ndarray, t0: float, pr: Any) -> tuple:
        pos, tx, _ = shipped(trace, rng, t, t0, pr)
        k = np.arange(1, pr.ewma_samples + 1, dtype=np.float64)
        past = trace.at_array(pos[:, None] - k[None, :] * pr.inference_period_s)
        est = {
            "median": lambda: np.median(past, axis=1),
            "geometric mean": lambda: np.exp(np.mean(np.log(np.maximum(past, 0.01)), axis=1)),
            "last sample": lambda: past[:, 0],
        }[kind]()
        return pos, tx, est

    return bandwidth


def _case(m: dict, beta: float | None = None) -> Any:
    s = m["scenario"]
    sc = Scenario(
        s["device_carbon"], s["server_carbon"], s["bandwidth"], s["calibrate_device_carbon"],
        s["calibrate_bandwidth"], s["events_per_hour"], None, s["seed"],
    )  # fmt: skip
    b = Bundle.load(s["bundle"])
    cm = cost_model_of(b)
    t = Table.from_bundle(b)
    if beta is not None:
        t.meta["bandwidth_alpha"] = beta
    rp = sc.replay(cm)
    return _calibrated_case(
        b, t, cm, rp, sc.calibration_replay(cm, False) or rp, m["alpha"], 0, False
    )


def _report(name: str, case: Any, choice: np.ndarray) -> None:
    te, c = case.te, case.replay.costs
    n = np.arange(len(te))
    local = c.carbon_g[te][:, case.cm.P].sum()
    saving = 100.0 * (1.0 - c.carbon_g[te][n, choice].sum() / local)
    slo = float(np.mean(c.latency_ms[te][n, choice] > case.cm.slo))
    print(f"| {name} | {saving:.2f}% | {slo:.4f} |", flush=True)


def _run(case: Any, pol: TablePolicy) -> np.ndarray:
    return run_events(pol, case.x_seen, case.labels, case.replay.tx_mbps[case.te])["choice"]


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(E) / "out/transfer/headline_7x"
    m = json.loads((out / "metrics.json").read_text())
    case = _case(m)
    t, cm, a = case.table, case.cm, m["alpha"]
    print(f"{out.name}: {case.n} test events\n\n| rule | saving vs local-only | SLO violations |")
    print("|---|---|---|")
    for name, rule in (("server-only", server_only), ("causal reference", causal_best)):
        _report(name, case, rule(case))
    known = TablePolicy(t, cm, "A", a, known_bandwidth=True)
    x = case.x_seen.copy()
    x[:, 0] = case.replay.tx_mbps[case.te]
    _report("known-bandwidth bound", case, run_events(known, x, case.labels, x[:, 0])["choice"])
    _report("oracle", case, oracle(case))
    _report("CarbonCP-A (shipped)", case, _run(case, TablePolicy(t, cm, "A", a)))
    _report(
        "A + the table's guard (before c6f2d4e)",
        case,
        _run(case, TablePolicy(t, cm, "A", a, table_guard=True)),
    )
    for beta in (0.25, 0.5):
        cb = _case(m, beta)
        _report(
            f"A, bandwidth level β = {beta}", cb, _run(cb, TablePolicy(cb.table, cb.cm, "A", a))
        )
    _report(
        "A, residuals conditioned on B̂ (6 bins)", case, _run(case, _BinnedResiduals(t, cm, "A", a))
    )
    free = TablePolicy(t, cm, "A", a)
    free.slo = None
    _report("A without an SLO check", case, _run(case, free))
    bayes = TablePolicy(t, cm, "A", a)
    bayes.slo, bayes._support = None, ((0, -2.0, -1.0),)  # every context 'out of support'
    _report("expected J over every partition, no SLO check", case, _run(case, bayes))
    shipped = contexts._bandwidth
    for kind in ("median", "geometric mean", "last sample"):
        contexts._bandwidth = _estimator(kind)
        try:
            ce = _case(m)
        finally:
            contexts._bandwidth = shipped
        _report(
            f"A, link estimate = {kind} of the 8 samples",
            ce,
            _run(ce, TablePolicy(ce.table, ce.cm, "A", a)),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
