"""Host side of the INA219 bridge: a pyserial reader thread with timestamps and energy.

    reader = BridgeReader("/dev/ttyACM0", rate_hz=1000)
    reader.start()                       # opens, handshakes, starts streaming
    t0 = time.monotonic(); run_inference(); t1 = time.monotonic()
    energy = reader.energy_j(t0, t1, wait_s=0.05)
    reader.close()

The reader thread resynchronises on garbage (COBS framing), drops and counts frames with a
bad CRC, counts lost samples from sequence gaps, declares a stall after `timeout_s` without
data, and reopens the port when the device disappears and comes back (reconnect=True).
MCU timestamps become host time.monotonic() seconds through a lower-envelope clock fit
(timesync.ClockMap); samples sit in a bounded ring buffer.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from . import protocol
from .firmware import bridge_wire as wire
from .timesync import ClockMap


class BridgeError(OSError):
    """The bridge cannot be opened, does not answer, or speaks another protocol version.

    (firmware_bridge imports nothing from the runtime; the runtime's serial power source
    maps this onto PowerSourceError.)"""


@dataclass(frozen=True, slots=True)  # slots: a minute at 1 kHz is 60,000 of these
class Sample:
    """One INA219 reading, with the MCU's timestamp mapped to host monotonic time."""

    seq: int  # unwrapped sequence number (low 16 bits are the wire's seq)
    mcu_us: int  # unwrapped MCU microseconds (modulo the device's tick period = wire value)
    host_t_s: float  # host time.monotonic() seconds at which the sample was taken
    bus_voltage_mv: float
    current_ma: float
    power_mw: float
    flags: int = 0  # wire.F_OVF | F_STALE | F_LATE


@dataclass
class BridgeStats:
    frames_ok: int = 0  # frames that passed COBS, CRC and length checks
    crc_errors: int = 0
    framing_errors: int = 0  # bad COBS, impossible length, unknown type, overlong garbage
    lost_samples: int = 0  # from sequence gaps
    reconnects: int = 0  # successful reopen + handshake after the first connection
    timeouts: int = 0  # stall episodes (no data for timeout_s while streaming)
    duplicates: int = 0  # samples whose seq did not advance (dropped)
    restarts: int = 0  # device reboots seen (new session id)
    reanchors: int = 0  # sequence tracking restarted after a run of refused frames
    device_errors: int = 0  # ERROR frames the device sent on its own (e.g. I2C faults)
    discarded_bytes: int = 0

    def copy(self) -> BridgeStats:
        return BridgeStats(**{f.name: getattr(self, f.name) for f in fields(self)})


MAX_QUEUE_US = 5e6  # longest a frame may plausibly wait in OS/USB buffers
REANCHOR_AFTER = 64  # refused frames in a row before the stream is re-anchored


class _Stream:
    """Sequence and MCU-time unwrapping for one device session (no I/O, no locks)."""

    def __init__(self, tick_period_us: int, rate_hz: int) -> None:
        self.period = tick_period_us
        self.rate_hz = rate_hz
        self.clock = ClockMap()
        self.last: tuple[int, int, float] | None = None  # (seq16, raw_us, arrival_s)
        self.seq = 0
        self.mcu_us = 0
        self.rejected_run = 0  # consecutive refused frames; many means our anchor was bad

    def accept(self, seq16: int, raw_us: int, arrival_s: float) -> tuple[int, int, int] | None:
        """-> (seq, mcu_us, lost) unwrapped, or None for a duplicate / stale frame."""
        if self.last is None:
            self.seq, self.mcu_us, lost = seq16, raw_us, 0
        else:
            last_seq16, last_raw, last_arrival = self.last
            d_us = (raw_us - last_raw) % self.period
            host_gap_us = (arrival_s - last_arrival) * 1e6
            if host_gap_us > self.period / 2:  # silence longer than half a tick period
                d_us += self.period * max(0, round((host_gap_us - d_us) / self.period))
            if d_us > host_gap_us + MAX_QUEUE_US:
                self.rejected_run += 1
                return None  # MCU time ran far ahead of host time: an older frame
            d_seq = (seq16 - last_seq16) & 0xFFFF
            expected = d_us * self.rate_hz / 1e6
            if expected > 0x8000:  # gap long enough for the 16-bit seq to have wrapped
                d_seq += 0x10000 * max(0, round((expected - d_seq) / 0x10000))
            if d_seq == 0 or (d_seq >= 0x8000 and expected < 0x8000):
                self.rejected_run += 1
                return None  # repeated or older frame
            self.seq += d_seq
            self.mcu_us += d_us
            lost = d_seq - 1
        self.rejected_run = 0
        self.last = (seq16, raw_us, arrival_s)
        return self.seq, self.mcu_us, lost

    def host_time(self, mcu_us: int, arrival_s: float) -> float:
        mcu_s = mcu_us / 1e6
        self.clock.add(mcu_s, arrival_s)
        # a sample cannot have been taken after it arrived
        return min(self.clock.to_host(mcu_s), arrival_s)


class BridgeReader:
    """Reads an INA219 bridge over a serial port in a background thread."""

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        rate_hz: int = 1000,
        timeout_s: float = 1.0,
        reconnect: bool = True,
        serial_factory: Callable[..., Any] | None = None,
        buffer_s: float = 60.0,
        calibration: tuple[float, float] | None = None,
        connect_timeout_s: float | None = None,
    ) -> None:
        """port: a device path or any pyserial URL; rate_hz: sample rate asked of the device;
        timeout_s: silence that counts as a stall; calibration: optional (shunt_ohms,
        max_current_a) sent to the device at every connect; buffer_s: ring-buffer length."""
        if not 1 <= rate_hz <= 65535:
            raise ValueError(f"rate_hz must be in 1..65535, got {rate_hz}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if serial_factory is None:
            import serial

            serial_factory = serial.serial_for_url
        self.port, self.baudrate, self.rate_hz = port, baudrate, rate_hz
        self.timeout_s, self.reconnect = timeout_s, reconnect
        self.connect_timeout_s = connect_timeout_s or max(3.0, 3 * timeout_s)
        self.calibration = calibration
        self._factory = serial_factory
        self._capacity = max(1000, int(buffer_s * rate_hz))
        self._times: list[float] = []
        self._samples: list[Sample] = []
        self._buf_cond = threading.Condition()
        self._resp_cond = threading.Condition()
        self._responses: dict[int, protocol.Message] = {}
        self._tokens = itertools.cycle(range(1, 256))
        self._write_lock = threading.Lock()
        self._stats = BridgeStats()
        self._decoder = protocol.FrameDecoder()
        self._stream: _Stream | None = None
        self._session: int | None = None
        self._need_handshake = False
        self._last_host_t = -math.inf
        self._ser: Any = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.device: protocol.DeviceInfo | None = None
        self.last_error: str | None = None
        self.last_device_error: protocol.DeviceError | None = None
        self.connected = False

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._closing.is_set() else "idle"
        return f"<BridgeReader port={self.port!r} rate_hz={self.rate_hz} {state}>"

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> BridgeReader:
        """Open the port, handshake and start streaming; raises BridgeError on failure."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="bridge-reader", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.connect_timeout_s + 1.0):
            self.close()
            raise BridgeError(f"{self.port}: no answer from the bridge within the connect timeout")
        if self._start_error is not None:
            err = self._start_error
            self.close()
            raise err if isinstance(err, BridgeError) else BridgeError(str(err))
        return self

    def close(self) -> None:
        """Stop streaming and release the port; safe to call twice."""
        if self._closing.is_set():
            return
        self._closing.set()
        ser = self._ser
        if ser is not None and self.connected:
            # best effort: the device may already be gone
            with contextlib.suppress(Exception):
                self._write(protocol.encode_command(wire.C_STOP, 0))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0 + self.timeout_s)
        self._close_port()
        with self._resp_cond:
            self._resp_cond.notify_all()
        with self._buf_cond:
            self._buf_cond.notify_all()

    def __enter__(self) -> BridgeReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public reads --------------------------------------------------------------------
    @property
    def stats(self) -> BridgeStats:
        """A snapshot of the counters."""
        s = self._stats.copy()
        d = self._decoder
        s.frames_ok, s.crc_errors = d.frames_ok, d.crc_errors
        s.framing_errors, s.discarded_bytes = d.framing_errors, d.discarded_bytes
        return s

    def latest(self) -> Sample | None:
        with self._buf_cond:
            return self._samples[-1] if self._samples else None

    def samples_between(self, t0_s: float, t1_s: float) -> list[Sample]:
        """Samples with t0_s <= host_t_s <= t1_s (host time.monotonic seconds)."""
        with self._buf_cond:
            i0 = bisect.bisect_left(self._times, t0_s)
            i1 = bisect.bisect_right(self._times, t1_s)
            return self._samples[i0:i1]

    def wait_for(self, t_s: float, timeout_s: float) -> bool:
        """Block until a sample at or after host time t_s has arrived (or timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._buf_cond:
            while not (self._times and self._times[-1] >= t_s):
                left = deadline - time.monotonic()
                if left <= 0 or self._closing.is_set():
                    return False
                self._buf_cond.wait(left)
            return True

    def energy_j(
        self, t0_s: float, t1_s: float, wait_s: float = 0.0, max_gap_s: float | None = None
    ) -> float:
        """Energy in joules over the host-time window [t0_s, t1_s], trapezoid rule.

        Power is interpolated linearly between samples and held at the first/last sample
        where the window overhangs the data by less than max_gap_s (default: the larger of
        100 ms and 50 sample periods). wait_s: first wait up to this long for a sample at or
        after t1_s (frames arrive a little after the fact). Raises BridgeError when the
        samples leave a hole longer than max_gap_s in or at the edges of the window (an
        unplugged or stalled device): the caller should fall back, not extrapolate."""
        if not (math.isfinite(t0_s) and math.isfinite(t1_s)) or t1_s < t0_s:
            raise ValueError(f"bad energy window [{t0_s}, {t1_s}]")
        if max_gap_s is None:
            max_gap_s = max(0.1, 50.0 / self.rate_hz)
        if wait_s > 0:
            self.wait_for(t1_s, wait_s)
        with self._buf_cond:
            times, samples = self._times, self._samples
            if not times:
                raise BridgeError(f"{self.port}: no samples received yet")
            if t1_s < times[0] or t0_s > times[-1]:
                raise BridgeError(
                    f"{self.port}: no samples around [{t0_s:.3f}, {t1_s:.3f}] s "
                    f"(buffer holds [{times[0]:.3f}, {times[-1]:.3f}] s)"
                )
            i0 = max(0, bisect.bisect_right(times, t0_s) - 1)
            i1 = min(len(times) - 1, bisect.bisect_left(times, t1_s))
            ts = times[i0 : i1 + 1]
            ps = [s.power_mw for s in samples[i0 : i1 + 1]]
        edges = [ts[0] - t0_s, t1_s - ts[-1]]
        gap = max(edges + [b - a for a, b in itertools.pairwise(ts)])
        if gap > max_gap_s:
            raise BridgeError(
                f"{self.port}: a {gap * 1000:.0f} ms hole in the samples over "
                f"[{t0_s:.3f}, {t1_s:.3f}] s (longer than {max_gap_s * 1000:.0f} ms)"
            )
        return _trapezoid_mj(ts, ps, t0_s, t1_s) / 1000.0

    def identify(self) -> protocol.DeviceInfo:
        """Ask the device who it is (also refreshes `device`)."""
        info = self._request(lambda tok: protocol.identify_command(tok), protocol.DeviceInfo)
        self.device = info
        return info

    def set_rate(self, rate_hz: int) -> int:
        ack = self._request(lambda tok: protocol.set_rate_command(tok, rate_hz), protocol.Ack)
        self.rate_hz = rate_hz
        if self._stream is not None:
            self._stream.rate_hz = rate_hz
        return int.from_bytes(ack.extra[:2], "little")

    def set_calibration(self, shunt_ohms: float, max_current_a: float) -> tuple[int, int]:
        """Recalibrate the INA219 (kept for reconnects); -> (cal register, current LSB pA)."""
        if not (shunt_ohms > 0 and max_current_a > 0):
            raise ValueError("shunt_ohms and max_current_a must be positive")
        shunt_uohm, max_ua = round(shunt_ohms * 1e6), round(max_current_a * 1e6)
        ack = self._request(
            lambda tok: protocol.set_calibration_command(tok, shunt_uohm, max_ua), protocol.Ack
        )
        self.calibration = (shunt_ohms, max_current_a)
        cal, lsb_pa = struct.unpack("<HI", ack.extra[:6])
        return cal, lsb_pa

    # -- internals: commands -------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._write_lock:
            ser = self._ser
            if ser is None:
                raise BridgeError(f"{self.port}: not connected")
            ser.write(data)

    def _request(self, make: Callable[[int], bytes], kind: type, tries: int = 3) -> Any:
        """Send a command and wait for its answer (ACK/IDENTITY or ERROR) by token."""
        inline = threading.current_thread() is self._thread
        wait_s = max(0.1, min(0.5, self.timeout_s))
        for _ in range(tries):
            token = next(self._tokens)
            with self._resp_cond:
                self._responses.pop(token, None)
            self._write(make(token))
            deadline = time.monotonic() + wait_s
            msg = None
            while msg is None and time.monotonic() < deadline and not self._closing.is_set():
                if inline:
                    self._pump_once()
                    with self._resp_cond:
                        msg = self._responses.pop(token, None)
                else:
                    with self._resp_cond:
                        self._resp_cond.wait_for(
                            lambda t=token: t in self._responses or self._closing.is_set(),
                            deadline - time.monotonic(),
                        )
                        msg = self._responses.pop(token, None)
            if isinstance(msg, protocol.DeviceError):
                raise BridgeError(f"{self.port}: device refused the command: {msg.describe()}")
            if isinstance(msg, kind):
                return msg
        raise BridgeError(f"{self.port}: no answer from the device after {tries} tries")

    # -- internals: the reader thread ----------------------------------------------------
    def _run(self) -> None:
        first = True
        backoff = 0.05
        while not self._closing.is_set():
            try:
                self._connect()
                if first:
                    first = False
                    self._ready.set()
                else:
                    self._stats.reconnects += 1
                backoff = 0.05
                self._pump()
            except Exception as exc:  # the loop must survive every fault
                self.last_error = f"{type(exc).__name__}: {exc}"
                if first:
                    self._start_error = exc
                    self._ready.set()
                    self._close_port()
                    return
            self._close_port()
            if not self.reconnect:
                return
            self._closing.wait(backoff)
            backoff = min(1.0, backoff * 2)

    def _connect(self) -> None:
        try:
            ser = self._factory(self.port, baudrate=self.baudrate, timeout=0.05, write_timeout=1.0)
        except Exception as exc:
            raise BridgeError(
                f"cannot open serial port {self.port!r}: {exc} "
                "(is the bridge plugged in? check the path, e.g. ls /dev/ttyACM*)"
            ) from exc
        self._ser = ser
        self._decoder.reset()
        with self._buf_cond:  # a new link: the host side of the latency changes
            if self._stream is not None:
                self._stream.clock.reset()
        self._handshake()
        self.connected = True

    def _handshake(self) -> None:
        self._need_handshake = False
        info = self._request(lambda tok: protocol.identify_command(tok), protocol.DeviceInfo)
        if info.protocol_version != protocol.PROTOCOL_VERSION:
            self.reconnect = False
            raise BridgeError(
                f"{self.port}: device speaks protocol v{info.protocol_version}, this host "
                f"v{protocol.PROTOCOL_VERSION}; flash the matching firmware_bridge/firmware"
            )
        self._new_session(info)
        self.device = info
        if self.calibration is not None:
            shunt_ohms, max_a = self.calibration
            shunt_uohm, max_ua = round(shunt_ohms * 1e6), round(max_a * 1e6)
            self._request(
                lambda tok: protocol.set_calibration_command(tok, shunt_uohm, max_ua),
                protocol.Ack,
            )
        if info.rate_hz != self.rate_hz:
            self._request(lambda tok: protocol.set_rate_command(tok, self.rate_hz), protocol.Ack)
        self._request(lambda tok: protocol.encode_command(wire.C_START, tok), protocol.Ack)

    def _new_session(self, info: protocol.DeviceInfo) -> None:
        if info.session != self._session or self._stream is None:
            if self._session is not None:
                self._stats.restarts += 1
            self._session = info.session
            self._stream = _Stream(info.tick_period_us, self.rate_hz)

    def _pump(self) -> None:
        self._last_rx = time.monotonic()
        stalled = False
        while not self._closing.is_set():
            if self._need_handshake:
                self._handshake()
            got = self._pump_once()
            now = time.monotonic()
            if got:
                self._last_rx = now
                stalled = False
            elif now - self._last_rx > self.timeout_s and not stalled:
                stalled = True
                self._stats.timeouts += 1
                return  # reopen and handshake again

    def _pump_once(self) -> bool:
        ser = self._ser
        data = ser.read(max(1, ser.in_waiting))
        if not data:
            return False
        arrival = time.monotonic()
        for msg in self._decoder.feed(bytes(data)):
            self._dispatch(msg, arrival)
        return True

    def _dispatch(self, msg: protocol.Message, arrival: float) -> None:
        if isinstance(msg, tuple):
            self._on_sample(msg, arrival)
        elif isinstance(msg, protocol.DeviceInfo) and msg.token == 0:
            # unsolicited hello: the device (re)booted and waits for START
            if self.connected:
                self._need_handshake = True
        elif isinstance(msg, protocol.DeviceError) and msg.token == 0:
            self._stats.device_errors += 1
            self.last_device_error = msg
        else:
            with self._resp_cond:
                self._responses[msg.token] = msg
                self._resp_cond.notify_all()

    def _on_sample(self, s: tuple, arrival: float) -> None:
        stream = self._stream
        if stream is None:  # samples before the first handshake: no clock to map them yet
            return
        seq16, raw_us, mv, ua, uw, flags = s
        got = stream.accept(seq16, raw_us, arrival)
        if got is None:
            self._stats.duplicates += 1
            if stream.rejected_run >= REANCHOR_AFTER:  # the anchor itself was bad: start over
                self._stats.reanchors += 1
                self._stream = _Stream(stream.period, stream.rate_hz)
            return
        seq, mcu_us, lost = got
        self._stats.lost_samples += lost
        # host time never runs backwards, also across re-anchoring
        host_t = max(stream.host_time(mcu_us, arrival), self._last_host_t)
        self._last_host_t = host_t
        sample = Sample(seq, mcu_us, host_t, float(mv), ua / 1000.0, uw / 1000.0, flags)
        with self._buf_cond:
            self._times.append(host_t)
            self._samples.append(sample)
            if len(self._times) > 2 * self._capacity:
                del self._times[: -self._capacity]
                del self._samples[: -self._capacity]
            self._buf_cond.notify_all()

    def _close_port(self) -> None:
        self.connected = False
        with self._write_lock:
            ser, self._ser = self._ser, None
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()


def _trapezoid_mj(ts: list[float], ps: list[float], t0: float, t1: float) -> float:
    """mW x s over [t0, t1]: linear between points, held constant beyond the ends."""

    def p_at(t: float) -> float:
        if t <= ts[0]:
            return ps[0]
        if t >= ts[-1]:
            return ps[-1]
        i = bisect.bisect_right(ts, t)
        ta, tb = ts[i - 1], ts[i]
        return ps[i - 1] if tb == ta else ps[i - 1] + (ps[i] - ps[i - 1]) * (t - ta) / (tb - ta)

    lo, hi = bisect.bisect_right(ts, t0), bisect.bisect_left(ts, t1)
    knots = [t0, *ts[lo:hi], t1]
    vals = [p_at(t0), *ps[lo:hi], p_at(t1)]
    total = 0.0
    for i in range(len(knots) - 1):
        total += 0.5 * (vals[i] + vals[i + 1]) * (knots[i + 1] - knots[i])
    return total
