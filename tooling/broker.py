"""An embedded MQTT broker for the demo and tests: Mosquitto if on PATH, else amqtt in-process.

Listens on 127.0.0.1 only. Mosquitto runs as a subprocess with a generated config
(anonymous access allowed unless `config_extra` sets a password_file; persistence in its own
temporary folder, so retained values survive `restart()` as on a real broker). amqtt runs in
its own thread with its own asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from carboncp.runtime.errors import BackendMissingError


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, alive: object = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.02)
    return False


class Broker:
    """A running broker: `.url`, `.port`, `.kind`, `stop()` (idempotent), `restart()`."""

    kind = "broker"

    def __init__(self, port: int) -> None:
        self.port = port

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()

    def cleanup(self) -> None:
        """Stop and remove temporary files."""
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} {'running' if self.running else 'stopped'}>"

    @property
    def running(self) -> bool:
        return False


class MosquittoBroker(Broker):
    kind = "mosquitto"

    def __init__(
        self, port: int, exe: str, config_extra: str = "", persistence: bool = True
    ) -> None:
        super().__init__(port)
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="carboncp-mosquitto-"))
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        anonymous = "password_file" not in config_extra
        lines = [
            f"listener {port} 127.0.0.1",
            f"allow_anonymous {'true' if anonymous else 'false'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            config_extra,
        ]
        if os.geteuid() == 0:  # mosquitto drops root for user "mosquitto": let it write here
            try:
                import pwd

                pw = pwd.getpwnam("mosquitto")
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            except (KeyError, OSError):
                lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MosquittoBroker:
        if self.running:
            return self
        for _attempt in range(3):  # the port may be in TIME_WAIT just after a stop
            self._proc = subprocess.Popen(
                [self.exe, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            if wait_port(self.port, 5.0, alive=lambda: self.running):
                return self
            self._reap()
            time.sleep(0.3)
        raise BackendMissingError(
            f"mosquitto ({self.exe}) did not start on 127.0.0.1:{self.port}: {self.log_tail()}"
        )

    def _reap(self) -> str:
        err = b""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                _, err = self._proc.communicate(timeout=5)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        return err.decode(errors="replace") if err else ""

    def log_tail(self, n: int = 10) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM) if self.running else None
            self._reap()

    def kill(self) -> None:
        """Crash the broker (SIGKILL): no clean shutdown, no persistence write."""
        if self.running and self._proc is not None:
            self._proc.kill()
        self._reap()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class AmqttBroker(Broker):
    """amqtt in its own thread and event loop (retained values are lost on restart)."""

    kind = "amqtt"

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> AmqttBroker:
        if self.running:
            return self
        try:
            from amqtt.broker import Broker as _Amqtt
        except ImportError as exc:
            raise BackendMissingError(
                "no MQTT broker: install Mosquitto (apt-get install mosquitto) or amqtt "
                "(pip install 'carboncp[demo]')"
            ) from exc
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        amqtt_log = logging.getLogger("amqtt")
        if amqtt_log.level == logging.NOTSET:  # its per-connection chatter (port probes) is noise
            amqtt_log.setLevel(logging.CRITICAL)
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._broker = loop.run_until_complete(self._make(_Amqtt, config))
            except BaseException as exc:
                self._error = exc
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            # cancel whatever the broker left running (client sessions) before closing
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._error = None
        self._thread = threading.Thread(target=run, name="carboncp-amqtt", daemon=True)
        self._thread.start()
        started.wait(10)
        if self._error is not None or not wait_port(self.port, 5.0):
            self.stop()
            raise BackendMissingError(
                f"amqtt did not start on 127.0.0.1:{self.port}: {self._error}"
            )
        return self

    @staticmethod
    async def _make(cls: type, config: dict) -> object:
        broker = cls(config)
        await broker.start()
        return broker

    def stop(self) -> None:
        """Drop every connection and close the listener, like a broker crash.

        amqtt 0.12's own `shutdown()` waits forever while clients are connected, and Python
        3.11's `Server.close()` leaves accepted connections open, so the loop's transports are
        aborted directly: clients see the connection drop at once and reconnect."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._hard_stop(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._broker = None

    async def _hard_stop(self) -> None:
        for server in getattr(self._broker, "_servers", {}).values():
            instance = getattr(server, "instance", None)
            if instance is not None:
                instance.close()
        loop = asyncio.get_running_loop()
        for transport in list(getattr(loop, "_transports", {}).values()):
            with contextlib.suppress(Exception):
                transport.abort()


def start_broker(
    port: int = 0,
    *,
    prefer: str = "mosquitto",
    config_extra: str = "",
    persistence: bool = True,
) -> Broker:
    """Start a loopback broker on `port` (0: a free one). Mosquitto from PATH when `prefer` is
    "mosquitto" and it is installed; otherwise amqtt in-process. `config_extra` is appended to
    the Mosquitto config (password_file, acl_file, a TLS listener...)."""
    if prefer not in ("mosquitto", "amqtt"):
        raise ValueError(f"prefer must be 'mosquitto' or 'amqtt', got {prefer!r}")
    port = port or free_port()
    exe = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )
    if prefer == "mosquitto" and exe:
        return MosquittoBroker(port, exe, config_extra, persistence).start()
    if config_extra:
        raise BackendMissingError(
            "config_extra needs Mosquitto (not found on PATH or in /usr/sbin): apt-get install mosquitto"
        )
    return AmqttBroker(port).start()
