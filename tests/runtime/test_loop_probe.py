"""The device loop's link adaptation with a scripted server on a fake clock: a 5-second stall
pulls the estimate down and the decision goes local; the probe, due 10 s after the last
measurement, finds the server answering again and offloading resumes. Without the probe the
device never offloads again (the fault issue 9 measured). The probe's bytes, time and energy
are in its record and in the modelled energy and carbon.

The same with real processes (`carboncp run` against `carboncp serve`, SIGSTOP):
test_stall_recovery.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.baselines import ArgminPolicy
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.device.loop import DeviceLoop, LoopConfig, StaticCarbon
from carboncp.runtime.link.offload import OffloadFailed, OffloadResult
from carboncp.runtime.signals.bandwidth import BandwidthEstimator
from carboncp.runtime.signals.load import LoadSampler

from tests.runtime.test_loop_faults import Head
from tests.support.edge_server import synthetic_profile

STEP_S = 0.5  # between inferences
STALL = (5.0, 10.0)  # the server answers nothing in [5, 10)


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


class StallingServer:
    """Answers (900 Mbit/s realised) except during STALL, when every upload arrives but its
    answer never comes: the transfer times out at its deadline, the probe at its timeout."""

    shaper = None

    def __init__(self, bundle: Bundle, clock: Clock):
        self.b, self.clock, self.probes = bundle, clock, []

    def stalled(self) -> bool:
        return STALL[0] <= self.clock.t < STALL[1]

    def infer(self, p: int, a: np.ndarray, deadline_s: float) -> OffloadResult:
        if self.stalled():
            self.clock.t += deadline_s
            raise OffloadFailed("timeout", "no answer", deadline_s, int(a.nbytes))
        out = np.full(self.b.output_shape, float(np.mean(a)), np.float32)
        return OffloadResult(out, p, "uint8", int(a.nbytes), 2.0, 0.1, 3.0, 1.0, 0.0, 900.0)

    def probe(self, timeout_s: float = 2.0) -> tuple[float, float, int]:
        self.probes.append(self.clock.t)
        if self.stalled():
            self.clock.t += timeout_s
            raise TimeoutError("probe: no answer")
        self.clock.t += 0.002
        return 800.0, 2.0, 33_000


def _run(bundle: Bundle, probe_after_s: float | None, until_s: float = 60.0):
    clock = Clock()
    cm = CostModel(synthetic_profile(bundle), Objective())
    server = StallingServer(bundle, clock)
    loop = DeviceLoop(
        bundle, ArgminPolicy(cm), Head(bundle), client=server,
        carbon=StaticCarbon({"device": 400.0, "server": 400.0}),
        estimator=BandwidthEstimator(clock=clock),
        config=LoopConfig(deadline_ms=300.0, probe_after_s=probe_after_s),
        cost_model=cm, load=LoadSampler(0.0), log=io.StringIO(),
    )  # fmt: skip
    recs = []
    while clock.t < until_s:
        t = clock.t
        rec = loop.infer(np.full(bundle.input_shape, 9, np.uint8))
        assert np.allclose(rec.output, 9.0)  # every input answered
        recs.append((t, rec))
        clock.t += STEP_S
    return recs, server, loop


def test_offloading_resumes_after_a_server_stall_once_a_probe_measures_the_link(bundle):
    recs, server, loop = _run(bundle, probe_after_s=10.0)
    P = bundle.last
    stall = [r for t, r in recs if STALL[0] <= t < STALL[1]]
    assert any("timeout" in r.fallbacks for r in stall)  # the stall was felt ...
    assert stall[-1].partition == P and stall[-1].seen["bandwidth_mbps"] < 1.0  # ... and went local
    after = [(t, r) for t, r in recs if t >= STALL[1]]
    t_back = next(t for t, r in after if r.offloaded)
    # the last measurement was just before the stall: the probe is due 10 s later
    assert t_back - STALL[1] <= 10.0
    probed = [r for t, r in after if r.probe is not None]
    assert probed and probed[0].probe["error"] is None and probed[0].offloaded
    assert all(r.offloaded for t, r in after if t >= t_back)  # and it stays offloading
    # no probe while the device was offloading successfully (only the first decision's)
    assert server.probes[0] == 0.0 and all(t >= STALL[0] for t in server.probes[1:])
    lines = [json.loads(s) for s in loop.log.getvalue().splitlines()]
    assert sum(line["probe"] is not None for line in lines) == len(server.probes)


def test_without_the_probe_the_device_never_offloads_again(bundle):
    recs, server, _ = _run(bundle, probe_after_s=None)
    assert not server.probes
    assert not any(r.offloaded for t, r in recs if t >= STALL[1])


def test_the_probe_is_in_the_record_and_in_the_modelled_energy_and_carbon(bundle):
    recs, _, loop = _run(bundle, probe_after_s=10.0, until_s=1.0)
    first = recs[0][1]  # never measured: the first decision probes
    p = first.probe
    assert p is not None and p["bytes"] == 33_000 and p["ms"] > 0 and p["error"] is None
    assert p["bandwidth_mbps"] == 800.0 and p["next_after_s"] == 20.0
    assert "probe" in first.phases_ms
    prof = loop.cost_model.profile
    radio = loop.cost_model.objective.radio_power_mw(800.0)
    assert p["energy_j"] == pytest.approx((prof.p_idle_mw + radio) * p["ms"] / 1e6, rel=0.05)
    m = first.model
    assert m["probe_energy_j"] == p["energy_j"]
    second = recs[1][1]  # same decision, same context, no probe
    assert second.probe is None and second.model["probe_energy_j"] == 0.0
    assert m["device_energy_j"] - second.model["device_energy_j"] == pytest.approx(p["energy_j"])
    dc = m["carbon_g"] - second.model["carbon_g"]
    assert dc == pytest.approx(400.0 * p["energy_j"] / 3.6e6)
    assert first.energy_j >= p["energy_j"]  # the modelled device energy includes it
    assert loop.estimator.probe_cost.energy_j == pytest.approx(p["energy_j"])


def test_run_settings_turn_the_probe_on_by_default_and_off_with_no_probe(tiny_bundle):
    from carboncp.runtime.commands.run import add_arguments
    from carboncp.runtime.device.settings import KEYS, load_settings
    from carboncp.runtime.device.wiring import open_device
    from carboncp.runtime.errors import ConfigError

    base = {"bundle": str(tiny_bundle), "server": "http://127.0.0.1:9", "policy": "local"}
    s = load_settings(None, base)
    assert (s.probe, s.probe_after_s, s.probe_backoff_max_s) == (True, 10.0, 300.0)
    with open_device(s) as device:
        assert device.loop.cfg.probe_after_s == 10.0
        assert device.loop.cfg.probe_backoff_max_s == 300.0
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--no-probe", "--probe-backoff-max-s", "60"])
    flags = {k: getattr(args, k) for k in KEYS if getattr(args, k, None) is not None}
    s = load_settings(None, {**base, **flags})
    assert s.probe is False and s.probe_backoff_max_s == 60.0
    with open_device(s) as device:
        assert device.loop.cfg.probe_after_s is None
    assert parser.parse_args([]).probe is None  # absent: the config file's or the default
    for bad in ({"probe_after_s": 0}, {"probe_backoff_max_s": -1}, {"probe": "maybe"}):
        with pytest.raises(ConfigError, match="probe"):
            load_settings(None, {**base, **bad})
