"""Run a bundle's tails as an edge server (KServe v2 / Open Inference Protocol over HTTP).

Each partition p < P is one model, `{model}-tail-p{p}` (see docs/SERVER.md), run with the
ExecuTorch runtime. Requests use the binary tensor data extension; model, partition, dtype,
shape and byte size are checked against the bundle before anything runs.

Example:
  carboncp serve models/resnet18-rpi4 --host 0.0.0.0 --port 8000 --token "$TOKEN"

The token may also come from the environment variable CARBONCP_SERVER_TOKEN. With --port 0 the
server picks a free port; the 'ready on' line on stdout names it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

HELP = "run the edge server (tails over the KServe v2 inference protocol)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit")
    parser.add_argument("--max-concurrency", type=int, default=4, help="inferences in flight")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch's pool fights XNNPACK otherwise
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.checks import check_number
    from carboncp.runtime.decision.sections import check_sections
    from carboncp.runtime.errors import ConfigError
    from carboncp.runtime.link.server import EdgeHTTPServer, TailService, executorch_tails, warm_up

    check_number(args.max_concurrency, "--max-concurrency", lo=1)
    check_number(args.max_body_mb, "--max-body-mb", lo=0, lo_open=True, hi=4096)
    check_number(args.port, "--port", lo=0, hi=65535)
    token = args.token or os.environ.get("CARBONCP_SERVER_TOKEN") or None
    bundle = Bundle.load(args.bundle)
    check_sections(bundle)  # the devices decide from them: a corrupt one is a bad deployment
    service = TailService(bundle, executorch_tails(bundle), max_concurrency=args.max_concurrency)
    try:
        httpd = EdgeHTTPServer(
            (args.host, args.port),
            service,
            token=token,
            max_body_bytes=int(args.max_body_mb * (1 << 20)),
            max_connections=max(16, 4 * args.max_concurrency),
            verbose=args.verbose,
        )
    except OSError as exc:
        raise ConfigError(f"--host/--port: cannot bind {args.host}:{args.port} ({exc})") from exc
    print(f"carboncp serve: loading {bundle.last} tails of {bundle.model_name}", file=sys.stderr)
    warm_up(service)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(
        f"carboncp serve: ready on {httpd.url} (models {bundle.model_name}-tail-p0.."
        f"p{bundle.last - 1}{', token required' if token else ''})",
        flush=True,
    )
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0
