"""Whether a link probe can pay for itself: the value of measuring the link before deciding.

A probe costs the device energy (and, with a latency weight, time) every time it runs; what
it buys is a decision made at the link's measured rate instead of at a stale estimate. Mode
A already holds its belief about the link (the residual quantiles of log(B_real / B̂),
`ResidualWindow`), so the value of that measurement is the classic expected value of perfect
information (docs/METHOD.md §2.1):

    VOI = min_p mean_k J(p, B̂·f_k)  -  mean_k min_p J(p, B̂·f_k)

the objective the decision expects at the stale estimate less the one it expects if it knew
which of the K equally likely rates B̂·f_k it will meet. Partitions are eligible as mode A's
are: meeting the SLO at the pessimistic rate when deciding blind, at the rate itself when
informed (p = P, the whole model on the device, is always eligible). A probe is worth
running when VOI times the inferences its measurement informs exceeds its own cost in J.

This matters where inferences are sparse: a device that infers once an hour would otherwise
probe before nearly every inference, each probe costing a fifth of a local ResNet-18 run
on a Pi 4 while the decision it informs is often clear from the carbon alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from carboncp.runtime.decision.costs import CostModel


@dataclass(frozen=True)
class ProbeValue:
    """The gate's figures for one decision (objective units, as J).

    value_j: the expected objective a measurement saves on one informed inference (VOI).
    cost_j: the probe's expected objective cost (its device energy, and time if weighted).
    informs: how many inferences the measurement is expected to inform (>= 1).
    """

    value_j: float
    cost_j: float
    informs: float

    @property
    def worth(self) -> bool:
        """True when the informed inferences gain more than the probe costs."""
        return self.value_j * self.informs > self.cost_j

    def to_record(self) -> dict[str, float | bool]:
        return {
            "value_j": self.value_j,
            "cost_j": self.cost_j,
            "informs": self.informs,
            "worth": self.worth,
        }


def link_information_value(
    cost: CostModel,
    row: Sequence[float],
    factors: Sequence[float],
    lower_factor: float,
) -> float:
    """VOI of learning the link's rate before deciding (>= 0), over every partition.

    Parameters:
        cost: the device's cost model.
        row: the context in CONTEXT_FIELDS order; row[0] is the estimate B̂ (Mbit/s).
        factors: the K equally likely rate factors f_k (B_real = B̂·f_k), K >= 1.
        lower_factor: the pessimistic factor mode A's SLO check uses.

    Returns:
        The expected objective saved per inference by deciding at the true rate.

    Raises:
        ValueError: `factors` is empty.
    """
    if not factors:
        raise ValueError("link_information_value needs at least one rate factor")
    b_hat = float(row[0])
    ctx = tuple(row)
    slo = cost.slo
    local = cost.P
    per_rate = [cost.row(ctx, b_hat * f) for f in factors]
    blind_lat, _ = cost.row(ctx, b_hat * lower_factor)
    n = len(per_rate)
    mean_j = [sum(j[p] for _, j in per_rate) / n for p in range(local + 1)]
    blind = min(
        mean_j[p] for p in range(local + 1) if p == local or slo is None or blind_lat[p] <= slo
    )
    informed = 0.0
    for lat, j in per_rate:
        informed += min(
            j[p] for p in range(local + 1) if p == local or slo is None or lat[p] <= slo
        )
    return max(0.0, blind - informed / n)


def probe_cost_j(
    cost: CostModel, row: Sequence[float], probe_bytes: int, timeout_s: float | None = None
) -> float:
    """The expected objective cost of one probe of `probe_bytes` at the estimate's rate and
    RTT: the board idles and the radio sends for bytes/B̂ + RTT (at most `timeout_s`)."""
    b_hat = max(float(row[0]), 1e-3)
    t_ms = 8e-3 * probe_bytes / b_hat + max(0.0, float(row[1]))
    if timeout_s is not None:
        t_ms = min(t_ms, 1000.0 * timeout_s)
    power_mw = cost.p_idle + float(cost.objective.radio_power_mw(b_hat))
    energy_j = power_mw * t_ms * 1e-6
    return cost.device_energy_weight(row) * energy_j + cost.wt * t_ms


def stale_factors(
    history_mbps: Sequence[float], estimate_mbps: float, k: int
) -> tuple[list[float], float]:
    """The belief about a stale estimate: the K quantiles (levels (i + 1/2)/K) of the
    measured rates `history_mbps`, as factors of `estimate_mbps`, and the lowest rate's
    factor as the pessimistic one.

    Raises:
        ValueError: fewer than two rates, k < 1, or a non-positive estimate.
    """
    if len(history_mbps) < 2 or k < 1 or not estimate_mbps > 0:
        raise ValueError(
            f"stale_factors needs >= 2 rates, k >= 1 and an estimate > 0 "
            f"(got {len(history_mbps)}, {k}, {estimate_mbps})"
        )
    xs = sorted(float(v) for v in history_mbps)
    factors = []
    for i in range(k):
        pos = (i + 0.5) / k * (len(xs) - 1)
        j = int(pos)  # < len(xs) - 1: the level (i + 1/2)/K is below 1
        rate = xs[j] + (xs[j + 1] - xs[j]) * (pos - j)
        factors.append(rate / estimate_mbps)
    return factors, xs[0] / estimate_mbps


def probe_value(
    cost: CostModel,
    row: Sequence[float],
    factors: Sequence[float],
    lower_factor: float,
    probe_bytes: int,
    informs: float = 1.0,
    timeout_s: float | None = None,
) -> ProbeValue:
    """VOI, the probe's cost and the informed inferences for one decision (see the module)."""
    return ProbeValue(
        link_information_value(cost, row, factors, lower_factor),
        probe_cost_j(cost, row, probe_bytes, timeout_s),
        max(1.0, float(informs)),
    )
