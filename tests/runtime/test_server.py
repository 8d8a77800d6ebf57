"""The edge server over real HTTP: the KServe v2 routes, checks before running, bounds.

In-process tests use the real ExecuTorch tails of the tiny bundle behind EdgeHTTPServer;
the fault table runs against a real `carboncp serve` subprocess and ends with liveness,
correct answers and a bounded RSS.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.artifacts.runners import make_runner
from carboncp.runtime.link import wire
from carboncp.runtime.link.offload import OffloadClient
from carboncp.runtime.link.server import EdgeHTTPServer, TailService, executorch_tails, warm_up

from tests.support.edge_server import ServerProcess
from tests.support.requires import require

psutil = require("psutil", "it measures the server's RSS (dev extra)")


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


@pytest.fixture(scope="module")
def full_model(bundle):
    head = make_runner(bundle, backend="litert")
    yield lambda x: head.run(bundle.last, x)
    head.close()


def _raw(url: str, data: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes to the server; return (status, headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # the request is complete: a short body reads as EOF
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                hdrs = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (
                        ln.partition(":") for ln in head.decode("latin-1").split("\r\n")[1:]
                    )
                }
                n = int(hdrs.get("content-length", "0"))
                if len(body) >= n:
                    break
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, hdrs, body


def _post(
    url: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict, bytes]:
    h = {"Content-Length": str(len(body)), **(headers or {})}
    req = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    req += "".join(f"{k}: {v}\r\n" for k, v in h.items() if v is not None) + "\r\n"
    return _raw(url, req.encode() + body)


def _get(url: str, path: str, token: str | None = None) -> tuple[int, dict, bytes]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return _raw(url, f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode())


def _infer_body(spec: wire.WireSpec, data: bytes) -> tuple[bytes, dict[str, str]]:
    head = wire.request_header(spec)
    return head + data, {wire.HEADER_LENGTH: str(len(head))}


# -- in process --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inproc(bundle):
    svc = TailService(bundle, executorch_tails(bundle), max_concurrency=2)
    warm_up(svc)
    httpd = EdgeHTTPServer(("127.0.0.1", 0), svc, token=None, max_body_bytes=1 << 20)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_health_and_metadata(inproc, bundle):
    assert _get(inproc.url, "/v2/health/live")[0] == 200
    status, _, body = _get(inproc.url, "/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, _, body = _get(inproc.url, "/v2/models")
    fp16 = [p for p in range(1, bundle.last) if bundle.partitions[p].float16 is not None]
    assert fp16, "the tiny bundle records float16 errors"
    assert json.loads(body)["models"] == sorted(
        [f"tiny_net-tail-p{p}" for p in range(bundle.last)]
        + [f"tiny_net-tail-p{p}-fp16" for p in fp16]
    )
    status, _, body = _get(inproc.url, "/v2/models/tiny_net-tail-p1")
    meta = json.loads(body)
    assert status == 200 and meta["parameters"]["partition"] == 1
    assert [i["datatype"] for i in meta["inputs"]] == ["FP32"]  # one entry per input
    assert meta["inputs"][0]["shape"] == list(bundle.partitions[1].wire_shape)
    status, _, body = _get(inproc.url, f"/v2/models/tiny_net-tail-p{fp16[0]}-fp16")
    meta = json.loads(body)
    assert status == 200 and meta["parameters"]["partition"] == fp16[0]
    assert [i["datatype"] for i in meta["inputs"]] == ["FP16"]
    assert meta["outputs"][0]["shape"] == list(bundle.output_shape)
    status, _, body = _get(inproc.url, "/v2/models/tiny_net-tail-p0")
    assert [i["datatype"] for i in json.loads(body)["inputs"]] == ["UINT8"]
    assert _get(inproc.url, "/v2/models/nope")[0] == 404
    assert _get(inproc.url, "/v2/models/tiny_net-tail-p3")[0] == 404  # p = P has no tail


def test_every_partition_equals_the_full_model(inproc, bundle, full_model):
    head = make_runner(bundle, backend="litert")
    rng = np.random.default_rng(3)
    for float16 in (False, True):
        client = OffloadClient(inproc.url, bundle, float16=float16)
        for _ in range(3):
            x = rng.integers(0, 256, bundle.input_shape, dtype=np.uint8)
            want = full_model(x)
            for p in range(bundle.last):
                a = x if p == 0 else head.run(p, x)
                got = client.infer(p, a, deadline_s=5.0)
                tol = 1e-5 if not float16 or p == 0 else 1e-3
                assert np.abs(got.output - want).max() <= tol, (p, float16)
                assert got.wire_dtype == (
                    "float16" if float16 and p > 0 else bundle.partitions[p].wire_dtype
                )


def test_json_output_on_request(inproc, bundle, full_model):
    x = np.random.default_rng(4).integers(0, 256, bundle.input_shape, dtype=np.uint8)
    spec = wire.wire_spec(bundle, 0)
    head = wire.request_header(spec, binary_output=False)
    status, hdrs, body = _post(
        inproc.url,
        "/v2/models/tiny_net-tail-p0/infer",
        head + wire.encode(x, spec),
        {wire.HEADER_LENGTH: str(len(head))},
    )
    assert status == 200 and wire.HEADER_LENGTH.lower() not in hdrs
    out = json.loads(body)["outputs"][0]
    assert np.allclose(
        np.array(out["data"], np.float32).reshape(out["shape"]), full_model(x), atol=1e-5
    )


def test_saturation_answers_503(bundle):
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def slow_tail(p, x):  # holds its slot until the test releases it
        entered.release()
        gate.wait(10)
        return np.zeros(bundle.output_shape, np.float32)

    svc = TailService(bundle, slow_tail, max_concurrency=1)
    svc.ready = True
    httpd = EdgeHTTPServer(("127.0.0.1", 0), svc)
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        spec = wire.wire_spec(bundle, 0)
        body, hdrs = _infer_body(spec, b"\0" * spec.nbytes)
        first: list[int] = []
        t = threading.Thread(
            target=lambda: first.append(
                _post(httpd.url, "/v2/models/tiny_net-tail-p0/infer", body, hdrs)[0]
            )
        )
        t.start()
        assert entered.acquire(timeout=10)
        status, _, err = _post(httpd.url, "/v2/models/tiny_net-tail-p0/infer", body, hdrs)
        assert status == 503 and "saturated" in json.loads(err)["error"]
        gate.set()
        t.join(10)
        assert first == [200]
        # the slot is free again
        assert _post(httpd.url, "/v2/models/tiny_net-tail-p0/infer", body, hdrs)[0] == 200
    finally:
        gate.set()
        httpd.shutdown()
        httpd.server_close()


# -- real process: the fault table -------------------------------------------------------

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tiny_bundle):
    srv = ServerProcess(tiny_bundle, token=TOKEN, args=("--max-body-mb", "0.25")).start()
    yield srv
    srv.stop()


def _bad_requests(bundle) -> list[tuple[str, bytes, int]]:
    """(name, raw request bytes, expected status) for the fault table."""
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    spec0 = wire.wire_spec(bundle, 0)
    spec1 = wire.wire_spec(bundle, 1)
    good_head = wire.request_header(spec0)

    def post(path, body, extra="", length=None, hl=None, with_auth=True):
        hl = len(good_head) if hl is None else hl
        n = len(body) if length is None else length
        req = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth if with_auth else ''}"
            f"Content-Length: {n}\r\n{wire.HEADER_LENGTH}: {hl}\r\n{extra}\r\n"
        )
        return req.encode() + body

    m0 = "/v2/models/tiny_net-tail-p0/infer"
    m1 = "/v2/models/tiny_net-tail-p1/infer"
    data0 = b"\7" * spec0.nbytes

    def with_head(h: dict, data: bytes = data0, path: str = m0) -> bytes:
        raw = json.dumps(h).encode()
        return post(path, raw + data, hl=len(raw))

    inp = json.loads(good_head)["inputs"][0]
    return [
        ("unknown model", post("/v2/models/nope/infer", good_head + data0), 404),
        ("tail of p = P", post("/v2/models/tiny_net-tail-p3/infer", good_head + data0), 404),
        ("unknown route", post("/v2/admin", b"x"), 404),
        ("no token", post(m0, good_head + data0, with_auth=False), 401),
        ("oversized body", post(m0, b"\0" * 16, length=1 << 30), 413),
        ("just over the limit", post(m0, b"\0" * (int(0.25 * (1 << 20)) + 1)), 413),
        (
            "chunked",
            (
                f"POST {m0} HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ).encode(),
            411,
        ),
        ("negative length", post(m0, b"", length=-5), 411),
        (
            "garbage length",
            (f"POST {m0} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: abc\r\n\r\n").encode(),
            411,
        ),
        ("header length past body", post(m0, good_head + data0, hl=10**6), 400),
        ("header length not a number", post(m0, good_head + data0, extra="", hl="zz"), 400),
        ("body not JSON", post(m0, b"\xff" * 40, hl=40), 400),
        ("JSON list", post(m0, b"[1,2,3]", hl=7), 400),
        ("no inputs", with_head({"outputs": []}), 400),
        ("two inputs", with_head({"inputs": [inp, inp]}), 400),
        ("wrong input name", with_head({"inputs": [{**inp, "name": "x"}]}), 400),
        ("wrong dtype for p=0", with_head({"inputs": [{**inp, "datatype": "FP32"}]}), 400),
        ("unknown dtype", with_head({"inputs": [{**inp, "datatype": "BF16"}]}), 400),
        ("wrong shape", with_head({"inputs": [{**inp, "shape": [1, 3, 32, 31]}]}), 400),
        ("negative dim", with_head({"inputs": [{**inp, "shape": [1, 3, -32, 32]}]}), 400),
        ("shape is a string", with_head({"inputs": [{**inp, "shape": "1x3x32x32"}]}), 400),
        ("huge shape", with_head({"inputs": [{**inp, "shape": [2**30, 2**30, 3, 3]}]}), 400),
        ("size lies", with_head({"inputs": [{**inp, "parameters": {"binary_data_size": 7}}]}), 400),
        ("short data", with_head({"inputs": [inp]}, data0[:-1]), 400),
        ("extra data", with_head({"inputs": [inp]}, data0 + b"\0"), 400),
        (
            "JSON data, not binary",
            with_head({"inputs": [{**inp, "parameters": {}, "data": [1] * 10}]}, b""),
            400,
        ),
        (
            "activation dtype mismatch",
            with_head(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "UINT8",
                            "shape": list(spec1.shape),
                            "parameters": {"binary_data_size": spec1.nbytes // 4},
                        }
                    ]
                },
                b"\0" * (spec1.nbytes // 4),
                m1,
            ),
            400,
        ),
        ("bad outputs", with_head({"inputs": [inp], "outputs": [{"name": "zzz"}]}), 400),
        ("outputs not a list", with_head({"inputs": [inp], "outputs": 5}), 400),
        ("truncated body", post(m0, good_head, length=len(good_head) + spec0.nbytes), 400),
        ("not HTTP", b"\x00\x01\x02 hello\r\n\r\n", 400),
        ("pickle payload", post(m0, b"\x80\x04\x95" + b"cos\nsystem\n" + b"\0" * 30, hl=20), 400),
    ]


def test_fault_table_4xx_and_server_stays_alive_with_bounded_memory(server, bundle, full_model):
    proc = psutil.Process(server.pid)
    table = _bad_requests(bundle)
    client = OffloadClient(server.url, bundle, token=TOKEN)
    x = np.random.default_rng(5).integers(0, 256, bundle.input_shape, dtype=np.uint8)
    client.infer(0, x, 5.0)  # warm: RSS baseline after the first real inference
    rss0 = proc.memory_info().rss
    for _round in range(5):
        for name, raw, want in table:
            try:
                status, hdrs, body = _raw(server.url, raw)
            except (ConnectionResetError, BrokenPipeError):
                pytest.fail(f"{name}: server reset the connection instead of answering {want}")
            assert status == want, f"{name}: got {status} {body[:200]!r}"
            assert "error" in json.loads(body), name
            if want == 401:
                assert hdrs.get("www-authenticate", "").startswith("Bearer")
    rss1 = proc.memory_info().rss
    assert server.alive()
    # ~160 malformed requests, some announcing a GiB: the server's memory must not follow them.
    assert rss1 - rss0 < 32 * 2**20, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MiB"
    # liveness: still ready, and still right
    assert _get(server.url, "/v2/health/ready")[0] == 200
    got = client.infer(0, x, 5.0)
    assert np.abs(got.output - full_model(x)).max() <= 1e-5


def test_wrong_or_missing_bearer_token_is_401(server, bundle):
    x = np.zeros(bundle.input_shape, np.uint8)
    from carboncp.runtime.errors import OffloadError

    for token in (None, "wrong", TOKEN + "x", ""):
        with pytest.raises(OffloadError, match="401"):
            OffloadClient(server.url, bundle, token=token).infer(0, x, 5.0)
        assert _get(server.url, "/v2/models", token=token)[0] == 401
    assert _get(server.url, "/v2/models", token=TOKEN)[0] == 200
    assert _get(server.url, "/v2/health/ready")[0] == 200  # probes need no token
    assert (
        OffloadClient(server.url, bundle, token=TOKEN).infer(0, x, 5.0).output.shape
        == bundle.output_shape
    )


def test_stalled_clients_do_not_block_others(server, bundle):
    """Connections that send half a request and stall must not stop real requests."""
    socks = []
    try:
        host, port = server.url.removeprefix("http://").split(":")
        for _ in range(8):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(
                b"POST /v2/models/tiny_net-tail-p0/infer HTTP/1.1\r\nContent-Length: 3000\r\n"
            )
            socks.append(s)
        time.sleep(0.2)
        x = np.zeros(bundle.input_shape, np.uint8)
        res = OffloadClient(server.url, bundle, token=TOKEN).infer(0, x, 5.0)
        assert res.output.shape == bundle.output_shape
    finally:
        for s in socks:
            s.close()
    assert server.alive()
