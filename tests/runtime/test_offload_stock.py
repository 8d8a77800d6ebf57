"""The device against a stock Open Inference Protocol server (Triton, KServe): the v2 infer
route with binary tensors, but no `server_ms` / `server_load` in its answers and no private
probe route. The client must measure the link from the upload itself (not count the tail's
compute as transfer time) and probe through an inference, and say so in the records
(docs/METHOD.md §2.1, issue 12 item 2)."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.baselines import FixedPolicy
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.device.loop import DeviceLoop, LoopConfig, StaticCarbon
from carboncp.runtime.link.offload import OffloadClient, ProbeUnavailable
from carboncp.runtime.link.routes import PROBE_PATH
from carboncp.runtime.link.shaping import LinkShaper
from carboncp.runtime.signals.bandwidth import BandwidthEstimator
from carboncp.runtime.signals.load import LoadSampler
from carboncp.runtime.signals.traces import BandwidthTrace

from tests.runtime.test_loop_faults import Head
from tests.support.edge_server import synthetic_profile

SHAPED_MBPS = 1.0  # 8 KiB activations take ~70 ms on the emulated link
TAIL_S = 0.25  # the tail's compute on the stock server: 3-4x the upload


class StockServer(ThreadingHTTPServer):
    """A minimal stock v2 server: `POST /v2/models/{name}/infer` with binary tensors, answered
    binary with no `parameters`; every other route 404 (as Triton answers the probe route)."""

    daemon_threads = True

    def __init__(self, bundle: Bundle, models: set[str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bundle = bundle
        self.models = (
            {f"{bundle.model_name}-tail-p{p}" for p in range(bundle.last)}
            if models is None
            else models
        )
        self.paths: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StockServer

    def log_message(self, *args) -> None:
        return None

    def _answer(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.paths.append(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        m = re.fullmatch(r"/v2/models/([^/]+)/infer", self.path)
        if m is None or m.group(1) not in self.server.models:
            self._answer(404, b'{"error":"not found"}', {"Content-Type": "application/json"})
            return
        n = int(self.headers["Inference-Header-Content-Length"])
        head = json.loads(body[:n])
        size = head["inputs"][0]["parameters"]["binary_data_size"]
        assert size == len(body) - n
        time.sleep(TAIL_S)  # the tail runs
        y = np.zeros(self.server.bundle.output_shape, np.float32)
        y.flat[0] = 7.0
        out = json.dumps(
            {
                "model_name": m.group(1),
                "outputs": [
                    {
                        "name": "output",
                        "datatype": "FP32",
                        "shape": list(y.shape),
                        "parameters": {"binary_data_size": y.nbytes},
                    }
                ],
            }
        ).encode()
        self._answer(
            200,
            out + y.tobytes(),
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(out)),
            },
        )


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


def _serve(bundle: Bundle, models: set[str] | None = None) -> StockServer:
    srv = StockServer(bundle, models)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


@pytest.fixture
def stock(bundle):
    srv = _serve(bundle)
    yield srv
    srv.shutdown()
    srv.server_close()


def _shaper() -> LinkShaper:
    t = np.arange(0.0, 600.0)
    return LinkShaper(BandwidthTrace("const", t, np.full(t.shape, SHAPED_MBPS)))


def _x(bundle: Bundle, p: int) -> np.ndarray:
    return np.random.default_rng(p).normal(size=bundle.partitions[p].wire_shape).astype(np.float32)


def test_without_server_ms_the_upload_measures_the_shaped_link(stock, bundle):
    client = OffloadClient(stock.url, bundle, shaper=_shaper())
    results = [client.infer(1, _x(bundle, 1), deadline_s=5.0) for _ in range(3)]
    for r in results:
        assert r.output.flat[0] == 7.0 and r.link_measure == "upload" and r.server_ms == 0.0
        assert r.total_ms >= TAIL_S * 1000.0
    rates = [r.bandwidth_mbps for r in results]
    # within a factor of the shaping rate (headers ride with the payload: a little under it)
    assert 0.5 * SHAPED_MBPS < float(np.median(rates)) < 1.3 * SHAPED_MBPS, rates
    # what the client measured before: the tail's compute counted as transfer time
    r = results[0]
    old = 8.0 * bundle.partitions[1].wire_bytes / ((r.total_ms - r.rtt_ms) / 1000.0) / 1e6
    assert old < 0.4 * SHAPED_MBPS


def test_the_probe_falls_back_to_an_inference_once(stock, bundle):
    client = OffloadClient(stock.url, bundle, shaper=_shaper())
    assert client.probe_route is None
    bw, rtt, nbytes = client.probe()
    assert client.probe_route == "infer"
    p = client.probe_partition()
    assert p == 2  # the tiny bundle's activations are all < 32 KiB: the most bytes, later cut
    assert 0.5 * SHAPED_MBPS < bw < 1.3 * SHAPED_MBPS and rtt >= 0
    assert nbytes >= bundle.partitions[p].wire_bytes
    est = BandwidthEstimator(initial_mbps=50.0)
    outcome = est.maybe_probe(client.probe, probe_after_s=1.0)
    assert outcome is not None and outcome.ok and est.bandwidth_mbps < 2.0
    # the private route was tried once; every later probe went straight to the inference
    assert stock.paths.count(PROBE_PATH) == 1
    assert stock.paths.count(f"/v2/models/{bundle.model_name}-tail-p2/infer") == 2


def test_a_server_with_neither_route_is_not_probed(bundle):
    srv = _serve(bundle, models=set())
    try:
        client = OffloadClient(srv.url, bundle)
        with pytest.raises(ProbeUnavailable):
            client.probe()
        assert client.probe_route == "none"
        with pytest.raises(ProbeUnavailable):
            client.probe()
        assert len(srv.paths) == 2  # the probe route, then the inference; nothing since
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_loop_records_how_the_link_was_measured_and_probed(stock, bundle):
    cm = CostModel(synthetic_profile(bundle), Objective())
    client = OffloadClient(stock.url, bundle, shaper=_shaper())
    loop = DeviceLoop(
        bundle, FixedPolicy(1), Head(bundle), client=client,
        carbon=StaticCarbon({"device": 400.0, "server": 400.0}),
        estimator=BandwidthEstimator(initial_mbps=50.0),
        config=LoopConfig(deadline_ms=3000.0, probe_after_s=10.0),
        cost_model=cm, load=LoadSampler(0.0), log=io.StringIO(),
    )  # fmt: skip
    recs = [loop.infer(np.full(bundle.input_shape, 9, np.uint8)) for _ in range(2)]
    first, second = recs
    assert first.probe is not None and first.probe["route"] == "infer"
    assert first.probe["error"] is None and second.probe is None
    for r in recs:
        assert r.offloaded and r.offload is not None
        assert r.offload["link_measure"] == "upload" and r.offload["server_ms"] is None
        assert 0.5 * SHAPED_MBPS < r.offload["bandwidth_mbps"] < 1.3 * SHAPED_MBPS
    assert 0.5 * SHAPED_MBPS < loop.estimator.bandwidth_mbps < 1.3 * SHAPED_MBPS
    lines = [json.loads(s) for s in loop.log.getvalue().splitlines()]
    assert lines[0]["probe"]["route"] == "infer" and lines[1]["offload"]["link_measure"] == "upload"
