"""The real firmware (under CPython, fake INA219) talking to BridgeReader through a pty."""

from __future__ import annotations

import itertools
import math
import time

import pytest
from carboncp.firmware_bridge.host import BridgeError, BridgeReader
from carboncp.firmware_bridge.sim import SimulatedDevice

from .harness import FaultInjector, Truth


def _wait(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _check_against_truth(samples, truth: Truth) -> None:
    """Every delivered sample is exactly what the firmware sent with that MCU time and seq."""
    assert samples
    for s in samples:
        sent = truth.by_mcu_us.get(s.mcu_us % 2**30)
        assert sent is not None, f"delivered a sample the firmware never sent: {s}"
        seq16, _raw, mv, ua, uw, flags = sent
        assert (s.seq & 0xFFFF, s.bus_voltage_mv, s.current_ma, s.power_mw, s.flags) == (
            seq16,
            float(mv),
            ua / 1000,
            uw / 1000,
            flags,
        )


def test_energy_over_window_matches_fake_sensor(tmp_path):
    truth = Truth()
    # MCU clock 250 ppm fast and 0.4 s before its 2**30 us wrap: both must be handled
    with SimulatedDevice(
        link_path=str(tmp_path / "ina219"), drift_ppm=250, start_us=2**30 - 400_000, tap=truth
    ) as dev:
        reader = BridgeReader(dev.path, rate_hz=1000, timeout_s=0.5).start()
        try:
            assert reader.device is not None and reader.device.name == "carboncp-ina219"
            load = dev.load
            w = 2 * math.pi * load.freq_hz
            # start at an upward zero crossing of the sine and span 1.5 periods, so the
            # window holds one more positive half-wave than negative: the energy differs
            # clearly from mean power x duration
            t_start = time.monotonic() + 0.15
            k = math.ceil((w * t_start + load.phase) / (2 * math.pi))
            t0 = (2 * math.pi * k - load.phase) / w
            t1 = t0 + 1.5 / load.freq_hz
            assert reader.wait_for(t1 + 0.01, timeout_s=5)
            measured = reader.energy_j(t0, t1)
            expected = load.energy_j(t0, t1)  # closed form over host monotonic time
            window = reader.samples_between(t0, t1)
            stats = reader.stats
        finally:
            reader.close()
    flat = load.volts * load.mean_a * (t1 - t0)
    assert abs(expected - flat) > 0.05 * flat  # the window is not trivially flat
    assert measured == pytest.approx(expected, rel=0.01)
    # sampled densely (1 kHz asked; CPython firmware on a busy machine may reach less) and
    # every sample between the first and last was delivered or counted lost
    assert len(window) > 50
    assert len(window) <= window[-1].seq - window[0].seq + 1 <= len(window) + stats.lost_samples
    assert all(a.host_t_s <= b.host_t_s for a, b in itertools.pairwise(window))
    assert stats.crc_errors == 0 and stats.framing_errors == 0
    _check_against_truth(window, truth)
    reader.close()  # idempotent


def test_faults_never_deliver_corrupted_frames_and_reader_recovers(tmp_path):
    truth = Truth()
    inj = FaultInjector(seed=7, p=0.08)
    with SimulatedDevice(
        link_path=str(tmp_path / "ina219"), rate_hz=1000, tap=truth, tx_filter=inj
    ) as dev:
        reader = BridgeReader(dev.path, rate_hz=1000, timeout_s=0.25).start()
        try:
            inj.mode = "mixed"  # bit flips, dropped bytes, truncations, garbage bursts
            time.sleep(0.8)
            # on a slow machine the CPython firmware sends fewer frames: go on until every
            # kind of damage has happened a few times
            assert _wait(lambda: all(inj.count(k) >= 3 for k in FaultInjector.KINDS), 10)
            inj.mode = "stall"  # device goes silent past timeout_s, then comes back
            time.sleep(0.6)
            inj.mode = "mixed"
            time.sleep(0.4)
            inj.mode = None
            n_before = len(reader.samples_between(0, time.monotonic()))
            assert _wait(lambda: reader.stats.timeouts >= 1 and reader.connected, 5)
            t_ok = time.monotonic()
            assert reader.wait_for(t_ok + 0.2, timeout_s=5), "reader did not recover"
            samples = reader.samples_between(0, time.monotonic())
            stats = reader.stats
        finally:
            reader.close()
    assert reader._thread is not None and not reader._thread.is_alive()
    assert len(samples) > n_before
    _check_against_truth(samples, truth)
    assert inj.swallowed > 30  # the stall really withheld frames
    damaged = {seq for _, seq in inj.damaged}
    assert not damaged & {s.seq & 0xFFFF for s in samples}
    assert stats.crc_errors + stats.framing_errors >= len(inj.damaged) // 2
    assert stats.timeouts >= 1 and stats.reconnects >= 1 and stats.restarts == 0
    # nothing vanished silently: every seq between the first and last delivered sample was
    # either delivered or counted lost (the stall's frames included)
    assert len(samples) + stats.lost_samples == samples[-1].seq - samples[0].seq + 1
    assert stats.lost_samples >= inj.swallowed // 2


def test_unplug_and_replug_at_the_same_path(tmp_path):
    truth = Truth()
    link = str(tmp_path / "ina219")
    dev = SimulatedDevice(link_path=link, rate_hz=500, tap=truth)
    dev.plug()
    reader = BridgeReader(link, rate_hz=500, timeout_s=0.3).start()
    try:
        assert reader.wait_for(time.monotonic() + 0.1, timeout_s=5)
        dev.unplug()  # cable pulled: pty closed, link gone
        assert _wait(lambda: not reader.connected, 5)
        time.sleep(0.3)  # a few failed reopen attempts
        dev.plug()  # a rebooted device on a new pty behind the same link
        assert _wait(lambda: reader.connected and reader.stats.reconnects >= 1, 10)
        t = time.monotonic()
        assert reader.wait_for(t + 0.1, timeout_s=5), "no samples after re-plug"
        samples = reader.samples_between(0, time.monotonic())
        stats = reader.stats
        assert reader.identify().session == dev.monitor.session
        assert reader.set_calibration(0.1, 2.0) == (6710, 61_043_219)
        assert reader.set_rate(400) == 400 and dev.monitor.period_us == 2500
    finally:
        reader.close()
        dev.close()
    assert stats.restarts == 1 and stats.reconnects >= 1
    _check_against_truth(samples, truth)
    assert any(s.host_t_s > t for s in samples)


def test_missing_port_is_a_clear_error(tmp_path):
    with pytest.raises(BridgeError, match="cannot open serial port"):
        BridgeReader(str(tmp_path / "nothing-here"), timeout_s=0.2).start()


def test_silent_port_fails_handshake(tmp_path):
    dev = SimulatedDevice(tx_filter=lambda b: b"")  # device never answers
    dev.plug()
    try:
        with pytest.raises(BridgeError, match="no answer"):
            BridgeReader(dev.path, timeout_s=0.1, connect_timeout_s=1.0).start()
    finally:
        dev.close()


def test_corrupted_commands_are_retried_until_the_device_understands(tmp_path):
    """Faults in the other direction: a serial wrapper that mangles half the host's writes."""
    import random

    import serial

    rng = random.Random(5)
    mangled = []

    def flaky_factory(url, **kw):
        ser = serial.serial_for_url(url, **kw)
        write = ser.write

        def bad_write(data):
            if rng.random() < 0.5:
                data = bytearray(data)
                data[rng.randrange(len(data) - 1)] ^= 0x04  # never the delimiter
                mangled.append(bytes(data))
            return write(bytes(data))

        ser.write = bad_write
        return ser

    with SimulatedDevice(rate_hz=500) as dev:
        reader = BridgeReader(dev.path, rate_hz=500, timeout_s=0.3, serial_factory=flaky_factory)
        try:
            reader.start()
            assert reader.wait_for(time.monotonic() + 0.1, timeout_s=5)
            for _ in range(6):
                assert reader.identify().protocol_version == 1
            rx_bad = dev.monitor.rx_bad
        finally:
            reader.close()
    assert mangled and rx_bad >= 1  # the device saw and dropped the mangled commands


def test_power_monitor_command_through_the_dispatcher(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "carboncp.runtime.cli",
            "power-monitor",
            "--port",
            str(tmp_path / "ttyACM9"),
            "--seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "cannot open serial port" in proc.stderr and "Traceback" not in proc.stderr


def test_protocol_version_mismatch_is_refused_with_both_versions():
    from carboncp.firmware_bridge import protocol
    from carboncp.firmware_bridge.firmware import bridge_wire as wire

    def claim_v9(frame: bytes) -> bytes:
        body = protocol.cobs_decode(frame[:-1])
        if body and body[0] == wire.T_IDENTITY:  # rewrite the version, keep the CRC valid
            payload = bytearray(body[1:-2])
            payload[1] = 9
            return protocol.encode_frame(wire.T_IDENTITY, bytes(payload))
        return frame

    with SimulatedDevice(tx_filter=claim_v9) as dev:
        reader = BridgeReader(dev.path, timeout_s=0.3)
        with pytest.raises(BridgeError, match=r"protocol v9, this host v1"):
            reader.start()
        assert not dev.monitor.streaming
