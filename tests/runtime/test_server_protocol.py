"""`carboncp serve` follows the Open Inference Protocol's defaults (issue 12, item 4).

A real `carboncp serve` process on loopback, driven by NVIDIA's own client (tritonclient:
health, metadata, JSON-data and binary inferences, float16 models of their own) and by raw
sockets for each default: JSON outputs unless binary is asked for, JSON `data` inputs up to
--max-json-mb (413 naming binary data beyond), 415 for a Content-Encoding, one metadata entry
per input, readiness routes without a token.
"""

from __future__ import annotations

import gzip
import json
import socket

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.artifacts.runners import make_runner
from carboncp.runtime.link import wire
from carboncp.runtime.link.offload import OffloadClient
from carboncp.runtime.link.routes import model_name

from tests.support.edge_server import ServerProcess
from tests.support.requires import require

httpclient = require("tritonclient.http", "NVIDIA's client drives the server (dev extra)")
triton_utils = require("tritonclient.utils", "NVIDIA's client drives the server (dev extra)")

TOKEN = "protocol-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_JSON = 64 * 1024  # --max-json-mb 0.0625: room for the tiny bundle's tensors as JSON


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


@pytest.fixture(scope="module")
def head(bundle):
    runner = make_runner(bundle, backend="litert")
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def server(tiny_bundle):
    srv = ServerProcess(
        tiny_bundle,
        token=TOKEN,
        args=("--max-json-mb", str(MAX_JSON / (1 << 20)), "--workers", "1"),
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def fp16_p(bundle) -> int:
    ps = [p for p in range(1, bundle.last) if bundle.partitions[p].float16 is not None]
    assert ps, "the tiny bundle records float16 errors"
    return ps[0]


def _image(bundle, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, bundle.input_shape, dtype=np.uint8)


def _request(
    url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request on a fresh socket; (status, lower-case headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    h = {"Host": "x", "Connection": "close", **(headers or {})}
    if method == "POST":
        h.setdefault("Content-Length", str(len(body)))
    raw = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(raw.encode() + b"\r\n" + body)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            buf += chunk
    head_raw, _, rest = buf.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), hdrs, rest[: int(hdrs.get("content-length", len(rest)))]


def _infer(url: str, model: str, head: dict, data: bytes = b"", headers=None):
    raw = json.dumps(head).encode()
    h = {**AUTH, **(headers or {})}
    if data:
        h[wire.HEADER_LENGTH] = str(len(raw))
    return _request(url, "POST", f"/v2/models/{model}/infer", raw + data, h)


def _binary_input(spec: wire.WireSpec) -> dict:
    return {
        "name": "input",
        "datatype": spec.datatype,
        "shape": list(spec.shape),
        "parameters": {"binary_data_size": spec.nbytes},
    }


# -- NVIDIA's client ---------------------------------------------------------------------


def test_tritonclient_health_and_metadata(triton, bundle, fp16_p):
    assert triton.is_server_live() and triton.is_server_ready()
    for p in range(bundle.last):  # readiness probes need no token
        assert triton.is_model_ready(model_name(bundle, p))
    assert triton.is_model_ready(model_name(bundle, fp16_p, float16=True))
    assert not triton.is_model_ready("nope")
    meta = triton.get_server_metadata(headers=dict(AUTH))
    assert "binary_tensor_data" in meta["extensions"]
    for p in range(bundle.last):
        m = triton.get_model_metadata(model_name(bundle, p), headers=dict(AUTH))
        assert [(i["name"], i["datatype"]) for i in m["inputs"]] == [
            ("input", wire.wire_spec(bundle, p).datatype)
        ]
        assert m["outputs"][0]["shape"] == list(bundle.output_shape)
    m = triton.get_model_metadata(model_name(bundle, fp16_p, float16=True), headers=dict(AUTH))
    assert [i["datatype"] for i in m["inputs"]] == ["FP16"]
    with pytest.raises(triton_utils.InferenceServerException, match=r"401|bearer"):
        triton.get_model_metadata(model_name(bundle, 0))  # metadata needs the token


@pytest.mark.parametrize("binary", [False, True], ids=["json-data", "binary"])
def test_tritonclient_inference_matches_the_full_model(triton, bundle, head, binary):
    for seed, p in enumerate(range(bundle.last)):
        x = _image(bundle, seed)
        want = head.run(bundle.last, x)
        a = x if p == 0 else head.run(p, x)
        inp = httpclient.InferInput("input", list(a.shape), wire.wire_spec(bundle, p).datatype)
        inp.set_data_from_numpy(a, binary_data=binary)
        out = httpclient.InferRequestedOutput("output", binary_data=binary)
        res = triton.infer(model_name(bundle, p), [inp], outputs=[out], headers=dict(AUTH))
        got = res.as_numpy("output")
        assert got.dtype == np.float32 and got.shape == tuple(bundle.output_shape)
        assert np.abs(got - want).max() <= 1e-5, (p, binary)
        # the answer is what was asked for: binary data or JSON data
        assert ("binary_data_size" in res.get_output("output").get("parameters", {})) is binary


def test_tritonclient_float16_model_and_default_outputs(triton, bundle, head, fp16_p):
    x = _image(bundle, 7)
    a = head.run(fp16_p, x).astype(np.float16)
    inp = httpclient.InferInput("input", list(a.shape), "FP16")
    inp.set_data_from_numpy(a)
    # no outputs named: tritonclient asks for binary with the request's binary_data_output
    res = triton.infer(model_name(bundle, fp16_p, float16=True), [inp], headers=dict(AUTH))
    assert np.abs(res.as_numpy("output") - head.run(bundle.last, x)).max() <= 1e-3
    with pytest.raises(triton_utils.InferenceServerException, match="-fp16"):
        triton.infer(
            model_name(bundle, fp16_p), [inp], headers=dict(AUTH)
        )  # one datatype per model


def test_tritonclient_gzip_request_is_415(triton, bundle):
    x = _image(bundle, 1)
    inp = httpclient.InferInput("input", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x)
    with pytest.raises(triton_utils.InferenceServerException, match="gzip") as e:
        triton.infer(
            model_name(bundle, 0), [inp], headers=dict(AUTH), request_compression_algorithm="gzip"
        )
    assert "415" in str(e.value.status())


# -- each default on a raw socket ---------------------------------------------------------


def test_outputs_are_json_unless_binary_is_asked_for(server, bundle, head):
    x = _image(bundle, 2)
    want = head.run(bundle.last, x)
    spec = wire.wire_spec(bundle, 0)
    data = wire.encode(x, spec)
    m0 = model_name(bundle, 0)
    for outputs in (None, [], [{"name": "output"}], [{"name": "output", "parameters": {}}]):
        req = {"inputs": [_binary_input(spec)]}
        if outputs is not None:
            req["outputs"] = outputs
        status, hdrs, body = _infer(server.url, m0, req, data)
        assert status == 200 and hdrs["content-type"] == "application/json", (outputs, body)
        assert wire.HEADER_LENGTH.lower() not in hdrs
        out = json.loads(body)["outputs"][0]
        assert np.abs(np.array(out["data"], np.float32).reshape(out["shape"]) - want).max() <= 1e-5
    asks = [
        {"outputs": [{"name": "output", "parameters": {"binary_data": True}}]},
        {"parameters": {"binary_data_output": True}},
        {"parameters": {"binary_data_output": True}, "outputs": [{"name": "output"}]},
    ]
    for ask in asks:
        status, hdrs, body = _infer(server.url, m0, {"inputs": [_binary_input(spec)], **ask}, data)
        assert status == 200 and wire.HEADER_LENGTH.lower() in hdrs, ask
        n = int(hdrs[wire.HEADER_LENGTH.lower()])
        got = wire.decode(body[n:], wire.output_spec(bundle))
        assert np.abs(got - want).max() <= 1e-5
    # the output's own parameter wins over the request's
    req = {
        "inputs": [_binary_input(spec)],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "output", "parameters": {"binary_data": False}}],
    }
    status, hdrs, body = _infer(server.url, m0, req, data)
    assert status == 200 and "data" in json.loads(body)["outputs"][0]
    req = {"inputs": [_binary_input(spec)], "parameters": {"binary_data_output": "yes"}}
    assert _infer(server.url, m0, req, data)[0] == 400


def test_the_device_client_still_gets_binary(server, bundle, head):
    """OffloadClient asks for binary outputs explicitly (binary_data: true)."""
    assert json.loads(wire.request_header(wire.wire_spec(bundle, 0)))["outputs"] == [
        {"name": "output", "parameters": {"binary_data": True}}
    ]
    x = _image(bundle, 3)
    for float16 in (False, True):
        client = OffloadClient(server.url, bundle, token=TOKEN, float16=float16)
        for p in range(bundle.last):
            res = client.infer(p, x if p == 0 else head.run(p, x), 5.0)
            tol = 1e-3 if float16 and p > 0 else 1e-5
            assert np.abs(res.output - head.run(bundle.last, x)).max() <= tol
            assert res.server_ms > 0  # the binary answer's parameters reached the client


def test_json_data_inputs_up_to_the_limit(server, bundle, head, fp16_p):
    x = _image(bundle, 4)
    want = head.run(bundle.last, x)
    for p in range(bundle.last):
        a = x if p == 0 else head.run(p, x)
        spec = wire.wire_spec(bundle, p)
        for data in (a.ravel().tolist(), a.tolist()):  # flat or nested, row-major
            req = {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": spec.datatype,
                        "shape": list(a.shape),
                        "data": data,
                    }
                ]
            }
            status, _, body = _infer(server.url, model_name(bundle, p), req)
            assert status == 200, body[:300]
            out = json.loads(body)["outputs"][0]
            got = np.array(out["data"], np.float32).reshape(out["shape"])
            assert np.abs(got - want).max() <= 1e-5, p
    a = head.run(fp16_p, x).astype(np.float16)
    req = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP16",
                "shape": list(a.shape),
                "data": a.ravel().tolist(),
            }
        ]
    }
    status, _, body = _infer(server.url, model_name(bundle, fp16_p, float16=True), req)
    assert status == 200
    got = np.array(json.loads(body)["outputs"][0]["data"], np.float32)
    assert np.abs(got.reshape(bundle.output_shape) - want).max() <= 1e-3
    # bad JSON data: 400 naming what is wrong
    spec0 = wire.wire_spec(bundle, 0)
    n = spec0.nbytes
    m0 = model_name(bundle, 0)
    for data, msg in (
        ([1] * (n - 1), "values"),
        ([256] + [0] * (n - 1), "0..255"),
        ([0.5] * n, "integers"),
        (["1"] * n, "integers"),
        ([[1, 2], [3]], "list of numbers"),
        ({"a": 1}, "list of numbers"),
        ([None] * n, "integers"),
    ):
        req = {
            "inputs": [
                {"name": "input", "datatype": "UINT8", "shape": list(spec0.shape), "data": data}
            ]
        }
        status, _, body = _infer(server.url, m0, req)
        assert status == 400 and msg in json.loads(body)["error"], (data, body)


def test_json_data_beyond_the_limit_is_413_naming_binary(server, bundle):
    spec = wire.wire_spec(bundle, 0)
    m0 = model_name(bundle, 0)
    big = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "UINT8",
                    "shape": list(spec.shape),
                    "data": [0] * spec.nbytes,
                }
            ],
            "pad": " " * MAX_JSON,
        }
    ).encode()
    status, _, body = _request(server.url, "POST", f"/v2/models/{m0}/infer", big, AUTH)
    err = json.loads(body)["error"]
    assert status == 413 and "binary" in err and str(MAX_JSON) in err
    # the JSON part announced by Inference-Header-Content-Length counts the same way
    status, _, body = _request(
        server.url,
        "POST",
        f"/v2/models/{m0}/infer",
        big + bytes(spec.nbytes),
        {**AUTH, wire.HEADER_LENGTH: str(len(big))},
    )
    assert status == 413 and "binary" in json.loads(body)["error"]
    # a binary request of the same size is fine: the limit is on JSON only
    x = np.zeros(spec.shape, np.uint8)
    assert OffloadClient(server.url, bundle, token=TOKEN).infer(0, x, 5.0)


def test_content_encoding_is_415_naming_it(server, bundle):
    spec = wire.wire_spec(bundle, 0)
    head = json.dumps({"inputs": [_binary_input(spec)]}).encode()
    body = gzip.compress(head + bytes(spec.nbytes))
    for enc in ("gzip", "deflate", "br"):
        status, _, answer = _request(
            server.url,
            "POST",
            f"/v2/models/{model_name(bundle, 0)}/infer",
            body,
            {**AUTH, "Content-Encoding": enc, wire.HEADER_LENGTH: str(len(head))},
        )
        err = json.loads(answer)["error"]
        assert status == 415 and repr(enc) in err and "uncompressed" in err
    # identity is no encoding at all
    status, _, _ = _infer(
        server.url,
        model_name(bundle, 0),
        {"inputs": [_binary_input(spec)]},
        bytes(spec.nbytes),
        {"Content-Encoding": "identity"},
    )
    assert status == 200


def test_one_metadata_entry_per_input_and_one_datatype_per_model(server, bundle, fp16_p):
    status, _, body = _request(server.url, "GET", "/v2/models", headers=AUTH)
    names = json.loads(body)["models"]
    assert model_name(bundle, fp16_p, float16=True) in names
    for name in names:
        status, _, body = _request(server.url, "GET", f"/v2/models/{name}", headers=AUTH)
        meta = json.loads(body)
        assert status == 200 and len(meta["inputs"]) == 1, name
        assert (meta["inputs"][0]["datatype"] == "FP16") is name.endswith("-fp16"), name
    # FP32 sent to the float16 model is refused, naming the model that takes it
    spec = wire.wire_spec(bundle, fp16_p)
    status, _, body = _infer(
        server.url,
        model_name(bundle, fp16_p, float16=True),
        {"inputs": [_binary_input(spec)]},
        bytes(spec.nbytes),
    )
    assert status == 400 and repr(model_name(bundle, fp16_p)) in json.loads(body)["error"]


def test_readiness_routes_need_no_token_and_the_rest_does(server, bundle):
    m1 = model_name(bundle, 1)
    for headers in ({}, {"Authorization": "Bearer wrong"}, AUTH):
        for path in (
            "/v2/health/live",
            "/v2/health/ready",
            f"/v2/models/{m1}/ready",
            f"/v2/models/{m1}/versions/1/ready",
        ):
            status = _request(server.url, "GET", path, headers=headers)[0]
            assert status == 200, (path, headers)
        assert _request(server.url, "GET", "/v2/models/nope/ready", headers=headers)[0] == 404
    for path in ("/v2", "/v2/models", f"/v2/models/{m1}", f"/v2/models/{m1}/versions/1"):
        assert _request(server.url, "GET", path)[0] == 401, path
        assert _request(server.url, "GET", path, headers=AUTH)[0] == 200, path
