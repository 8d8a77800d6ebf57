"""The edge server's tails in worker processes: a tail that crashes takes down its worker, not
the server, and N workers use N cores.

Each worker is a spawned process holding its own ExecuTorch runner for the bundle's tails.
The server hands one request at a time to an idle worker over a pipe: a JSON header
(`{"p", "dtype", "shape"}`) and the tensor's raw bytes, answered by a JSON header and the
float32 output bytes (`send_bytes`/`recv_bytes`: nothing is pickled). When a worker dies
mid-request (a native abort such as ExecuTorch's `pybind11::error_already_set`, a
segfault, the OOM killer), that request fails with `TailCrashed` (the server answers 500)
and a new worker is started and warmed in the background.

Warm-up runs every tail once in every worker. A tail that crashes its worker or raises at
warm-up is recorded in `failed` (partition -> reason) and never sent to a worker again, so
one corrupt tail costs only its own partition. A tail that crashes `MAX_CRASHES` workers in a
row at inference joins `failed` too, so a tail that always aborts cannot keep the server
busy restarting workers.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle

MAX_CRASHES = 3  # consecutive worker deaths on one partition before it is marked failed
WAIT_FOR_WORKER_S = 30.0  # a request waits this long for a free worker before a 503


class TailCrashed(RuntimeError):
    """The worker running a tail died (its exit code or signal is in the message)."""


class TailUnavailable(RuntimeError):
    """No worker became free in time, or the partition's tail is marked failed."""


def _worker_main(bundle_path: str, conn: Connection, num_threads: int | None) -> None:
    """A worker: load the bundle's tails lazily, run one request at a time until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from carboncp.runtime.artifacts.runners import make_runner

    bundle = Bundle.load(bundle_path, verify=False)  # the server verified it before spawning
    options = {} if num_threads is None else {"num_threads": num_threads}
    runner = make_runner(bundle, backend="executorch", part="tail", **options)
    while True:
        try:
            head = json.loads(conn.recv_bytes())
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the server closed the pipe (or died): nothing left to do
        try:
            x = np.frombuffer(bytearray(data), dtype=np.dtype(head["dtype"])).reshape(head["shape"])
            t0 = time.perf_counter()
            y = np.ascontiguousarray(runner.run(int(head["p"]), x), dtype=np.float32)
            ms = (time.perf_counter() - t0) * 1000.0
            conn.send_bytes(json.dumps({"ok": True, "shape": list(y.shape), "ms": ms}).encode())
            conn.send_bytes(y.tobytes())
        except Exception as exc:  # the tail raised: answer, and keep serving
            conn.send_bytes(
                json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}).encode()
            )


class _Worker:
    def __init__(self, ctx: Any, bundle_path: str, num_threads: int | None, target: Any):
        parent, child = ctx.Pipe(duplex=True)
        self.conn: Connection = parent
        self.proc = ctx.Process(
            target=target, args=(bundle_path, child, num_threads), daemon=True, name="tail-worker"
        )
        self.proc.start()
        child.close()

    def call(self, p: int, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        head = {"p": int(p), "dtype": x.dtype.str, "shape": list(x.shape)}
        self.conn.send_bytes(json.dumps(head).encode())
        self.conn.send_bytes(x.tobytes())
        answer = json.loads(self.conn.recv_bytes())
        if not answer.get("ok"):
            raise RuntimeError(str(answer.get("error", "tail failed")))
        data = self.conn.recv_bytes()
        return np.frombuffer(data, dtype=np.float32).reshape(answer["shape"]).copy()

    def death(self) -> str:
        """How the process ended: 'exit N' or 'signal NAME'."""
        self.proc.join(5.0)
        code = self.proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"signal {signal.Signals(-code).name}"
            return f"signal {-code}"
        return f"exit {code}"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        self.proc.join(2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2.0)


class TailWorkers:
    """A pool of tail worker processes; `run(p, x)` is thread-safe and blocks for a worker.

    Parameters:
        bundle: the (verified) bundle whose tails the workers run.
        workers: number of processes (>= 1).
        num_threads: XNNPACK threads per worker (None: the runner's default).
        target: the worker function (tests pass one that misbehaves on purpose).
    """

    def __init__(
        self,
        bundle: Bundle,
        workers: int,
        num_threads: int | None = None,
        target: Any = _worker_main,
        log: Any = None,
    ):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.bundle = bundle
        self.n = workers
        self.num_threads = num_threads
        self.target = target
        self.log = log if log is not None else (lambda msg: print(msg, file=sys.stderr))
        self.failed: dict[int, str] = {}
        self.crashes: dict[int, int] = {}
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")  # never fork a threaded server
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> TailWorkers:
        """Start every worker and warm every tail in each (blocks until all are warm)."""
        workers = [self._spawn() for _ in range(self.n)]
        threads = [threading.Thread(target=self._warm_and_release, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self

    def _spawn(self) -> _Worker:
        w = _Worker(self._ctx, str(self.bundle.path), self.num_threads, self.target)
        with self._lock:
            self._all.append(w)
        return w

    def _warm_and_release(self, w: _Worker) -> None:
        """Run every tail not yet failed once on w; a crash marks that tail failed and goes
        on with a fresh worker. The warm worker joins the idle queue."""
        for p in range(self.bundle.last):
            if p in self.failed or self._closed:
                continue
            x = _zeros_for(self.bundle, p)
            try:
                w.call(p, x)
            except (EOFError, OSError):
                reason = f"crashed its worker at warm-up ({w.death()})"
                self._mark_failed(p, reason)
                w = self._replace(w)
            except Exception as exc:
                self._mark_failed(p, f"failed at warm-up ({exc})")
        if not self._closed:
            self._idle.put(w)

    def _mark_failed(self, p: int, reason: str) -> None:
        with self._lock:
            if p not in self.failed:
                self.failed[p] = reason
                self.log(f"carboncp serve: warning: tail p={p} {reason}; its model answers 500")

    def _replace(self, dead: _Worker) -> _Worker:
        dead.stop()
        with self._lock:
            if dead in self._all:
                self._all.remove(dead)
            self.restarts += 1
        return self._spawn()

    def run(self, p: int, x: np.ndarray) -> np.ndarray:
        """Partition p's tail on x in a free worker.

        Raises:
            TailUnavailable: p is marked failed, or no worker was free within the wait.
            TailCrashed: the worker died running it (a fresh one is started).
            RuntimeError: the tail raised inside the worker (the worker lives on).
        """
        if p in self.failed:
            raise TailUnavailable(f"tail p={p} {self.failed[p]}")
        try:
            w = self._idle.get(timeout=WAIT_FOR_WORKER_S)
        except queue.Empty:
            raise TailUnavailable(f"no tail worker free within {WAIT_FOR_WORKER_S:.0f} s") from None
        try:
            y = w.call(p, x)
        except (EOFError, OSError):
            how = w.death()
            with self._lock:
                self.crashes[p] = self.crashes.get(p, 0) + 1
                crashes = self.crashes[p]
            if crashes >= MAX_CRASHES:
                self._mark_failed(p, f"crashed {crashes} workers in a row (last: {how})")
            if not self._closed:
                threading.Thread(
                    target=lambda: self._warm_and_release(self._replace(w)), daemon=True
                ).start()
            raise TailCrashed(f"tail p={p} crashed its worker process ({how})") from None
        except BaseException:
            self._idle.put(w)  # the tail raised inside a live worker
            raise
        with self._lock:
            self.crashes[p] = 0
        self._idle.put(w)
        return y

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._all if w.proc.pid is not None]

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.stop()


def _zeros_for(bundle: Bundle, p: int) -> np.ndarray:
    """A warm-up input for tail p: zeros of what it takes (the uint8 image at p = 0)."""
    if p == 0:
        return np.zeros(bundle.input_shape, dtype=bundle.input_dtype)
    return np.zeros(bundle.partitions[p].wire_shape, dtype=np.float32)
