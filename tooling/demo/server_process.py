"""The edge server (`carboncp serve`) as a child process of the demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from carboncp.runtime.errors import CarbonCPError

READY_RE = re.compile(r"ready on (http://\S+)")


class EdgeServerProcess:
    """`python -m carboncp.runtime.cli serve BUNDLE --port 0` as a child process."""

    def __init__(self, bundle: Path, log_path: Path):
        self.bundle = bundle
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout_s: float = 180.0) -> EdgeServerProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "carboncp.runtime.cli", "serve", str(self.bundle),
               "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
        self._log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env
        )
        found: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                m = READY_RE.search(line)
                if m and not found:
                    found.append(m.group(1))

        t = threading.Thread(target=read, daemon=True)
        t.start()
        deadline = time.monotonic() + timeout_s
        while not found and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CarbonCPError(
                    f"the edge server exited ({self.proc.returncode}); see {self.log_path}"
                )
            time.sleep(0.1)
        if not found:
            self.stop()
            raise CarbonCPError(
                f"the edge server was not ready within {timeout_s:.0f} s; see {self.log_path}"
            )
        self.url = found[0]
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()
