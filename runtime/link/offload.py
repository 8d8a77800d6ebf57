"""The offload client: send partition p's wire tensor to the edge server, get the output back.

A small HTTP/1.1 client on a plain socket (one connection per request, so a restarted server
is picked up at once), because the transfer deadline of docs/METHOD.md §3 needs control over every
chunk: a transfer that has not finished by the deadline is abandoned, and it is abandoned
early as soon as the bytes sent so far show the deadline cannot be met. Every failure
(unreachable, timed out, abandoned, 4xx, 5xx, malformed answer) raises OffloadError carrying
how long the radio was busy, so the loop can finish locally and count the wasted time.

Realised link figures: RTT is the TCP connect time (one round trip) plus the shaper's
emulated RTT; the uplink rate is the payload's bits over (round trip - server time - RTT) when
the server reports its time (`server_ms`, `carboncp serve`), else over the upload itself: from
the first byte sent until the server's TCP has acknowledged the last (Linux SIOCOUTQ), less the
connect round trip (`link_measure` says which; docs/METHOD.md §2.1). A stock Open Inference
Protocol server (Triton, KServe) reports no `server_ms` and has no probe route: the probe then
falls back, once per client, to a small real inference timed the same way (`probe_route`).

A refusal is named by its status: `unauthorized` (401/403: the bearer token is wrong; one
warning on stderr the first time), `busy` (503: saturated or still warming up), `refused`
(other 4xx), `server_error` (other 5xx). A server that answers before it has read the whole
body and closes the connection makes the send fail (broken pipe, reset); the client then
still reads the answer it was sent, so a refusal is never mistaken for `unreachable`.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass

try:  # Linux: bytes in a TCP socket's send queue not yet acknowledged by the peer
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    _SIOCOUTQ = None

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.checks import split_url
from carboncp.runtime.errors import OffloadError
from carboncp.runtime.link import wire
from carboncp.runtime.link.routes import PROBE_PATH, model_name
from carboncp.runtime.link.shaping import LinkShaper

CHUNK_BYTES = 64 * 1024
SHAPED_CHUNK_BYTES = 2 * 1024  # finer steps on an emulated link, so early abandon can act
MIN_EVIDENCE_S = 0.005  # do not extrapolate the rate from less than this much sending
MAX_RESPONSE_HEADER = 64 * 1024
PROBE_BYTES = 32 * 1024  # large enough to time on a fast link, small next to an inference
MAX_DEADLINE_S = 3600.0  # longer deadlines are clamped (socket timeouts overflow near 1e300)
ANSWER_AFTER_RESET_S = 0.5  # after a failed send: how long to look for the server's answer
REFUSAL_KINDS = {401: "unauthorized", 403: "unauthorized", 503: "busy"}
ACK_POLL_S = 0.001  # while the last bytes of an upload await their TCP acknowledgement
# How the link was measured (OffloadResult.link_measure) and probed (OffloadClient.probe_route)
LINK_MEASURES = ("server_ms", "upload")
PROBE_ROUTES = ("private", "infer", "none")
NO_ROUTE_STATUSES = (404, 405, 501)  # the probe route does not exist on this server


class OffloadFailed(OffloadError):
    """OffloadError with what it cost: `kind`, `elapsed_s` of radio time, `bytes_sent`."""

    def __init__(self, kind: str, message: str, elapsed_s: float = 0.0, bytes_sent: int = 0):
        super().__init__(f"offload {kind}: {message}")
        self.kind = kind
        self.elapsed_s = elapsed_s
        self.bytes_sent = bytes_sent


@dataclass(frozen=True)
class OffloadResult:
    output: np.ndarray
    partition: int
    wire_dtype: str
    bytes_sent: int
    rtt_ms: float
    send_ms: float
    total_ms: float
    server_ms: float
    server_load: float
    bandwidth_mbps: float  # realised uplink rate
    # "server_ms": payload bits / (round trip - server_ms - RTT), the server reported its time;
    # "upload": payload bits / upload_ms (less the connect RTT), the server reported none
    link_measure: str = "server_ms"
    upload_ms: float = 0.0  # first byte sent -> last byte acknowledged by the server's TCP


class ProbeUnavailable(ConnectionError):
    """The server has neither the private probe route nor an inference to probe with."""


def parse_server_url(url: str) -> tuple[str, int]:
    parts, port = split_url(
        url, "server url", {"http": 80}, "http://HOST:PORT (https: use a proxy)"
    )
    return parts.hostname, port


class OffloadClient:
    """Sends wire tensors of one bundle to one server. Thread-compatible, not thread-safe."""

    def __init__(
        self,
        url: str,
        bundle: Bundle,
        token: str | None = None,
        float16: bool = False,
        shaper: LinkShaper | None = None,
        connect_timeout_s: float = 2.0,
    ):
        self.host, self.port = parse_server_url(url)
        self.url = url
        self.bundle = bundle
        self.token = token
        self.float16 = float16
        self.shaper = shaper
        self.connect_timeout_s = connect_timeout_s
        self.out_spec = wire.output_spec(bundle)
        self.chunk_bytes = SHAPED_CHUNK_BYTES if shaper is not None else CHUNK_BYTES
        self.warned_unauthorized = False
        # How this server is probed, decided at the first probe that learns it: "private"
        # (PROBE_PATH answered), "infer" (PROBE_PATH answered 404: a small real inference),
        # "none" (neither route exists: the device does not probe). None: not known yet.
        self.probe_route: str | None = None

    def spec(self, p: int) -> wire.WireSpec:
        return wire.wire_spec(self.bundle, p, float16=self.float16)

    def infer(self, p: int, x: np.ndarray, deadline_s: float) -> OffloadResult:
        """Offload partition p's tail on wire tensor x (the image at p = 0, else the head's
        float32 output) within deadline_s seconds of now, or raise OffloadFailed."""
        spec = self.spec(p)
        if not deadline_s > 0:  # also NaN
            raise OffloadFailed("timeout", f"deadline {deadline_s!r} s is not positive")
        deadline_s = min(float(deadline_s), MAX_DEADLINE_S)
        try:
            data = wire.encode(x, spec)
        except wire.WireFormatError as exc:
            raise OffloadFailed("refused", f"p={p}: {exc}") from None
        head = wire.request_header(spec)
        request = self._request_head(p, len(head) + len(data), len(head))
        payload = memoryview(request + head + data)
        t0 = time.monotonic()
        deadline = t0 + deadline_s
        sent = 0
        sock: socket.socket | None = None
        try:
            try:
                sock = socket.create_connection(
                    (self.host, self.port),
                    timeout=max(1e-3, min(self.connect_timeout_s, deadline_s)),
                )
            except OSError as exc:
                kind = "timeout" if isinstance(exc, TimeoutError) else "unreachable"
                raise OffloadFailed(kind, f"{self.url}: {exc}", time.monotonic() - t0) from None
            handshake_s = time.monotonic() - t0
            rtt_ms = self._link_up(sock, t0, deadline)
            t_send = time.monotonic()
            total = len(payload)
            while sent < total:
                now = time.monotonic()
                remaining_s = deadline - now
                if remaining_s <= 0:
                    raise OffloadFailed(
                        "timeout",
                        f"deadline {deadline_s * 1000:.0f} ms passed after {sent}/{total} bytes",
                        now - t0,
                        sent,
                    )
                spent = now - t_send
                if (
                    spent >= MIN_EVIDENCE_S
                    and sent > 0
                    and spent * (total - sent) / sent > remaining_s
                ):
                    raise OffloadFailed(
                        "abandoned",
                        f"{sent}/{total} bytes in {spent * 1000:.0f} ms cannot finish within the "
                        f"{deadline_s * 1000:.0f} ms deadline",
                        now - t0,
                        sent,
                    )
                chunk = payload[sent : sent + self.chunk_bytes]
                if self.shaper is not None:
                    self.shaper.pace(len(chunk), deadline)
                sock.settimeout(max(1e-3, deadline - time.monotonic()))
                try:
                    sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError) as exc:
                    # The server may have answered (401, 413, 503) and closed without reading
                    # the rest: its answer is what happened, not the broken pipe.
                    answer = self._answer_after_send_error(sock, deadline)
                    if answer is None:
                        raise OffloadFailed(
                            "unreachable", f"{self.url}: {exc}", time.monotonic() - t0, sent
                        ) from None
                    status, _, body = answer
                    self._refusal(status, body, time.monotonic() - t0, sent)
                sent += len(chunk)
            send_ms = (time.monotonic() - t_send) * 1000.0
            _wait_acknowledged(sock, deadline)
            upload_ms = (time.monotonic() - t_send) * 1000.0
            status, headers, body = self._read_response(sock, deadline)
        except OffloadFailed:
            raise
        except TimeoutError as exc:
            raise OffloadFailed(
                "timeout",
                f"{self.url}: {exc or 'timed out'} after {sent} bytes",
                time.monotonic() - t0,
                sent,
            ) from None
        except OSError as exc:
            raise OffloadFailed(
                "unreachable", f"{self.url}: {exc}", time.monotonic() - t0, sent
            ) from None
        finally:
            if sock is not None:
                sock.close()
        total_ms = (time.monotonic() - t0) * 1000.0
        elapsed = total_ms / 1000.0
        if status != 200:
            self._refusal(status, body, elapsed, sent)
        try:
            y, params = self._decode_response(headers, body)
        except (wire.WireFormatError, ValueError, TypeError) as exc:  # e.g. "data": {...}
            raise OffloadFailed("bad_response", str(exc), elapsed, sent) from None
        reported = _finite_or_none(params.get("server_ms"))
        server_ms = 0.0 if reported is None else max(0.0, reported)
        server_load = min(1.0, max(0.0, _finite(params.get("server_load"), 0.0)))
        measure, transfer_s = _transfer_s(
            None if reported is None else server_ms, send_ms, upload_ms, total_ms, rtt_ms,
            handshake_s,
        )  # fmt: skip
        return OffloadResult(
            output=y,
            partition=p,
            wire_dtype=spec.dtype,
            bytes_sent=sent,
            rtt_ms=rtt_ms,
            send_ms=send_ms,
            total_ms=total_ms,
            server_ms=server_ms,
            server_load=server_load,
            bandwidth_mbps=8.0 * len(data) / transfer_s / 1e6,
            link_measure=measure,
            upload_ms=upload_ms,
        )

    def _refusal(self, status: int, body: bytes, elapsed: float, sent: int) -> None:
        """Raise the OffloadFailed a non-200 answer means (warning once on a wrong token)."""
        kind = REFUSAL_KINDS.get(status, "server_error" if status >= 500 else "refused")
        if kind == "unauthorized" and not self.warned_unauthorized:
            self.warned_unauthorized = True
            print(
                f"carboncp: warning: the edge server {self.url} refused the bearer token "
                f"(HTTP {status}): check the 'token' setting (it must equal the server's "
                "--token / CARBONCP_SERVER_TOKEN); offloads finish on the device meanwhile",
                file=sys.stderr,
                flush=True,
            )
        raise OffloadFailed(kind, f"HTTP {status}: {_error_text(body)}", elapsed, sent)

    def _answer_after_send_error(
        self, sock: socket.socket, deadline: float
    ) -> tuple[int, dict[str, str], bytes] | None:
        """The answer the server sent before it stopped reading, if any arrived."""
        try:
            return self._read_response(sock, min(deadline, time.monotonic() + ANSWER_AFTER_RESET_S))
        except (OSError, OffloadFailed):
            return None

    def _link_up(self, sock: socket.socket, t0: float, deadline: float) -> float:
        """A connected socket ready to send over the (shaped) link; returns the RTT in ms:
        the TCP handshake since t0, plus the shaper's emulated RTT when one paces the link."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtt_ms = (time.monotonic() - t0) * 1000.0
        if self.shaper is not None:
            self.shaper.delay_rtt(deadline)
            rtt_ms += self.shaper.rtt_ms
            self.shaper.begin()
        return rtt_ms

    def _request_head(self, p: int, content_length: int, header_length: int) -> bytes:
        lines = [
            f"POST /v2/models/{model_name(self.bundle, p, self.float16)}/infer HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/octet-stream",
            f"Content-Length: {content_length}",
            f"{wire.HEADER_LENGTH}: {header_length}",
            "Connection: close",
        ]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _read_response(
        self, sock: socket.socket, deadline: float
    ) -> tuple[int, dict[str, str], bytes]:
        limit = MAX_RESPONSE_HEADER + self.out_spec.nbytes + 64 * 1024
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            buf += self._recv(sock, deadline)
            if len(buf) > MAX_RESPONSE_HEADER:
                raise OffloadFailed("bad_response", "response headers too long")
        raw_head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            raise OffloadFailed("bad_response", f"bad status line {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        try:
            length = int(headers.get("content-length", "-1"))
        except ValueError:
            length = -1
        if length < 0 or length > limit:
            raise OffloadFailed("bad_response", f"response Content-Length {length} out of bounds")
        body = bytearray(rest)
        while len(body) < length:
            body += self._recv(sock, deadline)
        return status, headers, bytes(body[:length])

    @staticmethod
    def _recv(sock: socket.socket, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed waiting for the server's answer")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("server closed the connection mid-response")
        return chunk

    def _decode_response(self, headers: dict[str, str], body: bytes) -> tuple[np.ndarray, dict]:
        head_raw, binary = wire.split_body(body, headers.get(wire.HEADER_LENGTH.lower()))
        head = wire.parse_json_header(head_raw)
        outputs = head.get("outputs")
        if not isinstance(outputs, list) or len(outputs) != 1:
            raise wire.WireFormatError("response must carry exactly one output")
        spec, size = wire.tensor_spec_of(outputs[0], "outputs[0]")
        if spec != self.out_spec:
            raise wire.WireFormatError(
                f"server returned {spec.datatype}{list(spec.shape)}, bundle says "
                f"{self.out_spec.datatype}{list(self.out_spec.shape)}"
            )
        if size is None:
            data = outputs[0].get("data")
            y = np.asarray(data, dtype=np.float32).reshape(spec.shape)
        else:
            if size != len(binary):
                raise wire.WireFormatError(f"binary_data_size {size} != {len(binary)} bytes")
            y = wire.decode(binary, spec).copy()
        params = head.get("parameters") or {}
        return y, params if isinstance(params, dict) else {}

    def probe(self, nbytes: int = PROBE_BYTES, timeout_s: float = 2.0) -> tuple[float, float, int]:
        """Active probe over the (shaped) link, by the route this server has (`probe_route`):
        POST nbytes to the private probe route; where that answers 404 (a stock Open Inference
        Protocol server), a small real inference timed by its upload (`probe_by_inference`);
        where the server has neither, ProbeUnavailable. The fallback is decided once.

        Returns (bandwidth_mbps, rtt_ms, bytes sent and received); raises OSError on failure
        (the estimator counts the probe's cost either way)."""
        if self.probe_route == "none":
            raise ProbeUnavailable(f"{self.url} has no probe route and no inference to probe")
        if self.probe_route == "infer":
            return self.probe_by_inference(timeout_s)
        try:
            measured = self._probe_private(nbytes, timeout_s)
        except _NoProbeRoute:
            self.probe_route = "infer"
            p = self.probe_partition()
            print(
                f"carboncp: the edge server {self.url} has no {PROBE_PATH} route (a stock "
                f"Open Inference Protocol server): probing the link with a p={p} inference "
                f"({self.spec(p).nbytes} bytes) instead",
                file=sys.stderr,
                flush=True,
            )
            return self.probe_by_inference(timeout_s)
        self.probe_route = "private"
        return measured

    def probe_partition(self) -> int:
        """The partition a probe by inference sends: the fewest wire bytes that still time a
        link as well as the private probe (>= PROBE_BYTES), else the most bytes there are;
        on a tie the later cut (the smaller tail)."""
        sizes = [(self.spec(p).nbytes, p) for p in range(self.bundle.last)]
        enough = [(n, -p) for n, p in sizes if n >= PROBE_BYTES]
        if enough:
            return -min(enough)[1]
        return max(sizes)[1]

    def probe_by_inference(self, timeout_s: float = 2.0) -> tuple[float, float, int]:
        """Probe through the route any v2 server has: one inference of zeros on
        `probe_partition()`, its rate taken from its upload like any transfer's. A refusal
        (4xx other than 401/403: the model is not deployed, or not in this encoding) means
        this server cannot be probed: `probe_route` "none"."""
        p = self.probe_partition()
        spec = self.spec(p)
        x = np.zeros(spec.shape, np.uint8 if spec.dtype == "uint8" else np.float32)
        try:
            r = self.infer(p, x, timeout_s)
        except OffloadFailed as exc:
            if exc.kind == "refused":  # 4xx: no such model, or not this encoding
                self.probe_route = "none"
                raise ProbeUnavailable(f"probe by inference: {exc}") from None
            raise ConnectionError(f"probe by inference: {exc}") from None
        return r.bandwidth_mbps, r.rtt_ms, r.bytes_sent + self.out_spec.nbytes

    def _probe_private(self, nbytes: int, timeout_s: float) -> tuple[float, float, int]:
        """POST nbytes to the server's private probe route (PROBE_PATH); _NoProbeRoute on 404."""
        body = bytes(nbytes)
        head = (
            f"POST {PROBE_PATH} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Length: {nbytes}\r\nConnection: close\r\n"
            + (f"Authorization: Bearer {self.token}\r\n" if self.token else "")
            + "\r\n"
        ).encode("latin-1")
        payload = memoryview(head + body)
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        with socket.create_connection((self.host, self.port), timeout=timeout_s) as sock:
            rtt_ms = self._link_up(sock, t0, deadline)
            t_send = time.monotonic()
            for i in range(0, len(payload), self.chunk_bytes):
                chunk = payload[i : i + self.chunk_bytes]
                if self.shaper is not None:
                    self.shaper.pace(len(chunk), deadline)
                sock.settimeout(max(1e-3, deadline - time.monotonic()))
                sock.sendall(chunk)
            status, _, answer = self._read_response(sock, deadline)
        if status in NO_ROUTE_STATUSES:
            raise _NoProbeRoute(f"probe answered HTTP {status}")
        if status != 200:
            raise ConnectionError(f"probe answered HTTP {status}")
        total_ms = (time.monotonic() - t0) * 1000.0
        transfer_s = max((time.monotonic() - t_send), (total_ms - rtt_ms) / 1000.0, 1e-6)
        return 8.0 * nbytes / transfer_s / 1e6, rtt_ms, len(payload) + len(answer)

    def ready(self, timeout_s: float = 1.0) -> bool:
        """True when the server answers 200 on /v2/health/ready."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s) as s:
                s.settimeout(timeout_s)
                s.sendall(
                    f"GET /v2/health/ready HTTP/1.1\r\nHost: {self.host}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                first = s.recv(64)
            return first.startswith(b"HTTP/1.") and first.split()[1] == b"200"
        except (OSError, IndexError):
            return False


def _transfer_s(
    server_ms: float | None,
    send_ms: float,
    upload_ms: float,
    total_ms: float,
    rtt_ms: float,
    handshake_s: float,
) -> tuple[str, float]:
    """How a completed transfer measures the link, and its transfer time in seconds: the round
    trip less the server's reported time and the RTT ("server_ms"); where the server reports
    none (a stock server: the round trip holds the tail's compute), the upload until the last
    byte was acknowledged less the connect round trip ("upload"). Never below the sends."""
    if server_ms is not None:
        return "server_ms", max(send_ms / 1000.0, (total_ms - server_ms - rtt_ms) / 1000.0, 1e-6)
    return "upload", max(send_ms / 1000.0, upload_ms / 1000.0 - handshake_s, 1e-6)


class _NoProbeRoute(ConnectionError):
    """The private probe route answered 404."""


def _wait_acknowledged(sock: socket.socket, deadline: float) -> None:
    """Return once the peer's TCP has acknowledged every byte sent (Linux SIOCOUTQ = 0), its
    answer is readable, or the deadline passes; at once where the queue cannot be read. A
    send returns when the kernel has the bytes, which on a radio link can be the whole
    activation: the acknowledgement is when they crossed."""
    if _SIOCOUTQ is None:
        return
    while True:
        try:
            queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return
        remaining = deadline - time.monotonic()
        if queued <= 0 or remaining <= 0:
            return
        readable, _, _ = select.select([sock], [], [], min(ACK_POLL_S, remaining))
        if readable:
            return


def _finite(v: object, default: float) -> float:
    f = _finite_or_none(v)
    return default if f is None else f


def _finite_or_none(v: object) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON int past 1e308
        return None
    return f if np.isfinite(f) else None


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body.decode("utf-8")).get("error", ""))[:300]
    except (UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        return body[:200].decode("latin-1", "replace")
