"""The serial power source over the real BridgeReader and the real firmware (under CPython,
fake INA219) behind a pty: the meter's energy matches the sensor's closed form, and an
unplugged cable gives modelled, flagged windows while the meter stays alive, and measured
ones again after the device is plugged back in."""

from __future__ import annotations

import math
import time

import pytest
from carboncp.runtime.power import EnergyMeter, open_power_source

from tests.support.requires import require

sim = require("carboncp.firmware_bridge.sim", "it simulates the serial bridge")
require("serial", "pyserial talks to the bridge (runtime extra)")


def test_meter_over_serial_bridge_matches_closed_form_and_survives_unplug(tmp_path):
    link = str(tmp_path / "ina219")
    with sim.SimulatedDevice(link_path=link, rate_hz=1000) as dev:
        src = open_power_source(f"serial:{link}")
        with EnergyMeter(src, rate_hz=50.0, max_age_s=0.5) as meter:
            load = dev.load
            t0 = time.monotonic() + 0.1
            t1 = t0 + 1.5 / load.freq_hz  # 1.5 periods: not the flat mean x duration
            time.sleep(max(0.0, t1 - time.monotonic()) + 0.05)
            m = meter.energy_j(t0, t1, modelled_j=-1.0)
            assert not m.modelled, m.flags
            assert m.energy_j == pytest.approx(load.energy_j(t0, t1), rel=0.02)
            assert m.samples > 50  # the bridge's full-rate samples, not the meter's 50 Hz

            dev.unplug()  # cable pulled
            time.sleep(0.8)
            t2 = time.monotonic()
            time.sleep(0.2)
            bad = meter.energy_j(t2, time.monotonic(), modelled_j=0.25)
            assert bad.modelled and bad.energy_j == 0.25
            assert "sensor_fault:stale" in bad.flags
            assert meter.alive and meter.fault_counts["stale"] > 0

            dev.plug()  # a rebooted device at the same path: the reader reconnects
            deadline = time.monotonic() + 8
            good = None
            while time.monotonic() < deadline:
                time.sleep(0.3)
                now = time.monotonic()
                good = meter.energy_j(now - 0.2, now - 0.05, modelled_j=0.25)
                if not good.modelled:
                    break
            assert good is not None and not good.modelled, good.flags
    assert math.isfinite(m.energy_j)
