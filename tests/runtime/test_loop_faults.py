"""Every part the device loop calls may raise anything (not only CarbonCPError): the load
sampler, meter, carbon source, offload client, probe, cost model, bandwidth oracle, policy,
runners. Each input still gets an answer, one JSON line, and the fault is flagged."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.baselines import FixedPolicy
from carboncp.runtime.decision.context import Decision
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.device.loop import DeviceLoop, LoopConfig, StaticCarbon
from carboncp.runtime.errors import OffloadError
from carboncp.runtime.link.offload import OffloadResult
from carboncp.runtime.signals.load import LoadSampler

from tests.support.edge_server import synthetic_profile
from tests.support.requires import require

EXCEPTIONS = (RuntimeError("r"), ValueError("v"), KeyError("k"), ZeroDivisionError(), MemoryError())


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


class Head:
    """A stand-in runner: the model's output is the image's mean (so answers are checkable)."""

    def __init__(self, bundle: Bundle, fail: dict[int, BaseException] | None = None):
        self.b, self.fail = bundle, fail or {}

    def run(self, p: int, x: np.ndarray) -> np.ndarray:
        if p in self.fail:
            raise self.fail[p]
        shape = self.b.output_shape if p == self.b.last else self.b.partitions[p].wire_shape
        return np.full(shape, float(np.mean(x)), np.float32)


class Raising:
    """Any attribute is a callable that raises `exc`."""

    shaper = None

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __getattr__(self, name: str):
        def fail(*a, **k):
            raise self.exc

        return fail


class Server:
    """An offload client whose server answers (the full model's output from the image)."""

    shaper = None

    def __init__(self, bundle: Bundle):
        self.b, self.calls = bundle, []

    def infer(self, p: int, a: np.ndarray, deadline_s: float) -> OffloadResult:
        self.calls.append(p)
        out = np.full(self.b.output_shape, float(np.mean(a)), np.float32)
        return OffloadResult(out, p, "uint8", int(a.nbytes), 5.0, 1.0, 8.0, 1.0, 0.1, 20.0)


def _loop(bundle: Bundle, **kw) -> DeviceLoop:
    args = dict(
        policy=FixedPolicy(1, "fixed"),
        head_runner=Head(bundle),
        carbon=StaticCarbon({"device": 300.0, "server": 100.0}),
        config=LoopConfig(**kw.pop("cfg", {})),
        cost_model=CostModel(synthetic_profile(bundle), Objective()),
        load=LoadSampler(0.0),
        log=io.StringIO(),
    )
    args.update(kw)
    return DeviceLoop(bundle, **args)


def _parts(bundle: Bundle, exc: BaseException) -> dict[str, dict]:
    def boom():
        raise exc

    return {
        "load": {"load": boom},
        "meter": {"meter": Raising(exc)},
        "carbon": {"carbon": Raising(exc)},
        "client": {"client": Raising(exc)},
        "probe": {"client": Raising(exc), "cfg": {"probe_after_s": 0.0}},
        "tail": {"client": Raising(OffloadError("down")), "tail_runner": Raising(exc)},
        "cost_model": {"cost_model": Raising(exc)},
        "true_bandwidth": {"true_bandwidth": boom},
        "policy": {"policy": Raising(exc)},
        "head": {"head_runner": Head(bundle, {1: exc})},
    }


@pytest.mark.parametrize("exc", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_any_part_raising_anything_still_answers_every_input(bundle, exc) -> None:
    rng = np.random.default_rng(0)
    for part, kw in _parts(bundle, exc).items():
        loop = _loop(bundle, **kw)
        xs = [rng.integers(0, 256, bundle.input_shape, dtype=np.uint8) for _ in range(3)]
        recs = [loop.infer(x) for x in xs]
        for x, r in zip(xs, recs, strict=True):  # the right answer, not just any answer
            assert r.output.shape == tuple(bundle.output_shape), part
            assert np.allclose(r.output, np.mean(x)), part
        lines = [json.loads(s) for s in loop.log.getvalue().splitlines()]
        assert len(lines) == 3, part
        flagged = [*recs[-1].decision_flags, *recs[-1].fallbacks, *recs[-1].energy_flags]
        assert any(type(exc).__name__ in f or f in ("local_full", "local_tail_failed")
                   for f in flagged), (part, flagged)  # fmt: skip


def test_guarded_faults_are_named_and_counted(bundle) -> None:
    def boom():
        raise RuntimeError("sensor gone")

    loop = _loop(bundle, load=boom, meter=Raising(ValueError("bad frame")))
    r = loop.infer(np.zeros(bundle.input_shape, np.uint8))
    assert "load_error:RuntimeError" in r.decision_flags
    assert "meter_error:ValueError" in r.decision_flags
    assert r.seen["device_load"] == 0.0 and r.battery_source == "modelled"
    assert loop.faults["load"] == 1 and loop.faults["meter"] >= 1
    assert len(r.decision_flags) == len(set(r.decision_flags))  # each fault named once


@pytest.mark.parametrize("u", [float("nan"), float("inf"), "x"])
def test_a_non_finite_or_non_numeric_load_is_a_fault_not_a_nan_context(bundle, u) -> None:
    loop = _loop(bundle, load=lambda: u)
    r = loop.infer(np.zeros(bundle.input_shape, np.uint8))
    assert r.seen["device_load"] == 0.0
    assert any(f.startswith("load_error:") for f in r.decision_flags)


@pytest.mark.parametrize(
    "decision",
    [None, Decision(1.5, (1,), "A", None, ()), Decision("1", (1,), "A", None, ()),
     Decision(float("nan"), (1,), "A", None, ()), Decision(1, None, "A", None, ()),
     Decision(True, (1,), "A", None, ())],
)  # fmt: skip
def test_a_malformed_decision_means_local_execution(bundle, decision) -> None:
    class Policy:
        def decide(self, seen):
            return decision

        def observe(self, *a):
            pass

    r = _loop(bundle, policy=Policy()).infer(np.zeros(bundle.input_shape, np.uint8))
    assert r.partition == bundle.last and r.decision_flags[0].startswith("policy_error:")


def test_a_client_raising_a_non_offload_error_falls_back_locally(bundle) -> None:
    r = _loop(bundle, client=Raising(KeyError("shape"))).infer(
        np.ones(bundle.input_shape, np.uint8)
    )
    assert r.fallbacks == ["client_error:KeyError", "local_full"]
    assert not r.offloaded and np.allclose(r.output, 1.0)


def test_when_the_full_model_fails_on_the_device_the_server_runs_it(bundle) -> None:
    server = Server(bundle)
    head = Head(bundle, {1: RuntimeError("a"), bundle.last: RuntimeError("b")})
    r = _loop(bundle, head_runner=head, client=server).infer(
        np.full(bundle.input_shape, 7, np.uint8)
    )
    assert server.calls == [0] and r.partition == 0 and r.offloaded
    assert r.fallbacks == ["head_error:RuntimeError", "head_error:RuntimeError"]
    assert np.allclose(r.output, 7.0)
    # without a server nothing can answer: the runner's own error reaches the caller
    with pytest.raises(RuntimeError, match="b"):
        _loop(bundle, head_runner=head, policy=FixedPolicy(bundle.last, "l")).infer(
            np.zeros(bundle.input_shape, np.uint8)
        )


@pytest.mark.parametrize("content", [b"garbage", b"\x89PNG\r\n\x1a\n", b""])
def test_an_unreadable_image_input_is_a_config_error(bundle, tmp_path, content) -> None:
    require("PIL", "Pillow reads PNG inputs (dev extra)")
    from carboncp.runtime.device.inputs import iter_inputs
    from carboncp.runtime.errors import ConfigError

    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(ConfigError, match=r"x\.png: not a readable image"):
        list(iter_inputs(str(tmp_path), 1, bundle.input_shape))


@pytest.mark.parametrize("true_mbps", [None, 3.5])
def test_the_realised_link_is_the_true_rate_when_emulated_else_the_measured_one(
    bundle, true_mbps
) -> None:
    # The policy learns (ACI, residual window) and the record is costed on the realised
    # context: on a shaped link that is the trace's true rate, on a device the measured one.
    server = Server(bundle)  # measures 20 Mbit/s and 1 ms RTT
    kw = {} if true_mbps is None else {"true_bandwidth": lambda: true_mbps}
    rec = _loop(bundle, client=server, **kw).infer(np.zeros(bundle.input_shape, np.uint8))
    assert rec.offloaded and rec.partition == 1
    want = 20.0 if true_mbps is None else true_mbps
    assert rec.realised["bandwidth_mbps"] == want
    assert rec.realised["rtt_ms"] == 5.0  # the transfer's own RTT either way
    assert rec.true_bandwidth_mbps == true_mbps
