"""The firmware_bridge INA219 power monitor on a serial port, as a PowerSource.

The bridge streams samples at `rate_hz` (far above what a Python sampler thread can poll), so
`energy_between` integrates the bridge's own samples; `read()` returns its latest sample.
The BridgeReader is imported lazily, so a device without pyserial can use other backends.
BridgeReader's `host_t_s` is host `time.monotonic()` seconds, the same clock as PowerReading.t_s.
"""

from __future__ import annotations

from typing import Any

from carboncp.runtime.errors import BackendMissingError
from carboncp.runtime.power.base import ClosableSource, PowerReading
from carboncp.runtime.power.faults import SensorFault


class SerialBridgeSource(ClosableSource):
    """Wraps `carboncp.firmware_bridge.host.BridgeReader`; `reader` injects one (tests).

    `read()` returns the latest sample (flagged "repeat" when it is the one read last time);
    `energy_between` gives the meter the integral of the full-rate stream.

    Parameters:
        port: the serial device, e.g. /dev/ttyUSB0.
        rate_hz: the sample rate asked of the bridge.
        reader: a BridgeReader-like object to use instead of opening `port` (started here).
        baudrate: the serial line's rate.
        wait_s: how long `energy_between` waits for a sample past the window's end.

    Raises:
        BackendMissingError: pyserial or carboncp.firmware_bridge.host is missing, or the
            reader does not start (wrong port, firmware not flashed).

    `read()` raises SensorFault (kind "empty") until the first sample has arrived.
    """

    name = "serial"

    def __init__(
        self,
        port: str,
        rate_hz: float = 1000,
        reader: Any = None,
        *,
        baudrate: int = 115200,
        wait_s: float = 0.02,
    ) -> None:
        super().__init__()
        self.port, self.rate_hz = port, rate_hz
        if reader is None:
            try:
                from carboncp.firmware_bridge.host import BridgeReader
            except ImportError as exc:
                raise BackendMissingError(
                    f"serial power monitor needs carboncp.firmware_bridge.host and pyserial "
                    f"({exc}); pip install 'carboncp[runtime]'"
                ) from exc
            reader = BridgeReader(port, baudrate, int(rate_hz))
        self._reader = reader
        self.wait_s = wait_s
        try:
            self._reader.start()
        except OSError as exc:  # BridgeError, SerialException: both OSErrors
            self._reader.close()
            raise BackendMissingError(
                f"serial power monitor at {port} did not start: {exc}; check the port "
                "(ls /dev/ttyUSB* /dev/ttyACM*) and that the firmware_bridge firmware is flashed"
            ) from exc
        self.last_seq: int | None = None

    def _read(self) -> PowerReading:
        s = self._reader.latest()
        if s is None:
            raise SensorFault("empty", f"serial:{self.port}: no sample received yet", self.port)
        if s.seq == self.last_seq:
            flags: tuple[str, ...] = ("repeat",)
        else:
            flags = ()
        self.last_seq = s.seq
        return PowerReading(
            s.host_t_s,
            s.power_mw,
            s.bus_voltage_mv,
            s.current_ma,
            None,
            f"serial:{self.port}",
            flags,
        )

    def energy_between(self, t0_s: float, t1_s: float) -> tuple[float, int]:
        """(energy_j, samples) over [t0_s, t1_s] from the bridge's full-rate stream.

        Parameters:
            t0_s, t1_s: the window in host time.monotonic() seconds.

        Raises:
            SensorFault: kind "stale": the bridge has no sample within or around the window.
        """
        try:
            e = float(self._reader.energy_j(t0_s, t1_s, wait_s=self.wait_s))
        except OSError as exc:  # BridgeError: no sample within or around the window
            raise SensorFault("stale", f"serial:{self.port}: {exc}", self.port) from exc
        n = len(self._reader.samples_between(t0_s, t1_s))
        return e, n

    @property
    def stats(self) -> Any:
        return getattr(self._reader, "stats", None)

    def _close(self) -> None:
        self._reader.close()

    def _describe(self) -> str:
        return f"port={self.port} rate_hz={self.rate_hz} last_seq={self.last_seq}"
