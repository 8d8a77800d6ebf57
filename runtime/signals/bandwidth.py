"""Bandwidth and RTT estimate from measured transfers and probes over a sliding window, and the
schedule of the active probe (on when no transfer has measured the link for a while, with
exponential backoff).

**The window.** Each completed offload measures its uplink rate and round trip
(runtime/link/offload.py); so does each successful probe. The bandwidth estimate is a
recency-weighted mean of log-bandwidth over the samples of the last `window_s` seconds (at most
`window_n` of them): the newest has weight 1, each older one (1 - alpha) times the next
newer one's, normalised over the window. Rates are multiplicative (a 2 -> 20 Mbit/s swing
should not be averaged arithmetically), hence the logs. Samples older than the window drop
out, so a device moved to another link follows it within its first transfers instead of
mixing them with what it measured there before. With no sample in the window the estimate is
the median (of the logs) of the last HISTORY_N measured rates once there are two, else its last
value (initially `initial_mbps`): a stale last value may have been an outage or a peak.
RTT is an EWMA (weight alpha) of measured round trips.

**Failed transfers are evidence, not a verdict.** A transfer that was abandoned or timed out
tells the estimator the link carried at most bytes_sent / elapsed: a *censored* sample (an
upper bound), which enters the window like any other (so an outage pulls the estimate down
instead of leaving the last fast value). But a failure never counts as the link having been
measured, and a later successful measurement that exceeds a censored sample's bound
*supersedes* it: the bound described a condition that has ended (an outage, a server stall),
so it leaves the window. Without that, a 5-second server stall (every upload waits for an
answer until its deadline) drove the estimate from 904 to 7.6 Mbit/s, the device ran locally
from then on and nothing measured the link again.

**The probe.** When no transfer or probe has measured the link for `probe_after_s`,
`maybe_probe` sends a small probe to the server. Every probe doubles the wait before the next
one (probe_after_s x 2^k, at most `backoff_max_s`) until a *transfer* succeeds, which resets it:
probes that fail, or that succeed but are not followed by an offload (the link measured too
slow for the decision to use it, or offloading does not pay for other reasons), cost less and
less. A successful probe is a measurement (it enters the window and supersedes censored
samples below it). Its bytes, time and energy are returned (`ProbeOutcome`, one per probe,
for the record) and summed (`probe_cost`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

MIN_MBPS = 0.01  # floor: a zero sample (outage) must not make log() blow up
DEFAULT_WINDOW_S = 120.0
DEFAULT_WINDOW_N = 32
DEFAULT_PROBE_AFTER_S = 10.0
DEFAULT_PROBE_BACKOFF_MAX_S = 300.0
HISTORY_N = 64  # measured rates kept for the stale-estimate belief (history_mbps)


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_mbps: float
    rtt_ms: float
    samples: int  # every bandwidth sample so far, censored included
    age_s: float  # seconds since the link was last measured (a transfer or a probe; inf if never)
    window: int = 0  # samples in the window now
    censored: int = 0  # of which censored (upper bounds from failed transfers)


@dataclass
class ProbeCost:
    """What active probing has cost so far."""

    probes: int = 0
    bytes: int = 0
    time_s: float = 0.0
    energy_j: float = 0.0
    failures: int = 0


@dataclass(frozen=True)
class ProbeOutcome:
    """One probe: what it cost and what it measured (`error` set when it failed)."""

    bytes: int
    time_s: float
    energy_j: float
    bandwidth_mbps: float | None
    rtt_ms: float | None
    error: str | None
    next_after_s: float  # the wait before the next probe, unless a transfer succeeds first
    # the route that carried it: "private" (the server's probe route), "infer" (a small real
    # inference: a stock Open Inference Protocol server), "none" (the server has neither)
    route: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_record(self) -> dict[str, float | int | str | None]:
        return {
            "bytes": self.bytes,
            "ms": self.time_s * 1000.0,
            "energy_j": self.energy_j,
            "bandwidth_mbps": self.bandwidth_mbps,
            "rtt_ms": self.rtt_ms,
            "error": self.error,
            "next_after_s": self.next_after_s,
            "route": self.route,
        }


@dataclass(frozen=True)
class _Sample:
    t: float
    log_bw: float
    censored: bool


class BandwidthEstimator:
    """Windowed, recency-weighted log-bandwidth and EWMA RTT; `alpha` is the weight of the
    newest sample relative to the window (see the module docstring)."""

    def __init__(
        self,
        initial_mbps: float = 10.0,
        initial_rtt_ms: float = 20.0,
        alpha: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = DEFAULT_WINDOW_S,
        window_n: int = DEFAULT_WINDOW_N,
    ):
        if not 0 < alpha <= 1:
            raise ValueError(f"EWMA alpha must be in (0, 1], got {alpha}")
        if not (initial_mbps > 0 and initial_rtt_ms >= 0):
            raise ValueError("initial bandwidth must be > 0 and RTT >= 0")
        if not (window_s > 0 and window_n >= 1):
            raise ValueError(f"window must be > 0 s and >= 1 sample, got {window_s}, {window_n}")
        self.alpha = alpha
        self.window_s = float(window_s)
        self._window: deque[_Sample] = deque(maxlen=int(window_n))
        self._held_log_bw = math.log(initial_mbps)  # the estimate when the window is empty
        self._rtt_ms = float(initial_rtt_ms)
        self._clock = clock
        self._last_ok_t: float | None = None  # last measurement (transfer or probe)
        self._last_probe_t: float | None = None
        self._probe_level = 0  # probes since the last successful transfer
        self.samples = 0
        self.censored_samples = 0
        self.superseded = 0  # censored samples removed by a later, faster measurement
        self.probe_cost = ProbeCost()
        # the last measured rates, whatever their age: the link's own long-run spread, the
        # belief about a stale estimate (runtime/device/loop.py's probe gate)
        self._history: deque[float] = deque(maxlen=HISTORY_N)
        self._history_log_median = 0.0

    def now(self) -> float:
        """The estimator's clock (monotonic seconds; emulated in the demo)."""
        return self._clock()

    @property
    def history_mbps(self) -> list[float]:
        """The last HISTORY_N measured rates (transfers and probes, not failures), oldest first."""
        return list(self._history)

    @property
    def measured(self) -> bool:
        """True once a transfer or a probe has measured the link (failures do not count)."""
        return self._last_ok_t is not None

    # -- evidence ---------------------------------------------------------------------------
    def update(self, bandwidth_mbps: float | None, rtt_ms: float | None = None) -> None:
        """A completed transfer's realised rate and RTT (non-finite or negative values are
        ignored). It measures the link and resets the probe's backoff."""
        if self._measure(bandwidth_mbps, rtt_ms):
            self._probe_level = 0

    def update_abandoned(self, bytes_sent: int, elapsed_s: float) -> None:
        """An abandoned or timed-out transfer: the link carried at most bytes_sent in
        elapsed_s. A censored sample: it pulls the estimate down, but does not count as a
        measurement (the probe's clock keeps running) and a later faster measurement
        supersedes it."""
        if elapsed_s > 0 and bytes_sent >= 0:
            bw = 8.0 * bytes_sent / elapsed_s / 1e6
            self._log_bw()  # expire old samples before the new one joins
            self._window.append(_Sample(self._clock(), math.log(max(bw, MIN_MBPS)), True))
            self._recompute()
            self.samples += 1
            self.censored_samples += 1

    def _measure(self, bandwidth_mbps: float | None, rtt_ms: float | None) -> bool:
        """Fold in a measurement; True when it carried a usable bandwidth or RTT."""
        used = False
        now = self._clock()
        if bandwidth_mbps is not None and math.isfinite(bandwidth_mbps) and bandwidth_mbps >= 0:
            log_bw = math.log(max(bandwidth_mbps, MIN_MBPS))
            self._log_bw()  # expire old samples before the new one joins
            kept = [s for s in self._window if not (s.censored and s.log_bw < log_bw)]
            self.superseded += len(self._window) - len(kept)
            self._window.clear()
            self._window.extend(kept)
            self._window.append(_Sample(now, log_bw, False))
            self._history.append(max(bandwidth_mbps, MIN_MBPS))
            # the stale estimate, computed once per measurement, not per read
            self._history_log_median = statistics.median(math.log(v) for v in self._history)
            self._recompute()
            self.samples += 1
            used = True
        if rtt_ms is not None and math.isfinite(rtt_ms) and rtt_ms >= 0:
            self._rtt_ms = (1 - self.alpha) * self._rtt_ms + self.alpha * float(rtt_ms)
            used = True
        if used:
            self._last_ok_t = now
        return used

    # -- the estimate -----------------------------------------------------------------------
    def _log_bw(self) -> float:
        """The weighted mean of the window's log-bandwidths; with an empty window, the median
        of the measured rates (`history_mbps`) once there are two, else the value it had when
        its newest sample arrived (held). The median is taken of the logs (rates multiply)."""
        now = self._clock()
        pruned = False
        while self._window and now - self._window[0].t > self.window_s:
            self._window.popleft()
            pruned = True
        if pruned and self._window:
            self._recompute()
        if not self._window and len(self._history) >= 2:
            # A stale estimate: where the link has been is a better guess than where it was
            # last (its last rate may have been an outage, a stall's tail or a peak).
            return self._history_log_median
        return self._held_log_bw

    def _recompute(self) -> None:
        decay = 1.0 - self.alpha
        num = den = 0.0
        w = 1.0
        for s in reversed(self._window):
            num += w * s.log_bw
            den += w
            w *= decay
        if den > 0:
            self._held_log_bw = num / den

    @property
    def bandwidth_mbps(self) -> float:
        return math.exp(self._log_bw())

    @property
    def rtt_ms(self) -> float:
        return self._rtt_ms

    def estimate(self) -> LinkEstimate:
        bw = self.bandwidth_mbps  # prunes the window first
        age = math.inf if self._last_ok_t is None else self._clock() - self._last_ok_t
        censored = sum(s.censored for s in self._window)
        return LinkEstimate(bw, self._rtt_ms, self.samples, age, len(self._window), censored)

    # -- the probe --------------------------------------------------------------------------
    def probe_interval_s(self, probe_after_s: float, backoff_max_s: float) -> float:
        """The wait before the next probe: probe_after_s x 2^(probes since the last successful
        transfer), at most max(backoff_max_s, probe_after_s)."""
        cap = max(backoff_max_s, probe_after_s)
        return min(probe_after_s * 2.0 ** min(self._probe_level, 60), cap)

    def probe_due(
        self, probe_after_s: float, backoff_max_s: float = DEFAULT_PROBE_BACKOFF_MAX_S
    ) -> bool:
        """True when neither a transfer nor a probe has measured the link for the current
        interval (`probe_interval_s`), counted from the later of the last measurement and the
        last probe."""
        refs = [t for t in (self._last_ok_t, self._last_probe_t) if t is not None]
        if not refs:
            return True
        return self._clock() - max(refs) >= self.probe_interval_s(probe_after_s, backoff_max_s)

    def maybe_probe(
        self,
        probe: Callable[[], tuple[float, float, int]],
        probe_after_s: float,
        power_mw: float | Callable[[float | None], float] = 0.0,
        backoff_max_s: float = DEFAULT_PROBE_BACKOFF_MAX_S,
    ) -> ProbeOutcome | None:
        """Run `probe() -> (bandwidth_mbps, rtt_ms, bytes)` when `probe_due`; None otherwise.

        A successful probe is a measurement; a failed one (OSError, which includes the offload
        client's errors) leaves the estimate alone (any other exception is counted and
        re-raised). Either way its time and energy (power_mw,
        or power_mw(measured bandwidth or None), times its duration) are counted, and the wait
        before the next probe doubles until a transfer succeeds."""
        if not self.probe_due(probe_after_s, backoff_max_s):
            return None
        t0 = self._clock()
        nbytes = 0
        bw: float | None = None
        rtt: float | None = None
        error: str | None = None
        try:
            bw, rtt, nbytes = probe()
            self._measure(bw, rtt)
        except OSError as exc:
            error = type(exc).__name__
        except BaseException as exc:  # not a link failure (a bug): counted, then raised
            error = type(exc).__name__
            raise
        finally:
            dt = self._clock() - t0
            self._last_probe_t = self._clock()
            self._probe_level += 1
            pc = self.probe_cost
            pc.probes += 1
            pc.bytes += nbytes
            pc.time_s += dt
            pc.failures += error is not None
        watts = (power_mw(bw) if callable(power_mw) else power_mw) / 1000.0
        energy = max(0.0, watts) * dt
        pc.energy_j += energy
        bw_out = bw if bw is not None and math.isfinite(bw) else None
        rtt_out = rtt if rtt is not None and math.isfinite(rtt) else None
        return ProbeOutcome(
            nbytes, dt, energy, bw_out, rtt_out, error,
            self.probe_interval_s(probe_after_s, backoff_max_s),
        )  # fmt: skip
