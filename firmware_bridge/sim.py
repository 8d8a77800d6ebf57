"""Run the real firmware under CPython against the fake INA219, behind a real pty.

For tests and for trying the host side without hardware (never a default anywhere):

    python -m carboncp.firmware_bridge.sim --link /tmp/ina219 &
    carboncp power-monitor --port /tmp/ina219 --seconds 5

The firmware's PowerMonitor gets the fake sensor as its I2C bus, a fake MCU clock, and the
pty master as its serial port; the host opens the slave side (or a symlink to it) with
pyserial, exactly as it would open /dev/ttyACM0. `unplug()` closes the pty and removes the
link, `plug()` starts a fresh firmware instance (a rebooted device) on a new pty at the same
link path.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import threading
import time
import tty
from collections.abc import Callable

from .fake_ina219 import FakeINA219, FakeMcuClock, SineLoad
from .firmware.main import PowerMonitor

Filter = Callable[[bytes], bytes]


class PtyPort:
    """The firmware's serial port on a pty master: non-blocking, drops when the host lags.

    `tap` sees every frame the firmware writes (clean, before `tx_filter`); `tx_filter`
    may rewrite the bytes on their way to the host (fault injection)."""

    def __init__(self, fd: int, tx_filter: Filter | None = None, tap=None) -> None:
        self.fd, self.tx_filter, self.tap = fd, tx_filter, tap

    def write(self, data: bytes) -> int:
        if self.tap is not None:
            self.tap(bytes(data))
        out = self.tx_filter(bytes(data)) if self.tx_filter is not None else data
        if not out:
            return len(data)  # swallowed by the filter: the firmware did its part
        try:
            n = os.write(self.fd, out)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EIO):
                return 0
            raise
        return len(data) if n == len(out) else n

    def read_available(self) -> bytes | None:
        try:
            return os.read(self.fd, 256) or None
        except OSError:  # EAGAIN: nothing there; EIO: no one has the slave open
            return None


class SimulatedDevice:
    """A fake INA219 + the real firmware in a thread, on a pty (optionally behind a symlink)."""

    def __init__(
        self,
        link_path: str | None = None,
        load: SineLoad | None = None,
        rate_hz: int = 1000,
        drift_ppm: float = 0.0,
        start_us: int = 0,
        tx_filter: Filter | None = None,
        tap=None,
        period_log2: int = 30,
    ) -> None:
        self.link_path = link_path
        self.load = load or SineLoad()
        self.sensor = FakeINA219(self.load)
        self.clock = FakeMcuClock(start_us=start_us, drift_ppm=drift_ppm, period_log2=period_log2)
        self.rate_hz = rate_hz
        self.tx_filter, self.tap = tx_filter, tap
        self.monitor: PowerMonitor | None = None
        self.slave_path: str | None = None
        self._fds: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.plugs = 0

    @property
    def path(self) -> str:
        """What the host should open."""
        return self.link_path or self.slave_path or ""

    def plug(self) -> str:
        if self._fds is not None:
            return self.path
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no newline mangling, before anyone opens it
        os.set_blocking(master, False)
        self._fds = (master, slave)
        self.slave_path = os.ttyname(slave)
        if self.link_path:
            tmp = f"{self.link_path}.tmp{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.slave_path, tmp)
            os.replace(tmp, self.link_path)
        port = PtyPort(master, self.tx_filter, self.tap)
        self.monitor = PowerMonitor(
            self.sensor,
            port,
            self.clock,
            shunt_uohm=round(self.sensor.shunt_ohms * 1e6),
            rate_hz=self.rate_hz,
            tick_period_log2=self.clock.period_log2,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.monitor.run, args=(self._stop.is_set,), name="fake-firmware", daemon=True
        )
        self._thread.start()
        self.plugs += 1
        return self.path

    def unplug(self) -> None:
        """The cable is pulled: firmware stops, the pty vanishes, the link disappears."""
        if self._fds is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.link_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link_path)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = None

    def close(self) -> None:
        self.unplug()

    def __enter__(self) -> SimulatedDevice:
        self.plug()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link", help="also make this symlink to the pty (e.g. /tmp/ina219)")
    parser.add_argument("--rate", type=int, default=1000, help="initial sample rate, Hz")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    args = parser.parse_args(argv)
    with SimulatedDevice(link_path=args.link, rate_hz=args.rate) as dev:
        print(f"simulated INA219 bridge on {dev.path} (Ctrl-C to stop)", flush=True)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
