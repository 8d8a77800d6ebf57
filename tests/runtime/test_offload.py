"""The offload client: deadline, early abandon, every failure an OffloadError with its cost;
the realised rate under link shaping; the probe route (the estimator's window and the probe's
backoff: test_bandwidth.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.errors import ConfigError, OffloadError
from carboncp.runtime.link.offload import OffloadClient
from carboncp.runtime.link.server import EdgeHTTPServer, TailService
from carboncp.runtime.link.shaping import LinkShaper
from carboncp.runtime.signals.bandwidth import BandwidthEstimator
from carboncp.runtime.signals.traces import BandwidthTrace

from tests.support.edge_server import free_port


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


class _Tail:
    """Scripted tail for protocol tests: returns a marker output, sleeps, or raises."""

    def __init__(self, bundle):
        self.bundle = bundle
        self.delay_s = 0.0
        self.fail = False
        self.release = threading.Event()

    def __call__(self, p, x):
        if self.fail:
            raise RuntimeError("tail exploded")
        if self.delay_s:
            self.release.wait(self.delay_s)
        y = np.full(self.bundle.output_shape, float(p), np.float32)
        y.flat[0] = float(np.asarray(x, np.float64).sum() % 1000)
        return y


@pytest.fixture
def served(bundle):
    tail = _Tail(bundle)
    svc = TailService(bundle, tail, max_concurrency=2)
    svc.ready = True
    httpd = EdgeHTTPServer(("127.0.0.1", 0), svc)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield httpd, tail
    tail.release.set()
    httpd.shutdown()
    httpd.server_close()


def _trace(mbps: float) -> BandwidthTrace:
    t = np.arange(0.0, 11.0)
    return BandwidthTrace("const", t, np.full(t.shape, mbps))


def _x(bundle, p):
    rng = np.random.default_rng(p)
    if p == 0:
        return rng.integers(0, 256, bundle.input_shape, dtype=np.uint8)
    return rng.normal(size=bundle.partitions[p].wire_shape).astype(np.float32)


def test_round_trip_carries_the_tensor_and_measures_the_link(served, bundle):
    httpd, _ = served
    client = OffloadClient(httpd.url, bundle)
    for p in range(bundle.last):
        x = _x(bundle, p)
        res = client.infer(p, x, deadline_s=5.0)
        assert res.output[0, 1] == float(p)  # the server ran tail p
        assert res.output.flat[0] == pytest.approx(
            float(np.asarray(x, np.float64).sum() % 1000), abs=1e-2
        )
        assert res.bytes_sent > bundle.partitions[p].wire_bytes  # header + payload
        assert res.rtt_ms >= 0 and res.total_ms >= res.send_ms and res.bandwidth_mbps > 0


def test_unreachable_server_is_an_offload_error(bundle):
    client = OffloadClient(f"http://127.0.0.1:{free_port()}", bundle)
    with pytest.raises(OffloadError) as e:
        client.infer(0, _x(bundle, 0), deadline_s=1.0)
    assert e.value.kind == "unreachable" and e.value.bytes_sent == 0
    assert not client.ready(0.2)


def test_5xx_and_4xx_are_offload_errors(served, bundle):
    httpd, tail = served
    client = OffloadClient(httpd.url, bundle)
    tail.fail = True
    with pytest.raises(OffloadError, match="500") as e:
        client.infer(1, _x(bundle, 1), deadline_s=5.0)
    assert e.value.kind == "server_error"
    tail.fail = False
    with pytest.raises(OffloadError) as e:
        client.infer(1, _x(bundle, 1)[..., :-1], deadline_s=5.0)  # wrong shape: refused locally
    assert e.value.kind == "refused" and e.value.bytes_sent == 0
    assert client.infer(1, _x(bundle, 1), deadline_s=5.0).output.shape == bundle.output_shape


def test_slow_server_hits_the_deadline(served, bundle):
    httpd, tail = served
    tail.delay_s = 5.0
    client = OffloadClient(httpd.url, bundle)
    with pytest.raises(OffloadError) as e:
        client.infer(0, _x(bundle, 0), deadline_s=0.3)
    assert e.value.kind == "timeout"
    assert 0.3 <= e.value.elapsed_s < 2.0  # abandoned at the deadline, not at the server's pace
    tail.release.set()


def test_outage_on_a_shaped_link_times_out_at_the_deadline(served, bundle):
    httpd, _ = served
    client = OffloadClient(httpd.url, bundle, shaper=LinkShaper(_trace(0.0)))
    with pytest.raises(OffloadError) as e:
        client.infer(1, _x(bundle, 1), deadline_s=0.25)
    assert e.value.kind == "timeout" and e.value.elapsed_s >= 0.25 * 0.95


def test_a_link_too_slow_for_the_deadline_is_abandoned_early(served, bundle):
    """0.1 Mbit/s: 8 KiB need ~0.7 s; with a 0.5 s deadline the first chunks show it cannot
    finish, so the transfer stops well before the deadline (docs/METHOD.md §3's early abandon)."""
    httpd, _ = served
    client = OffloadClient(httpd.url, bundle, shaper=LinkShaper(_trace(0.1)))
    with pytest.raises(OffloadError) as e:
        client.infer(1, _x(bundle, 1), deadline_s=0.5)
    assert e.value.kind == "abandoned"
    assert 0 < e.value.bytes_sent < bundle.partitions[1].wire_bytes
    assert e.value.elapsed_s < 0.5


def test_shaped_rate_is_what_the_client_measures(served, bundle):
    httpd, _ = served
    shaper = LinkShaper(_trace(0.5), scale=4.0)  # 2 Mbit/s emulated
    assert shaper.bandwidth_mbps() == pytest.approx(2.0)
    client = OffloadClient(httpd.url, bundle, shaper=shaper)
    rates = [client.infer(1, _x(bundle, 1), deadline_s=5.0).bandwidth_mbps for _ in range(3)]
    assert 1.2 < float(np.median(rates)) < 2.2  # paced: the payload took ~its time at 2 Mbit/s


def test_shaper_follows_the_trace_in_time():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    trace = BandwidthTrace("steps", t, np.array([1.0, 1.0, 5.0, 0.0]))
    now = [0.0]
    slept: list[float] = []

    def sleep(dt):
        slept.append(dt)
        now[0] += dt

    shaper = LinkShaper(trace, scale=2.0, clock=lambda: now[0], sleep=sleep)
    assert shaper.bandwidth_mbps() == 2.0
    shaper.pace(125_000)  # 1 Mbit at 2 Mbit/s -> 0.5 s of emulated link
    assert now[0] == pytest.approx(0.5)
    now[0] = 1.5
    assert shaper.bandwidth_mbps() == 10.0
    now[0] = 2.5  # outage: pace waits for the deadline, then gives up
    with pytest.raises(TimeoutError):
        shaper.pace(1000, deadline=2.8)
    assert now[0] == pytest.approx(2.8)
    with pytest.raises(ValueError):
        LinkShaper(trace, scale=0)


def test_server_url_is_checked(bundle):
    for bad in ("ftp://x:1", "http://", "localhost:8000", "http://h:notaport"):
        with pytest.raises(ConfigError):
            OffloadClient(bad, bundle)


def test_pacing_always_finishes_on_a_real_trace():
    """Regression: float residue once kept pace() looping until the deadline on ~10% of
    the offsets of norway_bus_1 x 15, failing fast transfers as timeouts."""
    from carboncp.runtime.signals.traces import load_bandwidth_trace, shipped_bandwidth_path

    now = [0.0]

    def sleep(dt):
        now[0] += dt

    shaper = LinkShaper(
        load_bandwidth_trace(shipped_bandwidth_path("norway_bus_1")), scale=15.0,
        clock=lambda: now[0], sleep=sleep,
    )  # fmt: skip
    for i in range(300):
        shaper.seek(i * 0.77)
        t0 = now[0]
        shaper.pace(2048, deadline=t0 + 0.3)
        # 2 KiB at >= 5.6 Mbit/s (the trace's minimum x 15) takes < 3 ms of emulated link
        assert now[0] - t0 < 0.003


def test_probe_measures_the_shaped_link_and_needs_the_token(bundle):
    svc = TailService(bundle, _Tail(bundle))
    svc.ready = True
    httpd = EdgeHTTPServer(("127.0.0.1", 0), svc, token="tok")
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        client = OffloadClient(httpd.url, bundle, token="tok", shaper=LinkShaper(_trace(2.0)))
        bw, rtt, nbytes = client.probe()
        assert 1.4 < bw < 2.2 and rtt >= 0 and nbytes > 32 * 1024
        est = BandwidthEstimator(initial_mbps=50.0)
        assert est.maybe_probe(client.probe, probe_after_s=1.0)
        assert est.bandwidth_mbps < 50.0 and est.probe_cost.bytes == nbytes
        with pytest.raises(OSError):
            OffloadClient(httpd.url, bundle, token="wrong").probe()
        svc.ready = False  # warming up: a probe says offloading does not work yet
        with pytest.raises(OSError, match="503"):
            client.probe()
        failed = est.probe_cost.failures
        est = BandwidthEstimator(initial_mbps=50.0)
        outcome = est.maybe_probe(client.probe, probe_after_s=1.0)
        assert outcome is not None and outcome.error == "ConnectionError"
        assert est.bandwidth_mbps == pytest.approx(50.0) and failed == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
