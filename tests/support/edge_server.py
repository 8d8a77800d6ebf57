"""Test helpers for the edge server and the device loop: a real `carboncp serve` subprocess,
and a synthetic device profile for a bundle (the tiny test bundle has no profile section)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

READY_RE = re.compile(r"ready on (http://\S+)")


class ServerProcess:
    """`python -m carboncp.runtime.cli serve BUNDLE` on a loopback port, ready when started."""

    def __init__(
        self,
        bundle: Path,
        port: int | None = None,
        token: str | None = None,
        args: tuple[str, ...] = (),
    ):
        self.bundle = Path(bundle)
        self.port = port if port is not None else free_port()
        self.token = token
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr: list[str] = []

    def start(self, timeout_s: float = 120.0) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "carboncp.runtime.cli",
            "serve",
            str(self.bundle),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]
        if self.token:
            cmd += ["--token", self.token]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited {self.proc.returncode}: {''.join(self.stderr)[-2000:]}"
                    )
                continue
            m = READY_RE.search(line)
            if m:
                self.url = m.group(1)
                return self
        self.kill()
        raise RuntimeError(f"server not ready after {timeout_s} s: {''.join(self.stderr)[-2000:]}")

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            del self.stderr[:-200]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, as a crash would."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_profile(bundle, device_ms_full: float = 50.0, server_ms_full: float = 10.0):
    """A Pi-like profile for a bundle: device time grows linearly along the partitions, the
    server is 25x faster; powers and bytes as a Pi 4 on WiFi. For tests of decisions only."""
    from carboncp.runtime.decision.profile import Profile

    P = bundle.last
    frac = np.linspace(0.0, 1.0, P + 1)
    wire = [float(bundle.partitions[p].wire_bytes) for p in range(P)] + [0.0]
    out_bytes = float(np.prod(bundle.output_shape) * 4)
    return Profile(
        device_ms=device_ms_full * frac,
        device_ms_p90=device_ms_full * frac * 1.1,
        server_ms=server_ms_full * (1.0 - frac),
        wire_bytes=np.array(wire),
        return_bytes=np.array([out_bytes] * P + [0.0]),
        p_active_mw=6000.0,
        p_idle_mw=3000.0,
        radio="wifi",
        battery_wh=20.0,
        server_p_marginal_mw=15000.0,
        device="synthetic-test",
    )


def add_profile_sections(bundle_dir, extra_files=(), extra_sections=None):
    """Give a (copied) bundle the synthetic profile and the default objective as sections, plus
    `extra_files` registered and `extra_sections` named; returns the folder."""
    import json
    from pathlib import Path

    from carboncp.runtime.artifacts.bundle import Bundle, register_file, save_manifest
    from carboncp.runtime.decision.objective import Objective

    bundle_dir = Path(bundle_dir)
    b = Bundle.load(bundle_dir)
    m = b.manifest
    (bundle_dir / "profile.json").write_text(json.dumps(synthetic_profile(b).to_dict()))
    (bundle_dir / "objective.json").write_text(json.dumps(Objective().to_dict()))
    for rel in ("profile.json", "objective.json", *extra_files):
        register_file(m, bundle_dir, rel)
    sections = m.setdefault("sections", {})
    sections.update(profile="profile.json", objective="objective.json", **(extra_sections or {}))
    save_manifest(bundle_dir, m)
    return bundle_dir
