"""The link estimate's sliding window and the probe's schedule, on a fake clock.

The window: recency-weighted log-bandwidth over the last window_s seconds; failed transfers
enter as censored samples (upper bounds) that pull the estimate down but never count as a
measurement, and a later faster measurement supersedes them. The probe: due when nothing has
measured the link for probe_after_s, each probe doubling the wait (up to backoff_max_s) until
a transfer succeeds; its bytes, time and energy counted per probe and in total.
"""

from __future__ import annotations

import math

import pytest
from carboncp.runtime.signals.bandwidth import BandwidthEstimator


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_window_averages_log_bandwidth_with_recency_weights():
    est = BandwidthEstimator(initial_mbps=10.0, initial_rtt_ms=20.0, alpha=0.5, window_n=32)
    assert est.bandwidth_mbps == pytest.approx(10.0) and est.estimate().age_s == math.inf
    est.update(40.0, 5.0)
    assert est.bandwidth_mbps == pytest.approx(40.0)  # a first measurement replaces the guess
    for _ in range(30):
        est.update(40.0, 5.0)
    assert est.rtt_ms == pytest.approx(5.0, rel=1e-3)
    est.update(float("nan"), -1.0)  # ignored
    assert est.bandwidth_mbps == pytest.approx(40.0)
    # log-average: weight 1 on the newest, 1/2, 1/4, ... on the older: about 20, not 25
    est.update(10.0)
    assert est.bandwidth_mbps == pytest.approx(20.0, rel=1e-6)
    with pytest.raises(ValueError):
        BandwidthEstimator(alpha=0.0)
    with pytest.raises(ValueError):
        BandwidthEstimator(window_s=0.0)


def test_samples_older_than_the_window_drop_out_and_the_estimate_is_held():
    clock = Clock()
    est = BandwidthEstimator(alpha=0.3, clock=clock, window_s=60.0, window_n=8)
    for _ in range(20):
        est.update(900.0, 5.0)
        clock.t += 1.0
    assert est.estimate().window == 8  # at most window_n samples
    clock.t = 200.0  # all expired: the last estimate is held
    assert est.bandwidth_mbps == pytest.approx(900.0) and est.estimate().window == 0
    est.update(50.0)  # a new link: its first sample is the whole window
    assert est.bandwidth_mbps == pytest.approx(50.0)
    clock.t += 30.0
    est.update(60.0)
    w = (math.log(60.0) + 0.7 * math.log(50.0)) / 1.7
    assert est.bandwidth_mbps == pytest.approx(math.exp(w))


def test_an_abandoned_transfer_is_censored_evidence_that_a_faster_measurement_supersedes():
    clock = Clock()
    est = BandwidthEstimator(alpha=0.3, clock=clock)
    for _ in range(10):
        est.update(904.0, 2.0)
        clock.t += 0.5
    t_last_ok = clock.t - 0.5
    # a 5-second server stall: every 3 KiB upload waits for its answer until the 300 ms deadline
    for _ in range(14):
        est.update_abandoned(bytes_sent=3072, elapsed_s=0.3)
        clock.t += 0.35
    e = est.estimate()
    assert e.bandwidth_mbps < 0.5  # pulled down: the device would now run locally
    assert e.censored == 14 and e.samples == 24
    assert e.age_s == pytest.approx(clock.t - t_last_ok)  # failures did not measure the link
    # a measurement below the bounds does not supersede them
    est.update(0.05)
    assert est.estimate().censored == 14 and est.superseded == 0
    # one measurement above them (a probe once the server answers again) ends the episode
    est.update(800.0)
    e = est.estimate()
    assert e.censored == 0 and est.superseded == 14
    assert e.bandwidth_mbps > 100.0  # back near the link's rate, not an EWMA step from 0.08
    # the zero-byte outage of a shaped link: the floor, not -inf
    est.update_abandoned(bytes_sent=0, elapsed_s=0.3)
    assert math.isfinite(math.log(est.bandwidth_mbps))


def _probe_times(est, clock, probe, until_s, transfers=(), after=10.0, max_s=80.0):
    """Step the clock by 1 s to until_s, offering a probe each step; return when probes ran."""
    times = []
    while clock.t < until_s:
        if clock.t in transfers:
            est.update(50.0, 5.0)
        if est.maybe_probe(probe, after, 0.0, max_s) is not None:
            times.append(clock.t)
        clock.t += 1.0
    return times


def test_probe_backs_off_while_probes_fail_and_resets_when_a_transfer_succeeds():
    clock = Clock()
    est = BandwidthEstimator(clock=clock)
    est.update(50.0, 5.0)  # a transfer at t = 0

    def down():
        raise ConnectionRefusedError("server down")

    times = _probe_times(est, clock, down, 400.0, transfers={260.0})
    # due 10 s after the last measurement; then 20, 40, 80 (the cap), 80 ... after each probe;
    # the transfer at t = 260 resets the wait to 10 s from it
    assert times[:5] == [10.0, 30.0, 70.0, 150.0, 230.0]
    assert times[5:] == [270.0, 290.0, 330.0]
    assert est.probe_cost.probes == 8 and est.probe_cost.failures == 8
    assert est.probe_cost.bytes == 0 and est.bandwidth_mbps == pytest.approx(50.0)


def test_probes_that_show_the_link_unusable_back_off_too():
    """A probe that succeeds but is followed by no transfer (the device still runs locally)
    does not reset the backoff: only a successful transfer does."""
    clock = Clock()
    est = BandwidthEstimator(clock=clock)

    def slow():
        return 0.2, 80.0, 33_000

    times = _probe_times(est, clock, slow, 200.0)
    assert times == [0.0, 20.0, 60.0, 140.0]  # never measured: the first is at once
    assert est.bandwidth_mbps == pytest.approx(0.2) and est.probe_cost.failures == 0
    assert est.estimate().age_s == pytest.approx(clock.t - 140.0)  # a probe measures the link


def test_probe_after_zero_probes_before_every_decision():
    """probe_after_s = 0 (the demo's emulated hours): due every time, whatever the backoff."""
    clock = Clock()
    est = BandwidthEstimator(clock=clock)
    assert all(est.maybe_probe(lambda: (5.0, 5.0, 10), 0.0) is not None for _ in range(5))


def test_a_probe_counts_its_bytes_time_and_energy():
    clock = Clock()
    est = BandwidthEstimator(initial_mbps=50.0, clock=clock)
    seen_bw = []

    def power(bw):
        seen_bw.append(bw)
        return 2000.0 if bw is None else 3000.0

    def ok():
        clock.t += 0.02
        return 20.0, 7.0, 33_000

    out = est.maybe_probe(ok, 10.0, power)
    assert out is not None and out.ok and out.bytes == 33_000
    assert out.time_s == pytest.approx(0.02) and out.energy_j == pytest.approx(3.0 * 0.02)
    assert out.bandwidth_mbps == 20.0 and out.next_after_s == 20.0
    rec = out.to_record()
    assert rec["ms"] == pytest.approx(20.0) and rec["error"] is None
    assert est.rtt_ms < 20.0 and est.bandwidth_mbps == pytest.approx(20.0)
    assert est.maybe_probe(ok, 10.0, power) is None  # fresh: no probe

    def timeout():
        clock.t += 0.3
        raise TimeoutError("no answer")

    clock.t += 25.0
    out = est.maybe_probe(timeout, 10.0, power)
    assert out is not None and out.error == "TimeoutError" and out.bandwidth_mbps is None
    assert out.energy_j == pytest.approx(2.0 * 0.3) and seen_bw == [20.0, None]
    pc = est.probe_cost
    assert (pc.probes, pc.bytes, pc.failures) == (2, 33_000, 1)
    assert pc.time_s == pytest.approx(0.32) and pc.energy_j == pytest.approx(0.06 + 0.6)


def test_a_probe_raising_something_else_is_counted_then_raised():
    clock = Clock()
    est = BandwidthEstimator(clock=clock)

    def bug():
        raise KeyError("oops")

    with pytest.raises(KeyError):
        est.maybe_probe(bug, 10.0)
    assert est.probe_cost.probes == 1 and est.probe_cost.failures == 1
    assert not est.probe_due(10.0)  # it still waits before the next attempt
