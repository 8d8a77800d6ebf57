"""The edge server: runs a bundle's tails over HTTP with the KServe v2 / Open Inference Protocol.

One model per partition and datatype, named `{model}-tail-p{p}` (the bundle's wire dtype) and
`{model}-tail-p{p}-fp16` (float16, where the bundle allows it) (docs/SERVER.md), so that Triton
or KServe can serve the same tails with one model repository entry each. Requests use the
binary tensor data extension, or JSON `data` up to `max_json_bytes`; outputs are JSON unless
binary is asked for, as the protocol says. Everything about a request (model, partition,
dtype, shape, byte size) is checked against the bundle before any tensor is built or any tail
runs; the body is bounded (413), in-flight inferences are bounded (503), an optional bearer
token guards every route except the health and readiness probes (401), compressed bodies are
refused (415), and every malformed request gets a 4xx with a JSON error.
Every refusal drains (a bounded part of) the unread body before closing, so the client reads
the answer instead of a reset.

Hostile or broken clients: the request line and headers must arrive within
`header_timeout_s` (default 5 s, also the idle limit between keep-alive requests), a body at
no less than MIN_BODY_RATE bytes/s, a connection carries at most MAX_REQUESTS_PER_CONNECTION
requests, and when every connection slot is taken the connection that has waited longest for
its headers is closed to make room, so idle or half-open connections cannot starve the
inference slots. The tails may run in worker processes (runtime/link/tail_workers.py).
Standard library only (http.server); no pickle.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import math
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
from carboncp.runtime.link.tail_workers import TailUnavailable

_MODEL_RE = re.compile(
    r"^/v2/models/([A-Za-z0-9_.\-]{1,128})(?:/versions/[A-Za-z0-9_.\-]{1,32})?(/infer|/ready)?$"
)
TailFn = Callable[[int, np.ndarray], np.ndarray]

MAX_JSON_BYTES = 4 << 20  # default bound of a request's JSON part (JSON `data` inputs included)

HEADER_TIMEOUT_S = 5.0  # request line + headers, and the idle wait between keep-alive requests
MIN_BODY_RATE = 64 * 1024  # bytes/s: a body slower than this (after 5 s of grace) is dropped
BODY_GRACE_S = 5.0
MAX_REQUESTS_PER_CONNECTION = 100
DRAIN_S = 2.0  # at most this long reading an unwanted body after a refusal
WRITE_TIMEOUT_S = 30.0  # a client that stops reading its answer is dropped after this
EVICT_AFTER_S = 0.2  # a connection waiting longer than this for its headers may be evicted


class RequestError(Exception):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class TailService:
    """The protocol logic, independent of the HTTP plumbing (and testable without a socket)."""

    def __init__(
        self,
        bundle: Bundle,
        run_tail: TailFn,
        max_concurrency: int = 4,
        serialise: bool = True,
        max_json_bytes: int = MAX_JSON_BYTES,
    ):
        """`serialise`: one tail at a time (an in-process runner is not thread-safe); a
        worker pool (TailWorkers.run) runs several at once and passes False.
        `max_json_bytes`: bound of a request's JSON part, JSON `data` inputs included."""
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.bundle = bundle
        self.run_tail = run_tail
        self.max_concurrency = max_concurrency
        self.max_json_bytes = int(max_json_bytes)
        # model name -> (partition, the one input it takes): one datatype per model
        self.models: dict[str, tuple[int, wire.WireSpec]] = {}
        for p in range(bundle.last):
            for spec in wire.accepted_specs(bundle, p):
                self.models[model_name(bundle, p, spec.dtype == "float16")] = (p, spec)
        self.out_spec = wire.output_spec(bundle)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._run_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if serialise else contextlib.nullcontext()
        )
        self.failed: dict[int, str] = {}  # partition -> why its tail cannot run (warm-up)
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
        p, spec = self._model(name)
        return {
            "name": name,
            "versions": ["1"],
            "platform": "executorch",
            "inputs": [
                {"name": wire.INPUT_NAME, "datatype": spec.datatype, "shape": list(spec.shape)}
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

    def _model(self, name: str) -> tuple[int, wire.WireSpec]:
        if name not in self.models:
            raise RequestError(
                404, f"unknown model {name!r}; this server has {sorted(self.models)}"
            )
        return self.models[name]

    def check(self, name: str, body: bytes, header_length: str | None):
        """Everything about a request, checked before a tensor is built:
        (p, spec, tensor bytes, binary_out, request id)."""
        p, spec = self._model(name)
        try:
            head_raw, binary = wire.split_body(body, header_length)
            head = wire.parse_json_header(head_raw, limit=self.max_json_bytes)
            inputs = head.get("inputs")
            if not isinstance(inputs, list) or len(inputs) != 1:
                raise wire.WireFormatError("'inputs' must list exactly one tensor")
            entry = inputs[0]
            got, size = wire.tensor_spec_of(entry, "inputs[0]")
        except wire.WireFormatError as exc:
            raise RequestError(400, str(exc)) from None
        if entry.get("name") != wire.INPUT_NAME:
            raise RequestError(400, f"inputs[0].name must be {wire.INPUT_NAME!r}")
        if got != spec:
            hint = ""
            for other, (q, s) in self.models.items():
                if q == p and s == got:
                    hint = f"; send {got.datatype} to model {other!r}"
            raise RequestError(
                400,
                f"{name} takes {spec.datatype}{list(spec.shape)}; "
                f"got {got.datatype}{list(got.shape)}{hint}",
            )
        if size is None:
            if "data" not in entry:
                raise RequestError(
                    400, "inputs[0] has neither parameters.binary_data_size nor JSON 'data'"
                )
            if len(binary):
                raise RequestError(400, "binary bytes after the header, but no binary_data_size")
            binary = memoryview(_json_tensor(entry["data"], spec))
        elif size != spec.nbytes or len(binary) != size:
            raise RequestError(
                400,
                f"binary_data_size {size} and {len(binary)} body bytes after the header must "
                f"both equal {spec.nbytes} for {spec.datatype}{list(spec.shape)}",
            )
        return p, spec, binary, _binary_output(head), head.get("id")

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
            if p in self.failed:
                raise RequestError(500, f"tail p={p} {self.failed[p]}")
            x = wire.decode(binary, spec)  # float16 -> float32 here
            t0 = time.perf_counter()
            with self._run_lock:
                y = self.run_tail(p, x)
            server_ms = (time.perf_counter() - t0) * 1000.0
        except RequestError:
            raise
        except TailUnavailable as exc:  # no worker free in time, or a tail that kept crashing
            raise RequestError(503 if p not in self.failed else 500, str(exc)) from None
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


class _DeadlineReader(io.RawIOBase):
    """The handler's socket as a raw stream whose every read honours an absolute deadline,
    so that a client trickling one byte every few seconds cannot renew its own timeout."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline = time.monotonic() + HEADER_TIMEOUT_S

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("read deadline passed")
        self.sock.settimeout(remaining)
        return self.sock.recv_into(b)


class _Handler(BaseHTTPRequestHandler):
    server: EdgeHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "carboncp-serve"
    timeout = None  # reads are bounded by _DeadlineReader's absolute deadlines instead

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader, 65536)
        self._requests = 0
        self.server.track(self, waiting=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self)

    def handle_one_request(self) -> None:
        """One request, its line and headers within header_timeout_s (also the keep-alive idle
        limit); at most MAX_REQUESTS_PER_CONNECTION per connection."""
        self._requests += 1
        if self._requests > MAX_REQUESTS_PER_CONNECTION:
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + self.server.header_timeout_s
        self.server.track(self, waiting=True)
        super().handle_one_request()

    def _body_deadline(self, length: int) -> None:
        """Headers are in: the connection is busy; the body gets time in proportion to its size."""
        self.server.track(self, waiting=False)
        self._reader.deadline = time.monotonic() + BODY_GRACE_S + max(0, length) / MIN_BODY_RATE

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write("serve: " + (fmt % args) + "\n")

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None):
        self.connection.settimeout(WRITE_TIMEOUT_S)  # the read deadline does not bound writes
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

    def _announced_length(self) -> int:
        """The Content-Length header as an int, or -1 when absent or invalid."""
        try:
            return int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            return -1

    def _drain(self, n: int) -> None:
        """After a refusal: read and drop up to n unread body bytes (at most 4x the body limit,
        for at most DRAIN_S), so that closing the socket does not reset the connection before
        the client has read the answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            end = time.monotonic() + DRAIN_S
            left = min(n, 4 * self.server.max_body_bytes)
            while left > 0:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self.connection.settimeout(remaining)
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

    def _refuse(self, status: int, message: str, extra: dict[str, str] | None = None) -> None:
        """Answer a refusal before the body was read, then drain the announced body."""
        self.close_connection = True
        if status >= 400:
            self.server.service.count("rejected" if status < 500 else "failed")
        self._send(status, json.dumps({"error": message}).encode(), "application/json", extra)
        if self.command == "POST":
            self._drain(max(0, self._announced_length()))

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        got = self.headers.get("Authorization", "")
        if hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            return True
        self._refuse(
            401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="carboncp"'}
        )
        return False

    def _guarded(self, handle: Callable[[], None]) -> None:
        self._body_deadline(max(0, self._announced_length()))
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
        m = _MODEL_RE.match(path)
        if m and m.group(2) == "/ready":  # a readiness probe: no token, like /v2/health/ready
            if m.group(1) not in svc.models:
                return self._error(404, f"unknown model {m.group(1)!r}; see GET /v2/models")
            ok = svc.ready and svc.models[m.group(1)][0] not in svc.failed
            return self._json(200 if ok else 503, {"ready": ok})
        if not self._authorised():
            return None
        if path == "/v2":
            return self._json(
                200,
                {"name": "carboncp", "version": "0.1.0", "extensions": ["binary_tensor_data"]},
            )
        if path == "/v2/models":
            return self._json(200, {"models": sorted(svc.models)})
        if m and m.group(2) is None:
            try:
                return self._json(200, svc.metadata(m.group(1)))
            except RequestError as exc:
                return self._error(exc.status, str(exc))
        return self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _post(self) -> None:
        svc = self.server.service
        path = self.path.split("?", 1)[0]
        if path == PROBE_PATH:
            return self._probe()
        m = _MODEL_RE.match(path)
        # Refusals before the body is read answer, drain a bounded part of the body and close:
        # the unread body must not be taken for the next request, nor reset the connection.
        if not m or m.group(2) != "/infer":
            return self._refuse(404, f"no route POST {path}")
        if not self._authorised():
            return None
        if self.headers.get("Transfer-Encoding"):
            return self._refuse(411, "send a Content-Length; chunked bodies are not accepted")
        length = self._announced_length()
        if length < 0:
            return self._refuse(411, "a valid Content-Length header is required")
        if length > self.server.max_body_bytes:
            return self._refuse(
                413, f"body of {length} bytes exceeds the limit of {self.server.max_body_bytes}"
            )
        encoding = self.headers.get("Content-Encoding", "identity").strip()
        if encoding.lower() != "identity":
            return self._refuse(
                415, f"Content-Encoding {encoding!r} is not supported; send the body uncompressed"
            )
        json_length = _json_part_length(length, self.headers.get(wire.HEADER_LENGTH))
        if json_length > svc.max_json_bytes:
            return self._refuse(
                413,
                f"JSON part of {json_length} bytes exceeds the limit of {svc.max_json_bytes} "
                "for JSON data; send the tensor as binary data (binary tensor data extension: "
                f"parameters.binary_data_size and the {wire.HEADER_LENGTH} header)",
            )
        if m.group(1) not in svc.models:
            return self._refuse(404, f"unknown model {m.group(1)!r}; see GET /v2/models")
        if not svc.ready:
            return self._refuse(503, "server is still loading its tails", {"Retry-After": "1"})
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return self._error(400, f"body ended after {len(body)} of {length} bytes")
        try:
            out, head_len = svc.infer(m.group(1), body, self.headers.get(wire.HEADER_LENGTH))
        except RequestError as exc:
            return self._error(exc.status, str(exc))
        if head_len is None:
            return self._send(200, out, "application/json")
        return self._send(200, out, "application/octet-stream", {wire.HEADER_LENGTH: str(head_len)})

    def _probe(self) -> None:
        """The device's active bandwidth probe: read up to PROBE_MAX_BYTES, answer the count.
        While the tails are still loading it answers 503 like an inference would: a probe
        tells the device whether offloading works now, not only whether the link carries."""
        if not self._authorised():
            return None
        length = self._announced_length()
        if not 0 <= length <= PROBE_MAX_BYTES:
            return self._refuse(
                413 if length > PROBE_MAX_BYTES else 411,
                f"probe bodies are 0..{PROBE_MAX_BYTES} bytes",
            )
        if not self.server.service.ready:
            return self._refuse(503, "server is still loading its tails", {"Retry-After": "1"})
        n = len(self.rfile.read(length))
        return self._json(200, {"bytes": n})


class EdgeHTTPServer(ThreadingHTTPServer):
    """The HTTP plumbing: one thread per connection, at most `max_connections` of them.

    When every connection slot is taken, the connection that has waited longest for its
    request headers (more than EVICT_AFTER_S) is closed to make room; only when none is
    waiting is the new connection refused with 503 (after draining a bounded part of its
    request, so the client reads the answer)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        service: TailService,
        token: str | None = None,
        max_body_bytes: int = 16 << 20,
        max_connections: int = 64,
        verbose: bool = False,
        header_timeout_s: float = HEADER_TIMEOUT_S,
    ):
        super().__init__(address, _Handler)
        self.service = service
        self.token = token or None
        self.max_body_bytes = int(max_body_bytes)
        self.verbose = verbose
        self.header_timeout_s = float(header_timeout_s)
        self.max_connections = int(max_connections)
        self._conn_slots = threading.BoundedSemaphore(max_connections)
        self._refusals = threading.BoundedSemaphore(8)  # threads draining refused connections
        self._track_lock = threading.Lock()
        self._waiting: dict[_Handler, float] = {}  # handler -> since when it waits for headers
        self.evicted = 0

    def track(self, handler: _Handler, waiting: bool) -> None:
        with self._track_lock:
            if waiting:
                self._waiting[handler] = time.monotonic()
            else:
                self._waiting.pop(handler, None)

    def untrack(self, handler: _Handler) -> None:
        with self._track_lock:
            self._waiting.pop(handler, None)

    def _evict_one(self) -> bool:
        """Close the connection waiting longest for its headers (if longer than EVICT_AFTER_S)."""
        now = time.monotonic()
        with self._track_lock:
            idle = [(t, id(h), h) for h, t in self._waiting.items() if now - t > EVICT_AFTER_S]
            if not idle:
                return False
            _, _, victim = min(idle)
            self._waiting.pop(victim, None)
        with contextlib.suppress(OSError):
            victim.connection.shutdown(socket.SHUT_RDWR)  # its blocked read returns at once
        self.evicted += 1
        return True

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        # Bound the threads: beyond max_connections, make room by evicting an idle connection,
        # else refuse at once rather than queue forever.
        if not self._conn_slots.acquire(blocking=False) and not (
            self._evict_one() and self._conn_slots.acquire(timeout=1.0)
        ):
            self._refuse_connection(request)
            return
        super().process_request(request, client_address)

    def _refuse_connection(self, request: socket.socket) -> None:
        if not self._refusals.acquire(blocking=False):
            self.shutdown_request(request)
            return

        def refuse() -> None:
            try:
                with contextlib.suppress(OSError):
                    request.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 33\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                        b'{"error": "too many connections"}'
                    )
                    request.shutdown(socket.SHUT_WR)
                    end = time.monotonic() + DRAIN_S
                    left = 4 * self.max_body_bytes
                    while left > 0 and time.monotonic() < end:
                        request.settimeout(max(1e-3, end - time.monotonic()))
                        chunk = request.recv(65536)
                        if not chunk:
                            break
                        left -= len(chunk)
            finally:
                self.shutdown_request(request)
                self._refusals.release()

        threading.Thread(target=refuse, daemon=True).start()

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._conn_slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"


def _json_part_length(length: int, header_length: str | None) -> int:
    """Bytes of a request's JSON part: the whole body without Inference-Header-Content-Length
    (an invalid value is refused with 400 once the body is read)."""
    if header_length is None:
        return length
    try:
        return min(length, max(0, int(header_length)))
    except ValueError:
        return 0


def _json_tensor(data: Any, spec: wire.WireSpec) -> bytes:
    """A JSON `data` input (flat or nested, row-major) as the wire bytes of `spec`, checked."""
    if not isinstance(data, list):
        raise RequestError(400, "inputs[0].data must be a list of numbers")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise RequestError(
            400, "inputs[0].data must be a (flat or nested) list of numbers"
        ) from None
    kinds = "iu" if spec.dtype == "uint8" else "iuf"
    if arr.dtype.kind not in kinds:
        what = "integers in 0..255" if spec.dtype == "uint8" else "numbers"
        raise RequestError(400, f"inputs[0].data must hold {what} for {spec.datatype}")
    n = math.prod(spec.shape)
    if arr.size != n:
        raise RequestError(
            400, f"inputs[0].data has {arr.size} values; {spec.datatype}{list(spec.shape)} has {n}"
        )
    if spec.dtype == "uint8" and (arr.min() < 0 or arr.max() > 255):
        raise RequestError(400, "inputs[0].data must hold integers in 0..255 for UINT8")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range floats become inf
        return wire.encode(arr.reshape(spec.shape).astype(spec.dtype), spec)


def _binary_output(head: dict[str, Any]) -> bool:
    """Whether the answer carries the output as binary data: only when asked for, by the
    output's `binary_data` parameter or the request's `binary_data_output` (the protocol's
    binary tensor data extension); JSON otherwise, as the protocol's default."""
    params = head.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise RequestError(400, "'parameters' must be an object")
    binary = params.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise RequestError(400, "parameters.binary_data_output must be true or false")
    outputs = head.get("outputs")
    if outputs is None:
        return binary
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise RequestError(400, "'outputs' must list at most one tensor")
    if outputs:
        o = outputs[0]
        if not isinstance(o, dict) or o.get("name") != wire.OUTPUT_NAME:
            raise RequestError(400, f"outputs[0].name must be {wire.OUTPUT_NAME!r}")
        o_params = o.get("parameters")
        o_params = {} if o_params is None else o_params
        if not isinstance(o_params, dict):
            raise RequestError(400, "outputs[0].parameters must be an object")
        binary = o_params.get("binary_data", binary)
        if not isinstance(binary, bool):
            raise RequestError(400, "outputs[0].parameters.binary_data must be true or false")
    return binary


def executorch_tails(bundle: Bundle) -> TailFn:
    """The ExecuTorch tail runner of the bundle, as a function p, x -> y (lazy heavy import)."""
    from carboncp.runtime.artifacts.runners import make_runner

    runner = make_runner(bundle, backend="executorch", part="tail")
    return runner.run


def warm_up(service: TailService, log: Callable[[str], None] | None = None) -> None:
    """Run every tail once so that 'ready' means the first request is not a cold start.

    A tail that raises is recorded in `service.failed` (its model answers 500 and its
    `/ready` 503) and warned about through `log`; the others are served."""
    for p in range(service.bundle.last):
        if p in service.failed:
            continue
        spec = wire.wire_spec(service.bundle, p)
        x = np.zeros(spec.shape, dtype=spec.dtype)
        try:
            service.run_tail(p, x if spec.dtype == "uint8" else x.astype(np.float32))
        except Exception as exc:
            service.failed[p] = f"failed at warm-up ({type(exc).__name__}: {exc})"
            if log is not None:
                log(
                    f"carboncp serve: warning: tail p={p} {service.failed[p]}; its model answers 500"
                )
    service.ready = True
