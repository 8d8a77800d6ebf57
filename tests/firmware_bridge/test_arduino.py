"""The optional Arduino (C++) firmware: its codec gives Python's bytes, and the sketch, built
for Linux against a mock Arduino core and a fixed-load INA219, talks to BridgeReader on a pty."""

from __future__ import annotations

import os
import random
import subprocess
import time
import tty
from pathlib import Path

import pytest
from carboncp.firmware_bridge import protocol
from carboncp.firmware_bridge.firmware import ina219
from carboncp.firmware_bridge.host import BridgeReader

from tests.support.requires import require_tool

SKETCH = Path(__file__).resolve().parents[2] / "firmware_bridge/firmware/arduino/ina219_bridge"
MOCK = Path(__file__).resolve().parent / "arduino_mock"


def _gxx() -> str:
    return require_tool("g++", "the Arduino firmware is built for the host")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    gxx = _gxx()
    out = tmp_path_factory.mktemp("arduino")
    common = [gxx, "-std=c++11", "-O1", "-Wall", f"-I{MOCK}", f"-I{SKETCH}"]
    codec = out / "codec"
    subprocess.run([*common, str(MOCK / "codec_main.cpp"), "-o", str(codec)], check=True)
    sketch = out / "sketch"
    subprocess.run(
        [
            *common,
            "-x",
            "c++",
            str(SKETCH / "ina219_bridge.ino"),
            "-x",
            "none",
            str(MOCK / "host_main.cpp"),
            "-o",
            str(sketch),
        ],
        check=True,
    )
    return codec, sketch


def test_cpp_codec_and_calibration_match_python(build):
    codec, _ = build
    rng = random.Random(11)
    lines, expected = [], []
    for _ in range(300):
        args = (
            rng.randrange(1 << 16),
            rng.randrange(1 << 32),
            rng.randrange(1 << 16),
            rng.randrange(-(1 << 31), 1 << 31),
            rng.randrange(1 << 32),
            rng.randrange(256),
        )
        lines.append("sample " + " ".join(map(str, args)))
        expected.append(protocol.encode_sample(*args).hex())
    for _ in range(100):
        data = bytes(rng.choice([0, 0, rng.randrange(256)]) for _ in range(rng.randrange(1, 600)))
        lines.append(f"cobs {data.hex()}")
        expected.append((protocol.cobs_encode(data) + b"\x00").hex())
    cases = [
        (100_000, 2_000_000, 100_000_000),
        (100_000, 3_200_000, 0),
        (10_000, 10_000_000, 0),
        (1_000, 1_000, 0),
        (500_000, 400_000, 0),
    ]
    for shunt, max_ua, lsb in cases:
        lines.append(f"cal {shunt} {max_ua} {lsb}")
        try:
            cal, lsb_pa, _ = ina219.calibration(shunt, max_ua, lsb)
            expected.append(f"{cal} {lsb_pa}")
        except ValueError:
            expected.append("error")
    got = subprocess.run(
        [str(codec)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    assert got[: len(expected)] == expected


def test_sketch_streams_to_the_host_reader_over_a_pty(build):
    _, sketch = build
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([str(sketch)], stdin=master, stdout=master)
    try:
        reader = BridgeReader(os.ttyname(slave), rate_hz=800, timeout_s=0.5).start()
        try:
            info = reader.device
            assert info.tick_period_us == 2**32 and info.name == "carboncp-ina219"
            assert reader.wait_for(time.monotonic() + 0.3, timeout_s=5)
            samples = reader.samples_between(0, time.monotonic())
            assert reader.set_rate(400) == 400
            stats = reader.stats
        finally:
            reader.close()
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        os.close(master)
        os.close(slave)
    # the mock INA219 holds 80.00 mV on the 0.1 ohm shunt at 5.100 V: what the Python
    # firmware's integer maths gives for the same registers
    cal, lsb_pa, plsb_pw = ina219.calibration(100_000, 3_200_000)
    current_raw = 8000 * cal // 4096
    power_raw = current_raw * 1275 // 5000
    assert info.calibration == cal and info.current_lsb_pa == lsb_pa
    assert len(samples) > 30
    for s in samples:
        assert (s.bus_voltage_mv, s.current_ma, s.power_mw) == (
            5100.0,
            (current_raw * lsb_pa // 10**6) / 1000,
            (power_raw * plsb_pw // 10**6) / 1000,
        )
    assert stats.crc_errors == 0 and stats.framing_errors == 0
    assert len(samples) <= samples[-1].seq - samples[0].seq + 1 <= len(samples) + stats.lost_samples
