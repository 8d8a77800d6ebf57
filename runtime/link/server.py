"""The edge server: runs a bundle's tails over HTTP with the KServe v2 / Open Inference Protocol.

One model per partition, named `{model}-tail-p{p}` (docs/SERVER.md), so that Triton or KServe
can serve the same tails with one model repository entry each. Requests use the binary tensor
data extension. Everything about a request (model, partition, dtype, shape, byte size) is
checked against the bundle before any tensor is built or any tail runs; the body is bounded
(413), in-flight inferences are bounded (503), an optional bearer token guards every route
except the health probes (401), and every malformed request gets a 4xx with a JSON error.
Standard library only (http.server); no pickle.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.link import wire
from carboncp.runtime.link.routes import PROBE_MAX_BYTES, PROBE_PATH, model_name

_MODEL_RE = re.compile(
    r"^/v2/models/([A-Za-z0-9_.\-]{1,128})(?:/versions/[A-Za-z0-9_.\-]{1,32})?(/infer|/ready)?$"
)
TailFn = Callable[[int, np.ndarray], np.ndarray]


class RequestError(Exception):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class TailService:
    """The protocol logic, independent of the HTTP plumbing (and testable without a socket)."""

    def __init__(self, bundle: Bundle, run_tail: TailFn, max_concurrency: int = 4):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.bundle = bundle
        self.run_tail = run_tail
        self.max_concurrency = max_concurrency
        self.models = {model_name(bundle, p): p for p in range(bundle.last)}
        self.specs = {p: wire.accepted_specs(bundle, p) for p in range(bundle.last)}
        self.out_spec = wire.output_spec(bundle)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._run_lock = threading.Lock()  # one tail at a time: runners are not thread-safe
        self._count_lock = threading.Lock()
        self.in_flight = 0
        self.ready = False
        self.counters = {"ok": 0, "rejected": 0, "failed": 0}

    def count(self, key: str) -> None:
        with self._count_lock:
            self.counters[key] = self.counters.get(key, 0) + 1

    @property
    def load(self) -> float:
        """Server load v in [0, 1]: share of inference slots in use."""
        return min(1.0, self.in_flight / self.max_concurrency)

    def metadata(self, name: str) -> dict[str, Any]:
        p = self._partition(name)
        return {
            "name": name,
            "versions": ["1"],
            "platform": "executorch",
            "inputs": [
                {
                    "name": wire.INPUT_NAME,
                    "datatype": s.datatype,
                    "shape": list(s.shape),
                }
                for s in self.specs[p]
            ],
            "outputs": [
                {
                    "name": wire.OUTPUT_NAME,
                    "datatype": self.out_spec.datatype,
                    "shape": list(self.out_spec.shape),
                }
            ],
            "parameters": {"partition": p, "cut": self.bundle.partitions[p].cut},
        }

    def _partition(self, name: str) -> int:
        if name not in self.models:
            raise RequestError(
                404, f"unknown model {name!r}; this server has {sorted(self.models)}"
            )
        return self.models[name]

    def check(self, name: str, body: bytes, header_length: str | None):
        """Everything about a request, checked before a tensor is built: (p, spec, data, binary_out)."""
        p = self._partition(name)
        try:
            head_raw, binary = wire.split_body(body, header_length)
            head = wire.parse_json_header(head_raw)
            inputs = head.get("inputs")
            if not isinstance(inputs, list) or len(inputs) != 1:
                raise wire.WireFormatError("'inputs' must list exactly one tensor")
            entry = inputs[0]
            spec, size = wire.tensor_spec_of(entry, "inputs[0]")
        except wire.WireFormatError as exc:
            raise RequestError(400, str(exc)) from None
        if entry.get("name") != wire.INPUT_NAME:
            raise RequestError(400, f"inputs[0].name must be {wire.INPUT_NAME!r}")
        if spec not in self.specs[p]:
            allowed = ", ".join(f"{s.datatype}{list(s.shape)}" for s in self.specs[p])
            raise RequestError(
                400, f"{name} takes {allowed}; got {spec.datatype}{list(spec.shape)}"
            )
        if size is None:
            raise RequestError(
                400,
                "only the binary tensor data extension is accepted (parameters.binary_data_size)",
            )
        if size != spec.nbytes or len(binary) != size:
            raise RequestError(
                400,
                f"binary_data_size {size} and {len(binary)} body bytes after the header must "
                f"both equal {spec.nbytes} for {spec.datatype}{list(spec.shape)}",
            )
        binary_out = True
        outputs = head.get("outputs")
        if outputs is not None:
            if not isinstance(outputs, list) or len(outputs) > 1:
                raise RequestError(400, "'outputs' must list at most one tensor")
            if outputs:
                o = outputs[0]
                if not isinstance(o, dict) or o.get("name") != wire.OUTPUT_NAME:
                    raise RequestError(400, f"outputs[0].name must be {wire.OUTPUT_NAME!r}")
                params = o.get("parameters") or {}
                if not isinstance(params, dict):
                    raise RequestError(400, "outputs[0].parameters must be an object")
                binary_out = params.get("binary_data", True) is not False
        return p, spec, binary, binary_out, head.get("id")

    def infer(self, name: str, body: bytes, header_length: str | None) -> tuple[bytes, int | None]:
        """Run one checked request; returns (response body, JSON header length or None)."""
        p, spec, binary, binary_out, req_id = self.check(name, body, header_length)
        if not self._slots.acquire(blocking=False):
            raise RequestError(
                503, f"server saturated ({self.max_concurrency} inferences in flight)"
            )
        try:
            with self._count_lock:
                self.in_flight += 1
                load = self.load
            x = wire.decode(binary, spec)  # float16 -> float32 here
            t0 = time.perf_counter()
            with self._run_lock:
                y = self.run_tail(p, x)
            server_ms = (time.perf_counter() - t0) * 1000.0
        except RequestError:
            raise
        except Exception as exc:  # a failing tail is the server's fault: 500, and stay up
            self.count("failed")
            raise RequestError(500, f"tail p={p} failed: {type(exc).__name__}: {exc}") from None
        finally:
            with self._count_lock:
                self.in_flight -= 1
            self._slots.release()
        y = np.asarray(y, dtype=np.float32).reshape(self.out_spec.shape)
        out: dict[str, Any] = {
            "model_name": name,
            "model_version": "1",
            "outputs": [
                {
                    "name": wire.OUTPUT_NAME,
                    "datatype": self.out_spec.datatype,
                    "shape": list(self.out_spec.shape),
                }
            ],
            "parameters": {"server_ms": round(server_ms, 3), "server_load": round(load, 3)},
        }
        if isinstance(req_id, str):
            out["id"] = req_id[:128]
        self.count("ok")
        if not binary_out:
            out["outputs"][0]["data"] = y.ravel().tolist()
            return json.dumps(out).encode(), None
        data = wire.encode(y, self.out_spec)
        out["outputs"][0]["parameters"] = {"binary_data_size": len(data)}
        head = json.dumps(out, separators=(",", ":")).encode()
        return head + data, len(head)


class _Handler(BaseHTTPRequestHandler):
    server: EdgeHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "carboncp-serve"
    timeout = 30  # seconds a client may stall mid-request before its socket is dropped

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write("serve: " + (fmt % args) + "\n")

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (bad request line, headers too long) answer in JSON too.
        self.close_connection = True
        self.request_version = "HTTP/1.1"  # never answer in HTTP/0.9 (no status line)
        with contextlib.suppress(OSError):
            self._error(code, message or "malformed HTTP request")

    def _drain(self, n: int) -> None:
        """Read and drop up to n unread body bytes after answering, so that closing the socket
        does not reset the connection before the client has read the answer."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            left = min(n, 4 * self.server.max_body_bytes)
            while left > 0:
                chunk = self.connection.recv(min(65536, left))
                if not chunk:
                    break
                left -= len(chunk)

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        if status >= 400:
            self.server.service.count("rejected" if status < 500 else "failed")
        self._json(status, {"error": message})

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        got = self.headers.get("Authorization", "")
        if hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            return True
        self._send(
            401,
            b'{"error": "missing or wrong bearer token"}',
            "application/json",
            {"WWW-Authenticate": 'Bearer realm="carboncp"'},
        )
        self.server.service.count("rejected")
        return False

    def _guarded(self, handle: Callable[[], None]) -> None:
        try:
            handle()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # never die on one request
            self.close_connection = True
            self._error(500, f"internal error: {type(exc).__name__}")

    def do_GET(self) -> None:
        self._guarded(self._get)

    def _get(self) -> None:
        svc = self.server.service
        path = self.path.split("?", 1)[0]
        if path == "/v2/health/live":
            return self._json(200, {"live": True})
        if path == "/v2/health/ready":
            return self._json(200 if svc.ready else 503, {"ready": svc.ready})
        if not self._authorised():
            return None
        if path == "/v2":
            return self._json(
                200,
                {"name": "carboncp", "version": "0.1.0", "extensions": ["binary_tensor_data"]},
            )
        if path == "/v2/models":
            return self._json(200, {"models": sorted(svc.models)})
        m = _MODEL_RE.match(path)
        if m and m.group(2) in (None, "/ready"):
            try:
                meta = svc.metadata(m.group(1))
            except RequestError as exc:
                return self._error(exc.status, str(exc))
            if m.group(2) == "/ready":
                return self._json(200 if svc.ready else 503, {"ready": svc.ready})
            return self._json(200, meta)
        return self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _post(self) -> None:
        svc = self.server.service
        path = self.path.split("?", 1)[0]
        if path == PROBE_PATH:
            return self._probe()
        m = _MODEL_RE.match(path)
        # Refusals before the body is read close the connection: the unread body must not be
        # taken for the next request.
        if not m or m.group(2) != "/infer":
            self.close_connection = True
            return self._error(404, f"no route POST {path}")
        if not self._authorised():
            self.close_connection = True
            return None
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return self._error(411, "send a Content-Length; chunked bodies are not accepted")
        raw_len = self.headers.get("Content-Length")
        try:
            length = int(raw_len) if raw_len is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return self._error(411, "a valid Content-Length header is required")
        if length > self.server.max_body_bytes:
            self.close_connection = True
            self._error(
                413, f"body of {length} bytes exceeds the limit of {self.server.max_body_bytes}"
            )
            return self._drain(length)
        if m.group(1) not in svc.models:
            self.close_connection = True
            self._error(404, f"unknown model {m.group(1)!r}; see GET /v2/models")
            return self._drain(length)
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return self._error(400, f"body ended after {len(body)} of {length} bytes")
        if not svc.ready:
            return self._error(503, "server is still loading its tails")
        try:
            out, head_len = svc.infer(m.group(1), body, self.headers.get(wire.HEADER_LENGTH))
        except RequestError as exc:
            return self._error(exc.status, str(exc))
        if head_len is None:
            return self._send(200, out, "application/json")
        return self._send(200, out, "application/octet-stream", {wire.HEADER_LENGTH: str(head_len)})

    def _probe(self) -> None:
        """The device's active bandwidth probe: read up to PROBE_MAX_BYTES, answer the count."""
        if not self._authorised():
            self.close_connection = True
            return None
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 <= length <= PROBE_MAX_BYTES:
            self.close_connection = True
            self._error(
                413 if length > PROBE_MAX_BYTES else 411,
                f"probe bodies are 0..{PROBE_MAX_BYTES} bytes",
            )
            return self._drain(max(length, 0))
        n = len(self.rfile.read(length))
        return self._json(200, {"bytes": n})


class EdgeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        service: TailService,
        token: str | None = None,
        max_body_bytes: int = 16 << 20,
        max_connections: int = 64,
        verbose: bool = False,
    ):
        super().__init__(address, _Handler)
        self.service = service
        self.token = token or None
        self.max_body_bytes = int(max_body_bytes)
        self.verbose = verbose
        self._conn_slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        # Bound the threads: beyond max_connections, refuse at once rather than queue forever.
        if not self._conn_slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 33\r\nConnection: close\r\n\r\n"
                    b'{"error": "too many connections"}'
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._conn_slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def executorch_tails(bundle: Bundle) -> TailFn:
    """The ExecuTorch tail runner of the bundle, as a function p, x -> y (lazy heavy import)."""
    from carboncp.runtime.artifacts.runners import make_runner

    runner = make_runner(bundle, backend="executorch", part="tail")
    return runner.run


def warm_up(service: TailService) -> None:
    """Load and run every tail once so that 'ready' means the first request is not a cold start."""
    for p in range(service.bundle.last):
        spec = service.specs[p][0]
        x = np.zeros(spec.shape, dtype=spec.dtype)
        service.run_tail(p, x if spec.dtype == "uint8" else x.astype(np.float32))
    service.ready = True
