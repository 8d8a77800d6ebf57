"""Link shaping: pace the offload's sends to a real bandwidth trace on one machine.

Loopback is far faster than any device link, so a one-machine run (the demo, `carboncp run
--shape-trace`) emulates the device's uplink by sleeping between chunks as a link of rate
`trace.at(t) * scale` Mbit/s would take to carry them, where t is seconds since the shaper
started (plus `offset_s`). Outages (rate 0) stall the send until the link returns or the
transfer's deadline passes. An optional fixed `rtt_ms` adds the round trip the link lacks.
The scale factor is how a slow measured trace stands in for a faster link with the same
real variability (e.g. a 3G trace x 15 as a WiFi-like link); callers must say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from carboncp.runtime.signals.traces import BandwidthTrace

_OUTAGE_POLL_S = 0.05
_CONTINUE_S = 0.005  # a chunk this close after the previous one's end continues its transfer


class LinkShaper:
    """Paces sends to `trace.at(t) * scale` Mbit/s; `pace` blocks for as long as the link would."""

    def __init__(
        self,
        trace: BandwidthTrace,
        scale: float = 1.0,
        offset_s: float = 0.0,
        rtt_ms: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not scale > 0:
            raise ValueError(f"shaping scale must be > 0, got {scale}")
        if rtt_ms < 0:
            raise ValueError(f"shaping rtt_ms must be >= 0, got {rtt_ms}")
        self.trace = trace
        self.scale = float(scale)
        self.offset_s = float(offset_s)
        self.rtt_ms = float(rtt_ms)
        self._clock = clock
        self._sleep = sleep
        self._t0 = clock()
        self._free_at = float("-inf")

    def trace_time_s(self, now: float | None = None) -> float:
        return (self._clock() if now is None else now) - self._t0 + self.offset_s

    def seek(self, t_s: float) -> None:
        """Make the trace time now equal t_s (the demo steps every policy through the same
        moments of the trace)."""
        self.offset_s += t_s - self.trace_time_s()

    def bandwidth_mbps(self, now: float | None = None) -> float:
        """The emulated link's rate now (the true B of this moment, for the realised context)."""
        return self.trace.at(self.trace_time_s(now)) * self.scale

    def begin(self) -> None:
        """A new transfer starts: the link has been idle, no earlier schedule carries over."""
        self._free_at = float("-inf")

    def pace(self, nbytes: int, deadline: float | None = None) -> None:
        """Block while `nbytes` cross the emulated link; TimeoutError once `deadline` passes.

        Chunks of one transfer are scheduled back to back on a virtual link clock (each ends
        at the previous one's end + its bits / rate), and the sender sleeps until that end:
        a sleep that overshoots is absorbed by the next chunk instead of slowing the link.
        During an outage (rate 0) the send waits for the link to return, or the deadline.
        """
        now = self._clock()
        # A chunk that follows its predecessor within a sleep's overshoot continues its
        # transfer (the overshoot is made up); later, the link idled and starts afresh.
        start = self._free_at if now - self._free_at < _CONTINUE_S else now
        while True:
            rate_bps = self.bandwidth_mbps(max(now, start)) * 1e6
            if rate_bps > 0:
                break
            if deadline is not None and now >= deadline:
                raise TimeoutError("link shaping: deadline passed mid-transfer (outage)")
            wait = _OUTAGE_POLL_S if deadline is None else min(_OUTAGE_POLL_S, deadline - now)
            self._sleep(max(0.0, wait))
            now = start = self._clock()
        end = start + 8.0 * nbytes / rate_bps
        if deadline is not None and end > deadline:
            self._sleep(max(0.0, deadline - now))
            raise TimeoutError("link shaping: deadline passed mid-transfer")
        self._free_at = end
        if end > now:
            self._sleep(end - now)

    def delay_rtt(self, deadline: float | None = None) -> None:
        """Sleep the emulated round trip (once per request)."""
        if self.rtt_ms <= 0:
            return
        wait = self.rtt_ms / 1000.0
        if deadline is not None and self._clock() + wait > deadline:
            self._sleep(max(0.0, deadline - self._clock()))
            raise TimeoutError("link shaping: deadline passed during the round trip")
        self._sleep(wait)

    def __repr__(self) -> str:
        return (
            f"LinkShaper({self.trace.name} x{self.scale:g}, offset={self.offset_s:g}s, "
            f"rtt={self.rtt_ms:g}ms)"
        )
