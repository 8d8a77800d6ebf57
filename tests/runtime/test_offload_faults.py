"""Whatever an edge server answers (malformed JSON, wrong types, huge numbers, deep nesting),
the offload client raises OffloadFailed (the loop then finishes locally) or returns a valid
result; and the server answers 400 to a request header nested too deeply."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.link import wire
from carboncp.runtime.link.offload import OffloadClient, OffloadFailed
from carboncp.runtime.link.server import RequestError, TailService
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


class CannedServer:
    """Answers every connection with `self.response` (raw HTTP bytes) after reading the request."""

    def __init__(self) -> None:
        self.response = b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                buf = b""
                try:
                    while b"\r\n\r\n" not in buf:
                        buf += conn.recv(65536)
                    head, _, body = buf.partition(b"\r\n\r\n")
                    n = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                                 if ln.lower().startswith(b"content-length")))  # fmt: skip
                    while len(body) < n:
                        body += conn.recv(65536)
                    conn.sendall(self.response)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _http(status: int, body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + body


def _json_answer(head: object, binary: bytes = b"", status: int = 200) -> bytes:
    raw = json.dumps(head).encode()
    return _http(status, raw + binary, f"{wire.HEADER_LENGTH}: {len(raw)}\r\n")


@pytest.fixture(scope="module")
def setup(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    srv = CannedServer()
    yield bundle, srv, OffloadClient(srv.url, bundle)
    srv.close()


def _x(bundle: Bundle) -> np.ndarray:
    return np.zeros(bundle.partitions[1].wire_shape, np.float32)


def _output(bundle: Bundle, **params) -> dict:
    shape = list(bundle.output_shape)
    data = [0.5] * int(np.prod(shape))
    return {"outputs": [{"name": "output", "datatype": "FP32", "shape": shape, "data": data}],
            "parameters": params}  # fmt: skip


def test_huge_numbers_in_parameters_are_ignored_not_fatal(setup) -> None:
    bundle, srv, client = setup
    srv.response = _json_answer(_output(bundle, server_ms=10**400, server_load=-(10**400)))
    r = client.infer(1, _x(bundle), 5.0)
    assert r.server_ms == 0.0 and r.server_load == 0.0 and np.allclose(r.output, 0.5)


@pytest.mark.parametrize(
    "answer",
    [
        lambda b: _json_answer({**_output(b), "outputs": [{**_output(b)["outputs"][0], "data": {"a": 1}}]}),
        lambda b: _json_answer({**_output(b), "outputs": [{**_output(b)["outputs"][0], "data": None}]}),
        lambda b: _http(200, b"[" * 50000, f"{wire.HEADER_LENGTH}: 50000\r\n"),
        lambda b: _http(500, b"[" * 50000),
        lambda b: _http(200, b"\xff\xfe"),
    ],
)  # fmt: skip
def test_malformed_answers_are_offload_failures(setup, answer) -> None:
    bundle, srv, client = setup
    srv.response = answer(bundle)
    with pytest.raises(OffloadFailed):
        client.infer(1, _x(bundle), 5.0)


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**400), 10**400), st.floats(), st.text(max_size=8),
    st.sampled_from(["output", "FP32", "FP16", "UINT8", [1, 10], 40]),
)  # fmt: skip
KEYS = ["outputs", "name", "datatype", "shape", "parameters", "binary_data_size", "data",
        "server_ms", "server_load", "error"]  # fmt: skip
DOCS = st.recursive(
    SCALARS,
    lambda c: st.one_of(
        st.lists(c, max_size=4), st.dictionaries(st.sampled_from(KEYS), c, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=DOCS, binary=st.binary(max_size=48), status=st.sampled_from([200, 200, 400, 503]))
def test_fuzzed_answers_fail_cleanly_or_succeed(setup, doc, binary, status) -> None:
    bundle, srv, client = setup
    srv.response = _json_answer(doc, binary, status)
    try:
        r = client.infer(1, _x(bundle), 5.0)
    except OffloadFailed:
        return
    assert r.output.shape == tuple(bundle.output_shape)


def test_server_refuses_a_deeply_nested_header_with_400(setup) -> None:
    bundle, _, _ = setup
    svc = TailService(bundle, lambda p, x: x)
    body = b"[" * 50000
    with pytest.raises(RequestError) as ei:
        svc.check(sorted(svc.models)[0], body, str(len(body)))
    assert ei.value.status == 400
    with pytest.raises(wire.WireFormatError, match="nested"):
        wire.parse_json_header(body)
