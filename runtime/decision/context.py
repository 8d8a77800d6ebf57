"""The decision context x of docs/METHOD.md §2 and the policy interface the device loop calls.

Units are in the field names and converted once, where a value enters (the adapters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Context:
    """What decides a partition: the live link, loads, grid carbon on both sides, battery."""

    bandwidth_mbps: float  # uplink rate B, Mbit/s
    rtt_ms: float  # round-trip time to the edge server
    device_load: float  # u in [0, 1]
    server_load: float  # v in [0, 1]
    device_gco2_per_kwh: float  # I_d: grid that charges the device
    server_gco2_per_kwh: float  # I_s: grid of the edge server
    battery_pct: float  # state of charge b, 0..100


@dataclass(frozen=True)
class Decision:
    """A chosen partition p, the conformal set it was chosen from, and why."""

    partition: int
    candidates: tuple[int, ...]
    mode: str  # "A", "M", "R", or a baseline's name
    cell: int | None = None  # threshold-table cell, when a table decided
    flags: tuple[str, ...] = field(default_factory=tuple)  # e.g. ("slo_guard_relaxed",)


@runtime_checkable
class Policy(Protocol):
    """Chooses a partition per inference and learns from what really happened (ACI)."""

    def decide(self, seen: Context) -> Decision: ...

    def observe(self, decision: Decision, seen: Context, realised: Context) -> None:
        """Feed back the realised context once the inference is done (online recalibration)."""
        ...


# Column order of context arrays (N, 7) used by the cost model, the replay and the table.
CONTEXT_FIELDS: tuple[str, ...] = (
    "bandwidth_mbps",
    "rtt_ms",
    "device_load",
    "server_load",
    "device_gco2_per_kwh",
    "server_gco2_per_kwh",
    "battery_pct",
)


def context_to_row(ctx: Context) -> tuple[float, ...]:
    """A Context as one row in CONTEXT_FIELDS order."""
    return tuple(float(getattr(ctx, f)) for f in CONTEXT_FIELDS)
