"""The device loop's probe gate: a due probe runs only when the decisions it informs gain
more than it costs (runtime/decision/probe_value.py). A device that infers once an hour
probes only when its belief about the link leaves the decision open; one that infers twice a
second probes as scheduled; the first measurement is always taken; `probe_gate=False`
restores the schedule alone. Also: the estimator's stale estimate (the measured history's
median)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.baselines import ArgminPolicy
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.device.loop import DeviceLoop, LoopConfig, StaticCarbon
from carboncp.runtime.link.offload import OffloadResult
from carboncp.runtime.signals.bandwidth import BandwidthEstimator
from carboncp.runtime.signals.load import LoadSampler

from tests.runtime.test_loop_faults import Head
from tests.runtime.test_loop_probe import Clock, StallingServer
from tests.support.edge_server import synthetic_profile


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


class Belief:
    """What the gate reads of mode A's residual window."""

    def __init__(self, factors: list[float], lower_factor: float):
        self.factors, self.lower_factor = factors, lower_factor


class BeliefPolicy(ArgminPolicy):
    """ArgminPolicy with a link belief, the one thing the gate needs of a policy."""

    def __init__(self, cm: CostModel, belief: Belief):
        super().__init__(cm)
        self.residuals = belief


class RateServer(StallingServer):
    """Answers every transfer and probe, measuring the link at the next of `rates`."""

    def __init__(self, bundle: Bundle, clock: Clock, rates: list[float]):
        super().__init__(bundle, clock)
        self.rates, self.k = rates, 0

    def _rate(self) -> float:
        self.k += 1
        return self.rates[(self.k - 1) % len(self.rates)]

    def infer(self, p: int, a: np.ndarray, deadline_s: float) -> OffloadResult:
        out = np.full(self.b.output_shape, float(np.mean(a)), np.float32)
        return OffloadResult(out, p, "uint8", int(a.nbytes), 2.0, 0.1, 3.0, 1.0, 0.0, self._rate())

    def probe(self, timeout_s: float = 2.0) -> tuple[float, float, int]:
        self.probes.append(self.clock.t)
        return self._rate(), 2.0, 33_000


def _run(bundle, belief, step_s, n=12, gate=True, carbon=(400.0, 400.0), rates=(800.0,)):
    clock = Clock()
    cm = CostModel(synthetic_profile(bundle), Objective())
    server = RateServer(bundle, clock, list(rates))
    loop = DeviceLoop(
        bundle, BeliefPolicy(cm, belief), Head(bundle), client=server,
        carbon=StaticCarbon({"device": carbon[0], "server": carbon[1]}),
        estimator=BandwidthEstimator(clock=clock),
        config=LoopConfig(deadline_ms=300.0, probe_after_s=10.0, probe_gate=gate),
        cost_model=cm, load=LoadSampler(0.0), log=io.StringIO(),
    )  # fmt: skip
    recs = []
    for _ in range(n):
        recs.append(loop.infer(np.full(bundle.input_shape, 9, np.uint8)))
        clock.t += step_s
    return recs, server


CERTAIN = Belief([1.0, 1.0, 1.0], 1.0)


def test_a_sparse_device_skips_probes_that_cannot_change_its_decision(bundle):
    """One steady link: every rate the device has measured leads to the same decision."""
    recs, server = _run(bundle, CERTAIN, step_s=3600.0)
    assert recs[0].probe is not None  # never measured: the first measurement is taken
    for r in recs[1:]:
        assert r.probe is None
        s = r.probe_skipped
        assert s is not None and s["value_j"] == 0.0 and s["cost_j"] > 0 and not s["worth"]
        assert s["informs"] == 1.0  # an hour apart: a measurement informs one decision
    assert len(server.probes) == 1


def test_without_the_gate_every_due_probe_runs(bundle):
    recs, server = _run(bundle, CERTAIN, step_s=3600.0, gate=False)
    # an hour after any measurement, a probe is due before every decision: all of them run
    assert len(server.probes) == len(recs) and all(r.probe is not None for r in recs)
    assert all(r.probe_skipped is None for r in recs)


def test_a_sparse_device_probes_when_the_link_could_change_its_decision(bundle):
    """Server grid clean, device grid dirty: offloading wins at a good rate and loses in an
    outage. The device has measured both (its stale belief spans them), so knowing which it
    will meet is worth more than a probe, and every due probe runs."""
    rates = (800.0, 800.0, 800.0, 1e-3, 1e-3)  # 40% outages, transfers and probes alike
    recs, server = _run(bundle, CERTAIN, step_s=3600.0, n=16, carbon=(600.0, 10.0), rates=rates)
    # until a transfer has met an outage, every rate measured says "offload": no probe
    assert all(r.probe is None and r.probe_skipped is not None for r in recs[1:3])
    assert min(server.rates[: server.k][:4]) < 1.0  # ... the fourth measurement was one
    after = recs[4:]
    assert all(r.probe is not None and r.probe_skipped is None for r in after)
    # and each decision follows what its probe measured
    assert all((r.partition == bundle.last) == (r.probe["bandwidth_mbps"] < 1.0) for r in after)


def test_a_measurement_informs_the_decisions_until_the_next_probe_is_due(bundle):
    """Twice a second, one measurement informs ~20 decisions (10 s / 0.5 s), an hour apart
    one: the gate weighs the value by that count (its worth rule: test_probe_value.py)."""
    local = (10.0, 1200.0)  # the server's grid so dirty that the device always runs locally
    busy, server = _run(bundle, CERTAIN, step_s=0.5, n=80, carbon=local)
    skipped = [r.probe_skipped for r in busy if r.probe_skipped is not None]
    assert skipped and all(s["informs"] == pytest.approx(20.0) for s in skipped)
    assert len(server.probes) == 1 and all(r.partition == bundle.last for r in busy[1:])
    sparse, _ = _run(bundle, CERTAIN, step_s=3600.0, n=4, carbon=local)
    assert [r.probe_skipped["informs"] for r in sparse[1:]] == [1.0, 1.0, 1.0]


def test_a_stale_estimate_is_the_median_of_the_measured_rates():
    clock = Clock()
    est = BandwidthEstimator(alpha=0.3, clock=clock, window_s=60.0)
    est.update(100.0)
    clock.t = 100.0  # one measurement, expired: held
    assert est.bandwidth_mbps == pytest.approx(100.0)
    for bw in (10.0, 40.0, 1.0):
        est.update(bw)
        clock.t += 1.0
    est.update_abandoned(1000, 1.0)  # a failed transfer is not a measured rate
    assert est.history_mbps == [100.0, 10.0, 40.0, 1.0]
    assert est.bandwidth_mbps < 10.0  # in the window: the recent samples
    clock.t += 100.0  # all expired: where the link has been, not where it was last
    assert est.estimate().window == 0
    assert est.bandwidth_mbps == pytest.approx(math.exp(np.median(np.log([100, 10, 40, 1]))))


class BrokenBelief:
    @property
    def factors(self) -> list[float]:
        raise RuntimeError("corrupt residual window")

    lower_factor = 1.0


def test_a_failing_gate_leaves_the_probe_to_its_schedule(bundle):
    recs, server = _run(bundle, BrokenBelief(), step_s=3600.0, n=4)
    assert len(server.probes) == 4 and all(r.probe is not None for r in recs)
    assert all("probe_gate_error:RuntimeError" in r.decision_flags for r in recs[1:])


def test_after_a_stall_the_schedule_probes_whatever_the_belief(bundle):
    """A 5 s stall leaves censored samples (failures, not measurements) under the estimate:
    the gate stands aside and the scheduled probe finds the server again within 10 s, even
    with a belief that says the link cannot surprise (the stall test of test_loop_probe.py,
    with the gated policy)."""
    clock = Clock()
    cm = CostModel(synthetic_profile(bundle), Objective())
    server = StallingServer(bundle, clock)
    loop = DeviceLoop(
        bundle, BeliefPolicy(cm, CERTAIN), Head(bundle), client=server,
        carbon=StaticCarbon({"device": 400.0, "server": 400.0}),
        estimator=BandwidthEstimator(clock=clock),
        config=LoopConfig(deadline_ms=300.0, probe_after_s=10.0),
        cost_model=cm, load=LoadSampler(0.0), log=io.StringIO(),
    )  # fmt: skip
    recs = []
    while clock.t < 40.0:
        t = clock.t
        recs.append((t, loop.infer(np.full(bundle.input_shape, 9, np.uint8))))
        clock.t += 0.5
    stalled_end = 10.0
    assert any("timeout" in r.fallbacks for t, r in recs if t < stalled_end)
    t_back = next(t for t, r in recs if t >= stalled_end and r.offloaded)
    assert t_back - stalled_end <= 10.0
    assert not any(r.probe_skipped for t, r in recs if 5.0 <= t < t_back)
