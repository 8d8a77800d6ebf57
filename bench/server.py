"""Edge server throughput and latency with 1, 4 and 16 concurrent clients: tails in worker
processes against tails in the server process (the server before issue 10), in the same run.

    python -m bench.server [--bundle models/demo-resnet18-rpi4-gb-de-x6] [--p 3] [--seconds 8]
                           [--workers N] [--clients 1,4,16]

Both servers are real `carboncp serve` processes on loopback (--max-concurrency 16, so no
request is refused): (a) the baseline with --workers 0, every tail run in the server process
one at a time, as before; (b) --workers N (default: one per core). Each client is a thread
with its own OffloadClient sending partition p's float32 activation (ResNet-18 p = 3: 401,408
bytes) back to back. The two servers are measured alternately at each client count. Prints
requests/s, p50 and p99 round-trip latency, and the ratios (b)/(a).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


class Served:
    """A `carboncp serve` subprocess, ready when constructed."""

    def __init__(self, bundle: Path, workers: int, extra: tuple[str, ...] = (), timeout_s=300.0):
        cmd = [sys.executable, "-m", "carboncp.runtime.cli", "serve", str(bundle), "--port", "0"]
        cmd += ["--max-concurrency", "16", "--workers", str(workers), "--max-body-mb", "64", *extra]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            m = re.search(r"ready on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                return
            if not line and self.proc.poll() is not None:
                raise SystemExit(f"serve --workers {workers} exited {self.proc.returncode}")
        raise SystemExit(f"serve --workers {workers} not ready after {timeout_s} s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def measure(url: str, bundle, p: int, x: np.ndarray, clients: int, seconds: float):
    """(requests/s, p50 ms, p99 ms, failures) with `clients` threads sending back to back."""
    from carboncp.runtime.link.offload import OffloadClient

    lat: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    start = threading.Barrier(clients)

    def run() -> None:
        client = OffloadClient(url, bundle)
        start.wait()
        mine: list[float] = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                client.infer(p, x, 30.0)
            except OSError:
                with lock:
                    failures[0] += 1
                continue
            mine.append((time.perf_counter() - t) * 1000.0)
        with lock:
            lat.extend(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    arr = np.array(lat) if lat else np.array([np.nan])
    return (
        len(lat) / elapsed,
        float(np.percentile(arr, 50)),
        float(np.percentile(arr, 99)),
        failures[0],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="models/demo-resnet18-rpi4-gb-de-x6")
    ap.add_argument("--p", type=int, default=3, help="partition (default 3: 401,408 bytes)")
    ap.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--worker-threads", type=int, default=None, help="serve --worker-threads")
    ap.add_argument("--clients", default="1,4,16")
    args = ap.parse_args()
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.link import wire

    path = Path(args.bundle)
    if not (path / "manifest.json").is_file():
        raise SystemExit(f"{path}: no bundle; run 'carboncp demo' (or carboncp export) first")
    bundle = Bundle.load(path)
    spec = wire.wire_spec(bundle, args.p)
    x = np.random.default_rng(0).normal(size=spec.shape).astype(np.float32)
    if args.p == 0:
        x = np.random.default_rng(0).integers(0, 256, spec.shape, dtype=np.uint8)
    counts = [int(c) for c in args.clients.split(",")]
    print(
        f"bench.server: {bundle.model_name} p={args.p} ({bundle.partitions[args.p].cut}), "
        f"{spec.dtype}{list(spec.shape)} = {spec.nbytes:,} bytes; {os.cpu_count()} cores; "
        f"{args.seconds:.0f} s per point",
        file=sys.stderr,
    )
    base = Served(path, 0)
    extra = ("--worker-threads", str(args.worker_threads)) if args.worker_threads else ()
    new = Served(path, args.workers, extra)
    rows = []
    try:
        for c in counts:
            for srv in (base, new):  # warm the connection path and the caches
                measure(srv.url, bundle, args.p, x, c, 1.0)
            a = measure(base.url, bundle, args.p, x, c, args.seconds)
            b = measure(new.url, bundle, args.p, x, c, args.seconds)
            rows.append((c, a, b))
    finally:
        base.stop()
        new.stop()
    print(
        f"{'clients':>7}  {'in-process (baseline)':>28}  {f'{args.workers} worker processes':>28}"
        f"  {'ratio workers/baseline':>26}"
    )
    print(
        f"{'':>7}  {'req/s':>8} {'p50 ms':>9} {'p99 ms':>9}  {'req/s':>8} {'p50 ms':>9} "
        f"{'p99 ms':>9}  {'req/s':>8} {'p50':>8} {'p99':>8}"
    )
    for c, a, b in rows:
        fail = f"  ({a[3]}/{b[3]} failed)" if a[3] or b[3] else ""
        print(
            f"{c:>7}  {a[0]:8.1f} {a[1]:9.1f} {a[2]:9.1f}  {b[0]:8.1f} {b[1]:9.1f} {b[2]:9.1f}"
            f"  {b[0] / a[0]:7.2f}x {b[1] / a[1]:7.2f}x {b[2] / a[2]:7.2f}x{fail}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
