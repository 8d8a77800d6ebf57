"""The edge server under hostile or broken clients and broken tails (issue 10, items 4, 5, 8,
9, 10), each against a real `carboncp serve` process or real worker processes on real sockets.

- a wrong bearer token with a body larger than the socket buffers: the device reads the 401
  (kind `unauthorized`, one warning) instead of a broken pipe (`unreachable`);
- idle and half-open connections (more than the connection slots) do not block offloads, and
  a client trickling its headers is dropped at the header deadline;
- during warm-up the port answers 503 at once (readiness and inferences);
- a tail that aborts in native code (a corrupt .pte whose sha256 was updated) answers 500 and
  the server stays up, serving the other partitions;
- tails run in several worker processes; a worker that dies mid-request is replaced;
- a deadline of 1e300 s neither overflows the client nor passes the settings checks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle, register_file, save_manifest
from carboncp.runtime.errors import ConfigError
from carboncp.runtime.link.offload import OffloadClient, OffloadFailed
from carboncp.runtime.link.server import EdgeHTTPServer, TailService
from carboncp.runtime.link.tail_workers import TailCrashed, TailWorkers, _worker_main

from tests.support.edge_server import ServerProcess, free_port

TOKEN = "right-token"


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


@pytest.fixture(scope="module")
def server(tiny_bundle):
    srv = ServerProcess(tiny_bundle, token=TOKEN, args=("--header-timeout-s", "1")).start()
    yield srv
    srv.stop()


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _read_answer(s: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), body


def _big_wire(bundle: Bundle, side: int = 1024) -> Bundle:
    """The bundle as a device whose p = 0 image is side x side (3 MB at 1024): a body far
    larger than the loopback socket buffers, so a server that closes without reading it
    resets the connection mid-send."""
    shape = (1, 3, side, side)
    p0 = dataclasses.replace(bundle.partitions[0], wire_shape=shape, wire_bytes=3 * side * side)
    return Bundle(bundle.path, bundle.manifest, [p0, *bundle.partitions[1:]])


# -- item 4: a wrong token is a refusal the device can name, never a broken pipe -----------


def test_wrong_token_with_a_large_body_is_read_as_401_not_a_reset(server, bundle, capsys):
    host, port = _host_port(server.url)
    body = bytes(8 << 20)
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"POST /v2/models/tiny_net-tail-p0/infer HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer wrong\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        try:
            s.sendall(body)  # the server drains it (bounded) after answering
        except (BrokenPipeError, ConnectionResetError):
            pytest.fail("the server reset the connection instead of draining the body")
        status, answer = _read_answer(s)
    assert status == 401 and "token" in json.loads(answer)["error"]

    big = _big_wire(bundle)
    x = np.zeros(big.partitions[0].wire_shape, np.uint8)
    client = OffloadClient(server.url, big, token="wrong")
    for _ in range(3):
        with pytest.raises(OffloadFailed) as e:
            client.infer(0, x, 10.0)
        assert e.value.kind == "unauthorized", e.value
        assert "401" in str(e.value)
    err = capsys.readouterr().err
    assert err.count("refused the bearer token") == 1  # one warning, not one per inference
    assert server.alive()


def test_a_refusal_read_after_a_reset_is_still_named(bundle, capsys):
    """A server that answers 401 and closes at once (no drain): the client still reads it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def rude() -> None:
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 11\r\nConnection: close\r\n\r\n"
            b'{"error":1}'
        )
        conn.close()  # with unread data: the kernel resets the connection

    t = threading.Thread(target=rude, daemon=True)
    t.start()
    big = _big_wire(bundle, 2048)
    client = OffloadClient(f"http://127.0.0.1:{srv.getsockname()[1]}", big, token="t")
    with pytest.raises(OffloadFailed) as e:
        client.infer(0, np.zeros(big.partitions[0].wire_shape, np.uint8), 10.0)
    srv.close()
    assert e.value.kind == "unauthorized", e.value
    assert "refused the bearer token" in capsys.readouterr().err


# -- item 5: idle and half-open connections cannot starve the slots ------------------------


def test_idle_and_half_open_connections_do_not_block_offloads(server, bundle):
    host, port = _host_port(server.url)
    socks = []
    try:
        for i in range(100):  # more than the 64 connection slots
            s = socket.create_connection((host, port), timeout=5)
            if i % 2:
                s.sendall(b"POST /v2/models/tiny_net-tail-p0/infer HTTP/1.1\r\nContent-Le")
            socks.append(s)
        time.sleep(0.3)
        client = OffloadClient(server.url, bundle, token=TOKEN)
        x = np.zeros(bundle.input_shape, np.uint8)
        t0 = time.monotonic()
        ok = 0
        for _ in range(20):
            ok += client.infer(0, x, 2.0).output.shape == bundle.output_shape
        assert ok == 20
        assert time.monotonic() - t0 < 20
    finally:
        for s in socks:
            s.close()
    assert server.alive()


def test_a_client_trickling_its_headers_is_dropped_at_the_header_deadline(server):
    host, port = _host_port(server.url)
    with socket.create_connection((host, port), timeout=5) as s:
        t0 = time.monotonic()
        closed = False
        for ch in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            try:
                s.sendall(bytes([ch]))
                time.sleep(0.2)  # each byte well within any per-read timeout
                s.setblocking(False)
                try:
                    if s.recv(1024) == b"":
                        closed = True
                        break
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        elapsed = time.monotonic() - t0
    assert closed, "a trickling client kept its connection beyond the header deadline"
    assert elapsed < 4.0  # --header-timeout-s 1 (plus scheduling), not 30 s per byte


# -- item 9: warm-up answers 503 at once ---------------------------------------------------


def test_during_warm_up_readiness_and_inferences_answer_503_at_once(tiny_bundle, bundle):
    port = free_port()
    cmd = [sys.executable, "-m", "carboncp.runtime.cli", "serve", str(tiny_bundle)]
    cmd += ["--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
        else:
            pytest.fail("serve never said it was listening")
        url = f"http://127.0.0.1:{port}"
        client = OffloadClient(url, bundle)
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, body = _read_answer(s)
        assert status == 503 and json.loads(body) == {"ready": False}
        with pytest.raises(OffloadFailed) as e:
            client.infer(0, np.zeros(bundle.input_shape, np.uint8), 2.0)
        assert e.value.kind == "busy"
        assert time.monotonic() - t0 < 2.0  # answered, not hung until the tails are loaded
        assert "ready on" in proc.stdout.readline()  # and then it does become ready
        assert client.ready(2.0)
        assert client.infer(0, np.zeros(bundle.input_shape, np.uint8), 5.0).output.shape == (
            bundle.output_shape
        )
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0


# -- item 8: a crashing tail answers 500; the server stays up ------------------------------


def _abort_in_native_code(bundle_dir: Path, p: int) -> None:
    """Corrupt tail p so that ExecuTorch aborts the process (SIGABRT, pybind11's
    error_already_set) when it loads the XNNPACK delegate, and record the new sha256 as a
    careless re-deployment would: a named-data key inside the delegate gets bytes that are
    not UTF-8, and ExecuTorch's log hook dies decoding its 'key not found' message."""
    rel = f"tails/p{p}.pte"
    path = bundle_dir / rel
    data = bytearray(path.read_bytes())
    keys = [m.start() for m in re.finditer(rb"[0-9a-f]{64}", bytes(data))]
    assert keys, "no named-data key in the tail"
    o = keys[-1]  # the last copy is the delegate's
    data[o + 30 : o + 34] = b"\xcb\xcb\xcb\xcb"
    path.write_bytes(bytes(data))
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    register_file(manifest, bundle_dir, rel)
    save_manifest(bundle_dir, manifest)


def test_a_tail_that_aborts_answers_500_and_the_server_stays_up(tiny_bundle_copy):
    _abort_in_native_code(tiny_bundle_copy, 1)
    b = Bundle.load(tiny_bundle_copy)  # sha256 matches: the loader cannot tell
    with ServerProcess(tiny_bundle_copy) as srv:
        assert any("tail p=1" in line and "SIGABRT" in line for line in srv.stderr)
        client = OffloadClient(srv.url, b)
        with pytest.raises(OffloadFailed) as e:
            client.infer(1, np.zeros(b.partitions[1].wire_shape, np.float32), 5.0)
        assert e.value.kind == "server_error" and "500" in str(e.value)
        for p in (0, 2):  # the other partitions are served
            x = (
                np.zeros(b.input_shape, np.uint8)
                if p == 0
                else np.zeros(b.partitions[p].wire_shape, np.float32)
            )
            assert client.infer(p, x, 5.0).output.shape == b.output_shape
        host, port = _host_port(srv.url)
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET /v2/models/tiny_net-tail-p1/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_answer(s)[0] == 503
        assert srv.alive()


def _abort_on_255(bundle_path: str, conn, num_threads) -> None:
    """A worker whose tail aborts the process on an all-255 image (and is slow otherwise on
    a 254 image), to test crashes mid-request and parallel workers."""
    import carboncp.runtime.artifacts.runners as runners

    real = runners.make_runner

    def make(*args, **kwargs):
        inner = real(*args, **kwargs)

        class Crashy:
            def run(self, p, x):
                if x.dtype == np.uint8 and x.flat[0] == 255:
                    os.abort()
                if x.dtype == np.uint8 and x.flat[0] == 254:
                    time.sleep(1.0)
                return inner.run(p, x)

            def close(self):
                inner.close()

        return Crashy()

    runners.make_runner = make
    _worker_main(bundle_path, conn, num_threads)


def test_workers_run_in_parallel_and_a_crash_mid_request_is_replaced(bundle):
    pool = TailWorkers(bundle, 2, num_threads=1, target=_abort_on_255, log=lambda m: None)
    pool.start()
    try:
        assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids
        img = np.zeros(bundle.input_shape, np.uint8)
        # two slow requests at once take one slow request's time: two processes, two cores
        slow = np.full(bundle.input_shape, 254, np.uint8)
        t0 = time.monotonic()
        threads = [threading.Thread(target=pool.run, args=(0, slow)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - t0 < 1.9
        # a worker that dies mid-request: that request fails, the pool lives on
        svc = TailService(bundle, pool.run, max_concurrency=4, serialise=False)
        svc.ready = True
        httpd = EdgeHTTPServer(("127.0.0.1", 0), svc)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}).start()
        try:
            client = OffloadClient(httpd.url, bundle)
            with pytest.raises(OffloadFailed) as e:
                client.infer(0, np.full(bundle.input_shape, 255, np.uint8), 10.0)
            assert e.value.kind == "server_error" and "SIGABRT" in str(e.value)
            for _ in range(4):
                assert client.infer(0, img, 10.0).output.shape == bundle.output_shape
        finally:
            httpd.shutdown()
            httpd.server_close()
        with pytest.raises(TailCrashed):
            pool.run(0, np.full(bundle.input_shape, 255, np.uint8))
        deadline = time.monotonic() + 60
        while pool.restarts < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pool.restarts == 2 and 0 not in pool.failed  # two crashes: not yet failed
        assert np.asarray(pool.run(0, img)).shape == bundle.output_shape
    finally:
        pool.close()


# -- item 10: an absurd deadline is refused by the settings and harmless to the client -----


def test_a_deadline_of_1e300_is_refused_by_the_settings_and_clamped_by_the_client(server, bundle):
    from carboncp.runtime.device.settings import load_settings

    with pytest.raises(ConfigError, match="deadline_ms"):
        load_settings(None, {"bundle": "b", "deadline_ms": 1e300})
    client = OffloadClient(server.url, bundle, token=TOKEN)
    x = np.zeros(bundle.input_shape, np.uint8)
    assert client.infer(0, x, 1e297).output.shape == bundle.output_shape  # no OverflowError
    for bad in (float("nan"), 0.0, -1.0):
        with pytest.raises(OffloadFailed):
            client.infer(0, x, bad)


def test_a_busy_server_is_named_busy(bundle):
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def slow_tail(p, x):
        entered.release()
        gate.wait(10)
        return np.zeros(bundle.output_shape, np.float32)

    svc = TailService(bundle, slow_tail, max_concurrency=1)
    svc.ready = True
    httpd = EdgeHTTPServer(("127.0.0.1", 0), svc)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}).start()
    try:
        client = OffloadClient(httpd.url, bundle)
        x = np.zeros(bundle.input_shape, np.uint8)
        t = threading.Thread(target=client.infer, args=(0, x, 10.0))
        t.start()
        assert entered.acquire(timeout=10)
        with pytest.raises(OffloadFailed) as e:
            OffloadClient(httpd.url, bundle).infer(0, x, 5.0)
        assert e.value.kind == "busy"
        gate.set()
        t.join(10)
    finally:
        gate.set()
        httpd.shutdown()
        httpd.server_close()
