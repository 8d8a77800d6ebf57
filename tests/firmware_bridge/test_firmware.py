"""The firmware logic under CPython: calibration math, commands, sampling, I2C faults."""

from __future__ import annotations

import itertools
import struct

import pytest
from carboncp.firmware_bridge import protocol
from carboncp.firmware_bridge.fake_ina219 import FakeINA219, FakeMcuClock, SineLoad
from carboncp.firmware_bridge.firmware import bridge_wire as wire
from carboncp.firmware_bridge.firmware import ina219
from carboncp.firmware_bridge.firmware.main import MAX_RATE_HZ, PowerMonitor


def test_calibration_datasheet_example():
    # INA219 datasheet 8.5.1: R_shunt 0.1 ohm, Current_LSB 100 uA -> Cal 4096, Power_LSB 2 mW
    cal, lsb_pa, plsb_pw = ina219.calibration(100_000, 2_000_000, current_lsb_pa=100_000_000)
    assert (cal, lsb_pa, plsb_pw) == (4096, 100_000_000, 2_000_000_000)


@pytest.mark.parametrize(
    ("shunt_ohms", "max_a"), [(0.1, 2.0), (0.1, 3.2), (0.01, 10.0), (0.5, 0.4)]
)
def test_calibration_from_max_current_matches_float_formula(shunt_ohms, max_a):
    lsb = max_a / 2**15
    expected = int(0.04096 / (lsb * shunt_ohms)) & 0xFFFE
    cal, lsb_pa, plsb_pw = ina219.calibration(round(shunt_ohms * 1e6), round(max_a * 1e6))
    assert cal == expected
    # the LSB used for scaling is the one the written register implies
    assert lsb_pa * 1e-12 == pytest.approx(0.04096 / (cal * shunt_ohms), rel=1e-9)
    assert plsb_pw == 20 * lsb_pa


def test_calibration_rejects_out_of_range():
    with pytest.raises(ValueError, match="overflows"):
        ina219.calibration(1_000, 1_000)  # 1 mohm shunt, 1 mA max
    with pytest.raises(ValueError):
        ina219.calibration(0, 1_000_000)


def test_default_conversion_cycle_is_faster_than_1khz():
    assert ina219.conversion_time_us(ina219.DEFAULT_CONFIG) == 532 + 148
    assert ina219.conversion_time_us(0x399F) == 532 + 532  # power-on default: 12-bit both


class ManualWorld:
    """Deterministic time: sleeping advances it."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class ManualClock(FakeMcuClock):
    def sleep_us(self, us: int) -> None:
        self.world.t += us / 1e6


class MemoryPort:
    def __init__(self) -> None:
        self.out = bytearray()
        self.inbox = bytearray()

    def write(self, data: bytes) -> int:
        self.out += data
        return len(data)

    def read_available(self) -> bytes | None:
        data, self.inbox = bytes(self.inbox), bytearray()
        return data or None

    def messages(self) -> list:
        dec = protocol.FrameDecoder()
        msgs = dec.feed(b"\x00" + bytes(self.out))
        self.out.clear()
        return msgs


@pytest.fixture
def device():
    world = ManualWorld()
    load = SineLoad()
    sensor = FakeINA219(load, world=world)
    clock = ManualClock(world=world, start_us=2**30 - 5000)  # wraps within the test
    port = MemoryPort()
    mon = PowerMonitor(sensor, port, clock, shunt_uohm=100_000, max_current_ua=3_200_000)
    mon.boot()
    return mon, port, sensor, load, world


def test_boot_hello_and_identify(device):
    mon, port, *_ = device
    (hello,) = port.messages()
    assert isinstance(hello, protocol.DeviceInfo) and hello.token == 0
    assert hello.calibration == ina219.calibration(100_000, 3_200_000)[0]
    port.inbox += protocol.identify_command(42)
    mon.step()
    (info,) = port.messages()
    assert info.token == 42 and info.protocol_version == wire.PROTOCOL_VERSION
    assert not info.streaming and info.tick_period_us == 2**30


def test_streams_samples_matching_the_load(device):
    mon, port, _sensor, load, world = device
    port.messages()
    port.inbox += protocol.encode_command(wire.C_START, 1)
    t_start = world.t
    while world.t < t_start + 0.2:
        mon.step()
    msgs = port.messages()
    assert msgs[0] == protocol.Ack(1, wire.C_START, b"")
    samples = msgs[1:]
    assert 195 <= len(samples) <= 201  # 1 kHz for 0.2 s
    assert [s[0] for s in samples] == list(range(len(samples)))
    mcu = [s[1] for s in samples]
    assert any(b < a for a, b in itertools.pairwise(mcu))  # the 2**30 wrap happened
    for s in samples:
        assert s[2] == 5100  # bus mV
        assert 0.39 * 5.1 < s[4] / 1e6 < 1.21 * 5.1  # within the load's power range (W)
    # current follows the sine: mean over 0.2 s of a 2 Hz sine (0.4 periods) is not flat
    currents = [s[3] / 1e6 for s in samples]
    assert max(currents) - min(currents) > 0.2
    # each sample holds the load's current at its own MCU timestamp, to within the
    # conversion lag (<= 1.4 ms at <= 5 A/s) plus a few LSB
    clock = mon.clock
    for s in samples:
        since_start = (s[1] - clock._start) % clock.period / 1e6
        t = clock._t0 + since_start
        assert abs(s[3] / 1e6 - load.current_a(t)) < 0.008


def test_set_rate_and_bad_commands(device):
    mon, port, *_ = device
    port.messages()
    port.inbox += protocol.set_rate_command(3, 500)
    port.inbox += protocol.set_rate_command(4, MAX_RATE_HZ + 1)
    port.inbox += protocol.encode_command(0x7E, 5)
    port.inbox += b"\x13\x37garbage\x00"
    mon.step()
    ack, err, unknown = port.messages()
    assert ack == protocol.Ack(3, wire.C_SET_RATE, struct.pack("<H", 500))
    assert mon.period_us == 2000
    assert isinstance(err, protocol.DeviceError) and err.token == 4 and err.code == wire.E_BAD_ARG
    assert unknown.code == wire.E_UNKNOWN
    assert mon.rx_bad == 1


def test_set_calibration(device):
    mon, port, sensor, *_ = device
    port.messages()
    port.inbox += protocol.set_calibration_command(6, 100_000, 2_000_000, 100_000_000)
    port.inbox += protocol.set_calibration_command(7, 1_000, 1_000)
    mon.step()
    ack, err = port.messages()
    assert ack.token == 6 and struct.unpack("<HI", ack.extra) == (4096, 100_000_000)
    assert sensor.regs[ina219.REG_CAL] == 4096
    assert err.token == 7 and err.code == wire.E_BAD_ARG


def test_i2c_fault_reports_error_and_recovers(device):
    mon, port, sensor, _load, world = device
    port.inbox += protocol.encode_command(wire.C_START, 1)
    mon.step()
    port.messages()
    sensor.fail = True
    t = world.t
    while world.t < t + 0.05:
        mon.step()
    msgs = port.messages()
    assert all(isinstance(m, protocol.DeviceError) for m in msgs)
    assert len(msgs) == 1 and msgs[0].code == wire.E_I2C  # rate-limited
    sensor.fail = False
    while world.t < t + 0.1:
        mon.step()
    samples = [m for m in port.messages() if isinstance(m, tuple)]
    assert len(samples) >= 45 and mon.i2c_errors >= 45
