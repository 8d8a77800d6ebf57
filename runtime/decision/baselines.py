"""Policies that need no threshold table: baselines and the loop's stand-ins.

`FixedPolicy(p)` always picks p (local-only is p = P, server-only is p = 0). `ArgminPolicy`
picks the cost model's argmin J on the context the device sees (docs/METHOD.md §4's objective with
the SLO as a hard filter), i.e. a greedy decision without the conformal set: the baseline
CarbonCP's table is measured against, and the loop's policy when a bundle has no table.
"""

from __future__ import annotations

from typing import Any

from carboncp.runtime.decision.context import Context, Decision, context_to_row


class FixedPolicy:
    """Always partition p."""

    def __init__(self, partition: int, name: str = "fixed") -> None:
        if partition < 0:
            raise ValueError(f"partition must be >= 0, got {partition}")
        self.partition = int(partition)
        self.name = name

    def decide(self, seen: Context) -> Decision:
        return Decision(self.partition, (self.partition,), self.name)

    def observe(self, decision: Decision, seen: Context, realised: Context) -> None:
        return None

    def __repr__(self) -> str:
        return f"FixedPolicy({self.partition}, name={self.name!r})"


class ArgminPolicy:
    """argmin_p J(p, seen) among partitions whose modelled latency meets the SLO (fastest if none)."""

    def __init__(self, cost_model: Any, name: str = "argmin") -> None:
        self.cost_model = cost_model
        self.name = name

    def decide(self, seen: Context) -> Decision:
        lat, obj = self.cost_model.row(context_to_row(seen), seen.bandwidth_mbps)
        slo = self.cost_model.slo
        feasible = [p for p in range(len(obj)) if slo is None or lat[p] <= slo]
        flags: tuple[str, ...] = ()
        if not feasible:
            feasible = [min(range(len(lat)), key=lat.__getitem__)]
            flags = ("no_feasible_partition",)
        best = min(feasible, key=obj.__getitem__)
        return Decision(best, tuple(feasible), self.name, None, flags)

    def observe(self, decision: Decision, seen: Context, realised: Context) -> None:
        return None
