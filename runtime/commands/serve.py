"""Run a bundle's tails as an edge server (KServe v2 / Open Inference Protocol over HTTP).

Each partition p < P is one model, `{model}-tail-p{p}`, and where the bundle allows float16
on the wire a second one, `{model}-tail-p{p}-fp16` (one datatype per model; see
docs/SERVER.md), run with the ExecuTorch runtime. Requests use the binary tensor data
extension or JSON data (up to --max-json-mb); outputs are JSON unless binary is asked for;
model, partition, dtype, shape and byte size are checked against the bundle before anything
runs.

Example:
  carboncp serve models/resnet18-rpi4 --host 0.0.0.0 --port 8000 --token "$TOKEN"

The token may also come from the environment variable CARBONCP_SERVER_TOKEN. With --port 0 the
server picks a free port; the 'ready on' line on stdout names it.

The port is open while the tails load: /v2/health/ready and inference requests answer 503 at
once until every tail has run once. Tails run in --workers processes (default: one per core,
at most --max-concurrency), so a tail that crashes answers 500 and the server stays up; a tail
that fails at warm-up is reported and only its model answers 500.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
import time

HELP = "run the edge server (tails over the KServe v2 inference protocol)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit")
    parser.add_argument(
        "--max-json-mb",
        type=float,
        default=4.0,
        help="limit of a request's JSON part, JSON 'data' inputs included (default 4); larger "
        "tensors must be sent as binary data",
    )
    parser.add_argument("--max-concurrency", type=int, default=4, help="inferences in flight")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="tail worker processes (default: min(--max-concurrency, cores); 0: run the tails "
        "in the server process, where a crashing tail takes the server down)",
    )
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=None,
        help="XNNPACK threads per worker (default: cores / workers, at least 1)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections (default: max(64, 8 x --max-concurrency)); when full, the one "
        "idle longest is closed",
    )
    parser.add_argument(
        "--header-timeout-s",
        type=float,
        default=5.0,
        help="time for a request's line and headers, and keep-alive idle limit (default 5)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch's pool fights XNNPACK otherwise
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.artifacts.consistency import check_consistency
    from carboncp.runtime.checks import check_number
    from carboncp.runtime.decision.sections import check_sections
    from carboncp.runtime.errors import BackendMissingError, BundleError, ConfigError
    from carboncp.runtime.link.routes import FP16_SUFFIX
    from carboncp.runtime.link.server import EdgeHTTPServer, TailService, executorch_tails, warm_up
    from carboncp.runtime.link.tail_workers import TailWorkers

    check_number(args.max_concurrency, "--max-concurrency", lo=1)
    check_number(args.max_body_mb, "--max-body-mb", lo=0, lo_open=True, hi=4096)
    check_number(args.max_json_mb, "--max-json-mb", lo=0, lo_open=True, hi=4096)
    check_number(args.port, "--port", lo=0, hi=65535)
    check_number(args.header_timeout_s, "--header-timeout-s", lo=0, lo_open=True, hi=300)
    if args.workers is not None:
        check_number(args.workers, "--workers", lo=0, hi=256)
    if args.worker_threads is not None:
        check_number(args.worker_threads, "--worker-threads", lo=1, hi=256)
    if args.max_connections is not None:
        check_number(args.max_connections, "--max-connections", lo=1, hi=100000)
    token = args.token or os.environ.get("CARBONCP_SERVER_TOKEN") or None
    bundle = Bundle.load(args.bundle)
    check_sections(bundle)  # the devices decide from them: a corrupt one is a bad deployment
    if importlib.util.find_spec("executorch") is None:
        raise BackendMissingError(
            "carboncp serve runs the tails with ExecuTorch: pip install 'carboncp[executorch]'"
        )
    check_consistency(bundle)  # wire sizes = dtype x shape, head out = wire = tail in
    cores = os.cpu_count() or 1
    n_workers = args.workers if args.workers is not None else min(args.max_concurrency, cores)
    threads = args.worker_threads or max(1, cores // max(1, n_workers))
    pool = TailWorkers(bundle, n_workers, num_threads=threads) if n_workers else None

    def not_loaded(p, x):  # never called: requests are refused with 503 until ready
        raise RuntimeError("tails not loaded yet")

    service = TailService(
        bundle,
        not_loaded,
        max_concurrency=args.max_concurrency,
        serialise=pool is None,
        max_json_bytes=int(args.max_json_mb * (1 << 20)),
    )
    try:
        httpd = EdgeHTTPServer(
            (args.host, args.port),
            service,
            token=token,
            max_body_bytes=int(args.max_body_mb * (1 << 20)),
            max_connections=args.max_connections or max(64, 8 * args.max_concurrency),
            verbose=args.verbose,
            header_timeout_s=args.header_timeout_s,
        )
    except OSError as exc:
        raise ConfigError(f"--host/--port: cannot bind {args.host}:{args.port} ({exc})") from exc
    # Serve from now on: while the tails load, readiness and inferences answer 503 at once.
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    where = f"{n_workers} worker processes" if pool else "in the server process"
    print(
        f"carboncp serve: listening on {httpd.url}; loading {bundle.last} tails of "
        f"{bundle.model_name} ({where}); not ready until they are warm",
        file=sys.stderr,
        flush=True,
    )
    try:
        if pool is not None:
            pool.start()
            service.failed = pool.failed  # the pool adds partitions whose tail kept crashing
            service.run_tail = pool.run
        else:
            service.run_tail = executorch_tails(bundle)
        warm_up(service, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        if len(service.failed) == bundle.last:
            raise BundleError(
                f"{bundle.path}: no tail of {bundle.model_name} runs ("
                + "; ".join(f"p={p} {why}" for p, why in sorted(service.failed.items()))
                + "); re-export the bundle with 'carboncp export'"
            )
        failed = f"; tails {sorted(service.failed)} failed (500)" if service.failed else ""
        fp16 = sum(name.endswith(FP16_SUFFIX) for name in service.models)
        print(
            f"carboncp serve: ready on {httpd.url} (models {bundle.model_name}-tail-p0.."
            f"p{bundle.last - 1}{f' and {fp16} -fp16' if fp16 else ''}"
            f"{', token required' if token else ''}{failed})",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.shutdown()
        httpd.server_close()
        if pool is not None:
            pool.close()
    return 0
