"""CarbonCP power-monitor firmware: an INA219 on a Raspberry Pi Pico (RP2040, MicroPython).

Copy bridge_wire.py, ina219.py and this file to the Pico's root; it runs at boot and speaks
the binary protocol of firmware_bridge/PROTOCOL.md over the USB serial port (or a UART).

Wiring: INA219 SDA -> GP4, SCL -> GP5 (I2C0), VCC -> 3V3, GND -> GND; the shunt sits in the
supply line of the board being measured (VIN+ from the supply, VIN- to the load).

Timing budget at 1 kHz (period 1000 us), I2C at 400 kHz:
  one register read = START + addr/W + reg + repeated START + addr/R + 2 data bytes + STOP
  = 5 bytes * 9 bits + ~3 bit-times of START/STOP = 48 bit-times = 120 us;
  three registers (bus, power, current; the INA219 has no auto-increment) = 360 us,
  so the I2C-limited maximum is about 2.7 kHz. MicroPython call overhead (~30 us per
  transaction) and frame encoding (CRC + COBS, ~0.2 ms in bytecode, less with the native
  emitter used below) bring the practical limit to roughly 1.5-2 kHz; MAX_RATE_HZ = 2000
SAFE_MODE_PIN = 22
  and the SAMPLE flag LATE reports when the loop cannot keep up (the host shows the
  achieved rate). The INA219 itself refreshes its registers once per shunt+bus conversion
  cycle: 532 us (12-bit shunt) + 148 us (10-bit bus) = 680 us by default (about 1470 Hz);
  at 12-bit bus as well, 1064 us (940 Hz), and the STALE flag marks repeated conversions.
  Serial bandwidth: a sample frame is 22 bytes on the wire, 22 kB/s at 1 kHz: USB CDC
  carries it easily; a hardware UART needs >= 460800 baud (115200 baud tops out near 520 Hz).

The logic (PowerMonitor) takes its I2C bus, serial port and clock as arguments, so the same
code runs under CPython in the tests with a fake INA219, a pty and a fake clock.
"""

import os
import struct
import sys

if sys.implementation.name == "micropython":
    import bridge_wire as wire
    import ina219
else:
    from . import bridge_wire as wire
    from . import ina219

MAX_RATE_HZ = 2000
SAFE_MODE_PIN = 22
ERROR_EVERY_US = 1000000  # rate limit for unsolicited error frames


class PowerMonitor:
    """Samples the INA219 at a fixed rate and streams frames; answers commands.

    i2c: machine.I2C-like (readfrom_mem_into, writeto_mem); port: write(bytes) and
    read_available() -> bytes or None (never blocks); clock: ticks_us, ticks_diff,
    ticks_add, sleep_us (the MicroPython `time` module itself on the device).
    """

    def __init__(
        self,
        i2c,
        port,
        clock,
        shunt_uohm=100000,
        max_current_ua=3200000,
        rate_hz=1000,
        address=0x40,
        tick_period_log2=30,
        config=ina219.DEFAULT_CONFIG,
    ):
        self.port = port
        self.clock = clock
        self.sensor = ina219.INA219(i2c, address, config)
        self.shunt_uohm = shunt_uohm
        self.max_current_ua = max_current_ua
        self.current_lsb_pa = 0
        self.tick_period_log2 = tick_period_log2
        self.rate_hz = rate_hz
        self.period_us = 1000000 // rate_hz
        self.streaming = False
        self.configured = False
        self.seq = 0
        self.next_due = 0
        self.late = False
        self.overruns = 0
        self.i2c_errors = 0
        self.rx_bad = 0
        self.tx_dropped = 0
        self.last_error_us = None
        self._rx = b""
        # a new random session id at every boot lets the host tell a reboot from a glitch
        try:
            rnd = os.urandom(2)
            self.session = (rnd[0] << 8) | rnd[1]
        except (AttributeError, NotImplementedError):
            self.session = clock.ticks_us() & 0xFFFF

    # -- output ---------------------------------------------------------------------
    def send(self, frame):
        try:
            n = self.port.write(frame)
        except OSError:
            n = 0
        if n is not None and n < len(frame):
            self.tx_dropped += 1

    def report_error(self, code, detail):
        now = self.clock.ticks_us()
        last = self.last_error_us
        if last is None or self.clock.ticks_diff(now, last) >= ERROR_EVERY_US:
            self.last_error_us = now
            self.send(wire.error_frame(0, 0, code, detail))

    def identity(self, token):
        return wire.identity_frame(
            token,
            self.streaming,
            self.tick_period_log2,
            self.rate_hz,
            MAX_RATE_HZ,
            self.shunt_uohm,
            self.max_current_ua,
            self.sensor.cal,
            self.sensor.current_lsb_pa,
            self.sensor.config,
            self.overruns,
            self.i2c_errors,
            self.rx_bad,
            self.session,
        )

    # -- set-up ---------------------------------------------------------------------
    def configure(self):
        """Write configuration and calibration; False (and an error frame) on I2C failure."""
        try:
            self.sensor.configure(self.shunt_uohm, self.max_current_ua, self.current_lsb_pa)
        except OSError:
            self.i2c_errors += 1
            self.report_error(wire.E_I2C, b"INA219 not answering at configure")
            return False
        self.configured = True
        return True

    def boot(self):
        self.configure()
        self.send(self.identity(0))  # unsolicited hello, token 0

    # -- commands -------------------------------------------------------------------
    def poll_commands(self):
        data = self.port.read_available()
        if not data:
            return
        self._rx = self._rx + bytes(data)  # commands are rare and short: bytes are fine
        while True:
            end = self._rx.find(b"\x00")
            if end < 0:
                break
            block = self._rx[:end]
            self._rx = self._rx[end + 1 :]
            if block:
                self.handle_block(block)
        if len(self._rx) > 2 * wire.MAX_FRAME:  # no delimiter in sight: garbage
            self._rx = b""
            self.rx_bad += 1

    def handle_block(self, block):
        frame = wire.decode_frame(block)
        if frame is None or len(frame[1]) < 1:
            self.rx_bad += 1
            return
        cmd, payload = frame
        token = payload[0]
        args = payload[1:]
        if cmd == wire.C_IDENTIFY:
            self.send(self.identity(token))
        elif cmd == wire.C_START:
            if not self.configured and not self.configure():
                self.send(wire.error_frame(token, cmd, wire.E_I2C, b"INA219 not answering"))
                return
            self.streaming = True
            self.next_due = self.clock.ticks_us()
            self.send(wire.ack_frame(token, cmd))
        elif cmd == wire.C_STOP:
            self.streaming = False
            self.send(wire.ack_frame(token, cmd))
        elif cmd == wire.C_SET_RATE:
            if len(args) != 2:
                self.send(wire.error_frame(token, cmd, wire.E_BAD_ARG, b"rate needs u16"))
                return
            rate = struct.unpack("<H", args)[0]
            if rate < 1 or rate > MAX_RATE_HZ:
                self.send(wire.error_frame(token, cmd, wire.E_BAD_ARG, b"rate out of range"))
                return
            self.rate_hz = rate
            self.period_us = 1000000 // rate
            self.next_due = self.clock.ticks_us()
            self.send(wire.ack_frame(token, cmd, struct.pack("<H", rate)))
        elif cmd == wire.C_SET_CAL:
            if len(args) != 12:
                self.send(wire.error_frame(token, cmd, wire.E_BAD_ARG, b"cal needs 3 x u32"))
                return
            shunt, max_ua, lsb_pa = struct.unpack("<III", args)
            try:
                ina219.calibration(shunt, max_ua, lsb_pa)
            except ValueError as exc:
                self.send(wire.error_frame(token, cmd, wire.E_BAD_ARG, str(exc).encode()))
                return
            self.shunt_uohm, self.max_current_ua, self.current_lsb_pa = shunt, max_ua, lsb_pa
            if not self.configure():
                self.send(wire.error_frame(token, cmd, wire.E_I2C, b"INA219 not answering"))
                return
            extra = struct.pack("<HI", self.sensor.cal, self.sensor.current_lsb_pa)
            self.send(wire.ack_frame(token, cmd, extra))
        else:
            self.send(wire.error_frame(token, cmd, wire.E_UNKNOWN, b"unknown command"))

    # -- sampling -------------------------------------------------------------------
    def sample(self, now):
        try:
            bus_mv, current_ua, power_uw, ovf, cnvr = self.sensor.read()
        except OSError:
            self.i2c_errors += 1
            self.report_error(wire.E_I2C, b"INA219 read failed")
            return
        flags = 0
        if ovf:
            flags |= wire.F_OVF
        if not cnvr:
            flags |= wire.F_STALE
        if self.late:
            flags |= wire.F_LATE
            self.late = False
        if power_uw < 0:
            power_uw = 0
        self.send(wire.sample_frame(self.seq, now, bus_mv, current_ua, power_uw, flags))
        self.seq = (self.seq + 1) & 0xFFFF

    def step(self):
        """One pass of the main loop: commands, then a sample when one is due."""
        self.poll_commands()
        clock = self.clock
        if not self.streaming:
            clock.sleep_us(1000)
            return
        now = clock.ticks_us()
        wait = clock.ticks_diff(self.next_due, now)
        if wait > 0:
            # sleep in slices of <= 1 ms so commands stay responsive
            clock.sleep_us(wait if wait < 1000 else 1000)
            return
        behind = -wait
        if behind >= self.period_us:  # fell behind: skip the missed ticks, do not burst
            skipped = behind // self.period_us
            self.overruns += skipped
            self.late = True
            self.next_due = clock.ticks_add(self.next_due, (skipped + 1) * self.period_us)
        else:
            self.next_due = clock.ticks_add(self.next_due, self.period_us)
        self.sample(now)

    def run(self, should_stop=None):
        self.boot()
        while should_stop is None or not should_stop():
            self.step()


class UsbCdcPort:
    """The Pico's USB serial (the REPL's stdio) as a binary port."""

    def __init__(self):
        import select

        import micropython

        micropython.kbd_intr(-1)  # 0x03 in a binary command must not raise KeyboardInterrupt
        self._out = sys.stdout.buffer
        self._in = sys.stdin.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)

    def write(self, data):
        return self._out.write(data)

    def read_available(self):
        out = bytearray()
        while len(out) < 64 and self._poll.poll(0):
            out.extend(self._in.read(1))
        return bytes(out) if out else None


class UartPort:
    """A hardware UART (e.g. to a USB-serial adapter); use >= 460800 baud for 1 kHz."""

    def __init__(self, uart):
        self.uart = uart

    def write(self, data):
        return self.uart.write(data)

    def read_available(self):
        n = self.uart.any()
        return self.uart.read(n) if n else None


def main():
    import time

    import machine

    # GP22 tied to GND at boot: do not start, keep the REPL (the protocol disables Ctrl-C)
    if machine.Pin(SAFE_MODE_PIN, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0:
        print("carboncp bridge: safe-mode pin low, staying in the REPL")
        return
    time.sleep_ms(1000)  # a window for Ctrl-C / mpremote before the port turns binary
    # The stock 125 MHz clock is assumed in the timing budget above; raising machine.freq()
    # gives headroom for rates near MAX_RATE_HZ (stay within your board's rating).
    i2c = machine.I2C(0, sda=machine.Pin(4), scl=machine.Pin(5), freq=400000)
    monitor = PowerMonitor(i2c, UsbCdcPort(), time)
    monitor.run()


if sys.implementation.name == "micropython":
    main()
