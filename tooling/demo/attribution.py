"""What moved each change of a policy's decision: carbon or the link (AttributedPolicy), and
the trace time the demo's carbon subscriber judges staleness against (VirtualClock)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

# The causes AttributedPolicy assigns to a change of decision.
CAUSES = ("carbon", "link", "both", "other")

_POLICY_COUNTERS = ("n_decisions", "n_guard_relaxed")


class AttributedPolicy:
    """A table policy that says what moved each change of its decision.

    When the partition differs from the previous decision's, the same policy, in the same
    state (table, conformal threshold), decides again on the current context with the
    previous step's carbon (device and server), with the previous step's link (bandwidth and
    RTT estimates), and with both. The change is put down to
      carbon  if undoing the carbon change alone undoes it (and undoing the link's does not),
      link    the other way round,
      both    if either undo alone undoes it, or neither does but undoing both does,
      other   if it survives undoing both (the conformal threshold or the load moved it).
    The what-if decisions leave no trace in the policy (its counters and RNG are restored)."""

    def __init__(self, policy: Any):
        self.policy = policy
        self._prev: tuple[Any, int] | None = None
        self.causes: list[str | None] = []  # per decision: None when it did not change

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def _what_if(self, seen: Any) -> int:
        pol = self.policy
        counters = {k: getattr(pol, k) for k in _POLICY_COUNTERS if hasattr(pol, k)}
        rng = getattr(pol, "rng", None)
        state = rng.getstate() if rng is not None else None
        try:
            return pol.decide(seen).partition
        finally:
            for k, v in counters.items():
                setattr(pol, k, v)
            if rng is not None:
                rng.setstate(state)

    def decide(self, seen: Any) -> Any:
        d = self.policy.decide(seen)
        cause = None
        if self._prev is not None and d.partition != self._prev[1]:
            prev = self._prev[0]
            carbon = {
                "device_gco2_per_kwh": prev.device_gco2_per_kwh,
                "server_gco2_per_kwh": prev.server_gco2_per_kwh,
            }
            link = {"bandwidth_mbps": prev.bandwidth_mbps, "rtt_ms": prev.rtt_ms}
            p = d.partition
            by_carbon = self._what_if(replace(seen, **carbon)) != p
            by_link = self._what_if(replace(seen, **link)) != p
            if by_carbon != by_link:
                cause = "carbon" if by_carbon else "link"
            elif by_carbon or self._what_if(replace(seen, **carbon, **link)) != p:
                cause = "both"
            else:
                cause = "other"
        self._prev = (seen, d.partition)
        self.causes.append(cause)
        return d

    def observe(self, decision: Any, seen: Any, realised: Any) -> None:
        self.policy.observe(decision, seen, realised)


class VirtualClock:
    """Trace time the demo sets step by step (the subscriber judges staleness against it)."""

    def __init__(self, t_s: float):
        self.t_s = float(t_s)

    def __call__(self) -> float:
        return self.t_s
