"""The policies `carboncp evaluate` compares (docs/METHOD.md §9), by name.

`TABLE_POLICIES` run the bundle's table through the runtime `TablePolicy` (they have
prediction sets); `RULES` are the baselines and references, each a function of the test
period that returns one partition per event.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.costs import CostModel, Costs
from carboncp.runtime.decision.policy import OUT_OF_SUPPORT, TablePolicy
from carboncp.runtime.decision.table import Table
from carboncp.tooling.contexts import Replay
from carboncp.tooling.table_build import load_qnet

# name -> (mode, the device knows the realised bandwidth, mode A's bandwidth rule).
# carboncp_a_lower is mode A's old single-quantile rule, kept for comparison only.
TABLE_POLICIES: dict[str, tuple[str, bool, str]] = {
    "carboncp_a": ("A", False, "expected"),
    "carboncp_a_lower": ("A", False, "lower"),
    "carboncp_m": ("M", False, "expected"),
    "carboncp_r": ("R", False, "expected"),
    "known_bandwidth": ("A", True, "expected"),
}


@dataclass(eq=False)  # holds arrays
class EvalCase:
    """The test period of a replay, with the calibrated table every policy is judged on."""

    bundle: Bundle
    table: Table
    cm: CostModel
    replay: Replay
    te: np.ndarray  # test indices into the replay
    alpha: float
    seed: int

    @cached_property
    def x_seen(self) -> np.ndarray:
        """(n, 7) seen contexts of the test events."""
        return self.replay.x_seen[self.te]

    @cached_property
    def labels(self) -> np.ndarray:
        """(n,) oracle partitions of the test events."""
        return self.replay.label[self.te]

    @cached_property
    def cells(self) -> np.ndarray:
        """(n,) the table cell of each test event's seen context."""
        return self.table.cells(self.x_seen)

    @cached_property
    def predicted(self) -> Costs:
        """The cost model's prediction (Costs) at the seen contexts."""
        return self.cm.evaluate(self.x_seen)

    @cached_property
    def qmodel(self) -> Any:
        """The bundle's Q_θ if it stores one for these partitions, else None."""
        q = load_qnet(self.bundle)
        return q if q is not None and q.n_partitions == self.cm.P + 1 else None

    @property
    def n(self) -> int:
        """Number of test events."""
        return len(self.te)


def run_table_policies(case: EvalCase, progress: bool) -> dict[str, dict[str, Any]]:
    """Every TABLE_POLICIES entry run over the test events, by name."""
    tx = case.replay.tx_mbps[case.te]
    x_known = case.x_seen.copy()
    x_known[:, 0] = tx
    runs = {}
    for name, (mode, known, rule) in TABLE_POLICIES.items():
        if progress:
            print(f"[evaluate] {name} ...", file=sys.stderr, flush=True)
        pol = TablePolicy(
            case.table,
            case.cm,
            mode,
            case.alpha,
            case.seed,
            known_bandwidth=known,
            bandwidth_rule=rule,
        )
        runs[name] = run_events(pol, x_known if known else case.x_seen, case.labels, tx)
    return runs


def run_events(
    pol: TablePolicy, x_seen: np.ndarray, labels: np.ndarray, tx_mbps: np.ndarray
) -> dict[str, Any]:
    """Decide and observe every event in order, as the device would; choices, sets, ACI
    state and the out-of-support flags.

    After each event the realised rate `tx_mbps` enters mode A's residual window (the device
    measures its link by its transfers and, when it does not offload, by probes); the oracle
    label feeds ACI as `replay.run_table_policy` does."""
    rows = [tuple(r) for r in x_seen.tolist()]
    n = len(rows)
    choice = np.empty(n, dtype=np.int64)
    covered = np.empty(n, dtype=bool)
    size = np.empty(n, dtype=np.int64)
    oos = np.zeros(n, dtype=bool)
    alpha_t = np.empty(n)
    for i, (row, b) in enumerate(zip(rows, tx_mbps.tolist(), strict=True)):
        d = pol.decide_row(row)
        choice[i] = d.partition
        covered[i] = int(labels[i]) in d.candidates
        size[i] = len(d.candidates)
        oos[i] = OUT_OF_SUPPORT in d.flags
        alpha_t[i] = pol.aci.alpha_t
        pol.observe_bandwidth(row[0], b)
        pol.observe_label(d, int(labels[i]), row)
    return {
        "choice": choice,
        "covered": covered,
        "size": size,
        "alpha_t": alpha_t,
        "guard_relaxed": pol.n_guard_relaxed,
        "out_of_support": oos,
        "ess": [],
    }


def local_only(case: EvalCase) -> np.ndarray:
    """Always the last partition: the whole model on the device."""
    return np.full(case.n, case.cm.P)


def server_only(case: EvalCase) -> np.ndarray:
    """Always partition 0: send the image."""
    return np.zeros(case.n, dtype=np.int64)


def latency_optimal(case: EvalCase) -> np.ndarray:
    """The lowest predicted latency at the seen context."""
    return np.argmin(case.predicted.latency_ms, axis=1)


def energy_optimal(case: EvalCase) -> np.ndarray:
    """The lowest predicted device energy at the seen context."""
    return np.argmin(case.predicted.device_energy_j, axis=1)


def carbon_greedy(case: EvalCase) -> np.ndarray:
    """argmin Q_θ (or, without a stored Q_θ, the table's lowest score): no set, no guard."""
    if case.qmodel is not None:
        return case.qmodel.predict(case.x_seen)
    return np.argmin(case.table.scores[case.cells].astype(np.float64), axis=1)


def carbon_greedy_source(case: EvalCase) -> str:
    """Where carbon_greedy's choices come from (metrics.json notes)."""
    if case.qmodel is not None:
        return "Q_θ (torch-free numpy forward of the stored weights)"
    return "table argmin (the bundle stores no Q_θ)"


def causal_best(case: EvalCase) -> np.ndarray:
    """Per table cell, the partition with the lowest mean realised J over the test events in
    it: the best any policy that sees only the cell can do."""
    cells = case.cells
    j_te = case.replay.costs.objective[case.te]
    best = {}
    for c in np.unique(cells):
        m = cells == c
        best[c] = int(np.argmin(j_te[m].mean(axis=0)))
    return np.array([best[c] for c in cells], dtype=np.int64)


def oracle(case: EvalCase) -> np.ndarray:
    """The best partition under the true context."""
    return case.labels.astype(np.int64)


RULES: dict[str, Callable[[EvalCase], np.ndarray]] = {
    "local_only": local_only,
    "server_only": server_only,
    "latency_optimal": latency_optimal,
    "energy_optimal": energy_optimal,
    "carbon_greedy": carbon_greedy,
    "causal_best": causal_best,
    "oracle": oracle,
}
