"""Bandwidth and RTT estimate from measured offloads (EWMA), with an optional active probe.

Each offload measures its realised uplink rate and round trip (runtime/link/offload.py); the
estimate is an exponentially weighted moving average of log-bandwidth (rates are multiplicative:
a 2 -> 20 Mbit/s swing should not be averaged arithmetically) and of RTT. A transfer that was
abandoned tells the estimator the rate was at most bytes_sent / elapsed, which it takes as a
sample (so an outage pulls the estimate down instead of leaving the last fast value). When no
offload happened for `probe_after_s`, `maybe_probe` sends a small probe to the server; its
bytes, time and modelled energy are counted, so its cost shows in the records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

MIN_MBPS = 0.01  # floor: a zero sample (outage) must not make log() blow up


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_mbps: float
    rtt_ms: float
    samples: int
    age_s: float  # seconds since the last sample (inf if none)


@dataclass
class ProbeCost:
    """What active probing has cost so far."""

    probes: int = 0
    bytes: int = 0
    time_s: float = 0.0
    energy_j: float = 0.0


class BandwidthEstimator:
    """EWMA of log-bandwidth and RTT; `alpha` is the weight of the newest sample."""

    def __init__(
        self,
        initial_mbps: float = 10.0,
        initial_rtt_ms: float = 20.0,
        alpha: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0 < alpha <= 1:
            raise ValueError(f"EWMA alpha must be in (0, 1], got {alpha}")
        if not (initial_mbps > 0 and initial_rtt_ms >= 0):
            raise ValueError("initial bandwidth must be > 0 and RTT >= 0")
        self.alpha = alpha
        self._log_bw = math.log(initial_mbps)
        self._rtt_ms = float(initial_rtt_ms)
        self._clock = clock
        self._last_t: float | None = None
        self.samples = 0
        self.probe_cost = ProbeCost()

    def update(self, bandwidth_mbps: float | None, rtt_ms: float | None = None) -> None:
        """Fold in one measurement; non-finite or negative values are ignored."""
        a = self.alpha
        if bandwidth_mbps is not None and math.isfinite(bandwidth_mbps) and bandwidth_mbps >= 0:
            self._log_bw = (1 - a) * self._log_bw + a * math.log(max(bandwidth_mbps, MIN_MBPS))
            self.samples += 1
            self._last_t = self._clock()
        if rtt_ms is not None and math.isfinite(rtt_ms) and rtt_ms >= 0:
            self._rtt_ms = (1 - a) * self._rtt_ms + a * float(rtt_ms)
            self._last_t = self._clock()

    def update_abandoned(self, bytes_sent: int, elapsed_s: float) -> None:
        """An abandoned transfer: the link carried at most bytes_sent in elapsed_s."""
        if elapsed_s > 0:
            self.update(8.0 * bytes_sent / elapsed_s / 1e6)

    @property
    def bandwidth_mbps(self) -> float:
        return math.exp(self._log_bw)

    @property
    def rtt_ms(self) -> float:
        return self._rtt_ms

    def estimate(self) -> LinkEstimate:
        age = math.inf if self._last_t is None else self._clock() - self._last_t
        return LinkEstimate(self.bandwidth_mbps, self._rtt_ms, self.samples, age)

    def maybe_probe(
        self,
        probe: Callable[[], tuple[float, float, int]],
        probe_after_s: float,
        power_mw: float = 0.0,
    ) -> bool:
        """Run `probe() -> (bandwidth_mbps, rtt_ms, bytes)` if the estimate is older than
        probe_after_s; count its bytes, time and energy (power_mw x its duration). A failed
        probe (OSError) counts its time and leaves the estimate alone."""
        if self.estimate().age_s < probe_after_s:
            return False
        t0 = self._clock()
        nbytes = 0
        try:
            bw, rtt, nbytes = probe()
            self.update(bw, rtt)
        except OSError:
            pass
        finally:
            dt = self._clock() - t0
            self.probe_cost.probes += 1
            self.probe_cost.bytes += nbytes
            self.probe_cost.time_s += dt
            self.probe_cost.energy_j += power_mw / 1000.0 * dt
            self._last_t = self._clock()
        return True
