"""Offload round trip on loopback for a ~400 KB activation, against a raw socket send.

    python -m bench.offload [--bundle models/demo-resnet18-rpi4-gb-de-x6] [--p 3] [--n 200]

(a) OffloadClient.infer -> the edge server (EdgeHTTPServer + TailService, the real protocol
    path: HTTP, v2 JSON header, binary tensor, checks against the bundle, decode, encode of
    the answer) with a tail that returns zeros at once, so that the figure is the transport
    and protocol cost, not the model's;
(b) a raw TCP socket: connect, send the same bytes, the peer reads them all and answers one
    byte (also one connection per round trip, as the client does).
Prints medians and the ratio (a)/(b), measured interleaved in one run. Partition 3 of
ResNet-18 (layer2) is 401,408 bytes of float32.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np


def raw_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                n = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "little")
                got = 0
                while got < n:
                    chunk = conn.recv(min(1 << 20, n - got))
                    if not chunk:
                        break
                    got += len(chunk)
                conn.sendall(b"k")

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def raw_round_trip(port: int, data: bytes) -> float:
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(len(data).to_bytes(8, "little") + data)
        s.recv(1)
    return (time.perf_counter() - t) * 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="models/demo-resnet18-rpi4-gb-de-x6")
    ap.add_argument("--p", type=int, default=3, help="partition (default 3: 401,408 bytes)")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.link import wire
    from carboncp.runtime.link.offload import OffloadClient
    from carboncp.runtime.link.server import EdgeHTTPServer, TailService

    path = Path(args.bundle)
    if not (path / "manifest.json").is_file():
        raise SystemExit(f"{path}: no bundle; run 'carboncp demo' (or carboncp build) first")
    bundle = Bundle.load(path)
    spec = wire.wire_spec(bundle, args.p)
    zeros = np.zeros(bundle.output_shape, np.float32)
    svc = TailService(bundle, lambda p, x: zeros, max_concurrency=4)
    svc.ready = True
    httpd = EdgeHTTPServer(("127.0.0.1", 0), svc, max_body_bytes=64 << 20)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    raw, port = raw_server()
    client = OffloadClient(httpd.url, bundle)
    a = np.random.default_rng(0).normal(size=spec.shape).astype(np.float32)
    data = wire.encode(a, spec)
    print(
        f"bench.offload: p={args.p} ({bundle.partitions[args.p].cut}), {spec.dtype}{list(spec.shape)} = {spec.nbytes:,} bytes, {args.n} round trips each",
        file=sys.stderr,
    )
    for _ in range(10):
        client.infer(args.p, a, 5.0)
        raw_round_trip(port, data)
    off, rawt = [], []
    for _ in range(args.n):
        t = time.perf_counter()
        client.infer(args.p, a, 5.0)
        off.append((time.perf_counter() - t) * 1000.0)
        rawt.append(raw_round_trip(port, data))
    httpd.shutdown()
    raw.close()
    mo, mr = float(np.median(off)), float(np.median(rawt))
    print(
        f"offload round trip (HTTP + v2 binary + checks)  median {mo:7.3f} ms  p90 {np.percentile(off, 90):7.3f} ms"
    )
    print(
        f"raw socket send of the same bytes (baseline)    median {mr:7.3f} ms  p90 {np.percentile(rawt, 90):7.3f} ms"
    )
    print(
        f"ratio offload / raw: {mo / mr:.2f}x  (protocol overhead {mo - mr:.3f} ms per round trip)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
