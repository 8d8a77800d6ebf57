"""EnergyMeter: integration against known power profiles and the sensor fault table."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
from carboncp.runtime.power import EnergyMeter, PowerReading, SensorFault
from carboncp.runtime.power.fake import FakePowerSource
from carboncp.runtime.power.ina219 import INA219
from carboncp.runtime.power.sysfs import SysfsBattery

from .test_power_sources import FakeINA219Bus


class StepClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def drive(meter: EnergyMeter, clock: StepClock, seconds: float, dt: float) -> None:
    """Sample deterministically without the thread: one reading every dt."""
    for _ in range(round(seconds / dt)):
        meter.sample_once()
        clock.t += dt


def test_energy_of_a_known_sine_profile_deterministic():
    clock = StepClock()
    profile = lambda t: 1500.0 + 500.0 * math.sin(2 * math.pi * (t - 100.0))  # noqa: E731
    meter = EnergyMeter(FakePowerSource(profile=profile, clock=clock), 200.0, clock=clock)
    drive(meter, clock, 2.0, 1 / 200)
    m = meter.energy_j(100.25, 101.5)
    # analytic integral of the profile over the window (mW*s -> J)
    exact = (
        1500.0 * 1.25
        - 500.0 / (2 * math.pi) * (math.cos(2 * math.pi * 1.5) - math.cos(2 * math.pi * 0.25))
    ) / 1000
    assert m.energy_j == pytest.approx(exact, rel=1e-3)
    assert m.flags == () and not m.modelled
    assert m.samples >= 250


def test_threaded_meter_integrates_a_ramp():
    t_start = time.monotonic()
    ramp = lambda t: 1000.0 + 4000.0 * (t - t_start)  # noqa: E731
    with EnergyMeter(FakePowerSource(profile=ramp), rate_hz=400.0) as meter:
        time.sleep(0.05)
        with meter.measure() as w:
            time.sleep(0.2)
        m = w.result
        assert meter.alive
    a, b = w.t0_s - t_start, w.t1_s - t_start
    exact = (1000.0 * (b - a) + 2000.0 * (b * b - a * a)) / 1000.0
    assert m.energy_j == pytest.approx(exact, rel=0.02)
    assert m.samples >= 10
    assert not meter.alive and "closed" in repr(meter)
    meter.close()  # idempotent


# ---------------------------------------------------------------- the fault table
def sysfs_battery(tmp_path: Path, opener, clock) -> tuple[SysfsBattery, Path]:
    d = tmp_path / "ps" / "BAT0"
    d.mkdir(parents=True)
    (d / "type").write_text("Battery\n")
    (d / "status").write_text("Discharging\n")
    (d / "power_now").write_text("2000000\n")
    return SysfsBattery(str(tmp_path / "ps"), opener=opener, clock=clock), d / "power_now"


class DenyOpener:
    """Permission checks are bypassed as root, so denial is injected at open()."""

    def __init__(self) -> None:
        self.deny: set[str] = set()

    def __call__(self, path: str):
        if path in self.deny:
            raise PermissionError(13, "Permission denied", path)
        return open(path, encoding="ascii")


def fault_missing(src, f, opener):
    f.unlink()


def fault_permission(src, f, opener):
    if os.geteuid() != 0:
        f.chmod(0)
    opener.deny.add(str(f))


def fault_empty(src, f, opener):
    f.write_text("")


def fault_nan(src, f, opener):
    f.write_text("nan\n")


def fault_range(src, f, opener):
    f.write_text("900000000000\n")  # 900 kW


FAULTS_SYSFS = {
    "missing": fault_missing,
    "permission": fault_permission,
    "empty": fault_empty,
    "nan": fault_nan,
    "range": fault_range,
}


def heal(f: Path, opener: DenyOpener) -> None:
    opener.deny.clear()
    f.chmod(0o644) if f.exists() else None
    f.write_text("2000000\n")


def check_fault_then_recovery(meter: EnergyMeter, clock: StepClock, kind: str, heal_fn) -> None:
    bad = meter.energy_j(clock.t - 0.5, clock.t - 0.1, modelled_power_mw=750.0)
    assert bad.modelled
    assert f"sensor_fault:{kind}" in bad.flags
    assert bad.energy_j == pytest.approx(750.0 * 0.4 / 1000)  # the modelled value, not a reading
    assert meter.fault_counts[kind] >= 10
    heal_fn()
    t0 = clock.t
    drive(meter, clock, 0.5, 0.01)
    good = meter.energy_j(t0 + 0.05, clock.t - 0.05, modelled_power_mw=750.0)
    assert not good.modelled and good.flags == ()
    assert good.energy_j == pytest.approx(2000.0 * (clock.t - 0.1 - t0) / 1000, rel=1e-6)


@pytest.mark.parametrize("kind", sorted(FAULTS_SYSFS))
def test_sysfs_fault_table(tmp_path, kind):
    opener = DenyOpener()
    clock = StepClock()
    src, f = sysfs_battery(tmp_path, opener, clock)
    meter = EnergyMeter(src, rate_hz=100, clock=clock)
    drive(meter, clock, 0.5, 0.01)
    FAULTS_SYSFS[kind](src, f, opener)
    drive(meter, clock, 0.5, 0.01)
    check_fault_then_recovery(meter, clock, kind, lambda: heal(f, opener))


def test_stale_fault():
    clock = StepClock()
    src = FakePowerSource(2000.0, clock=clock)
    meter = EnergyMeter(src, rate_hz=100, max_age_s=0.2, clock=clock)
    drive(meter, clock, 0.5, 0.01)
    # the backend keeps returning one old reading (a bridge that went quiet)
    src.fail_next(*[PowerReading(clock.t - 5.0, 2000.0, source="fake")] * 50)
    drive(meter, clock, 0.5, 0.01)
    check_fault_then_recovery(meter, clock, "stale", lambda: src.script.clear())


def test_overflow_fault():
    bus = FakeINA219Bus(0.1, 0.4, 5.0)
    clock = StepClock()
    ina = INA219(1, 0x41, i2c=bus, ready_timeout_s=0.0, clock=clock)
    meter = EnergyMeter(ina, rate_hz=100, clock=clock)

    def step(seconds):
        for _ in range(round(seconds / 0.01)):
            bus.cnvr = True
            meter.sample_once()
            clock.t += 0.01

    step(0.5)
    bus.current_a = 3.3  # beyond the shunt range: OVF set
    step(0.5)
    bad = meter.energy_j(clock.t - 0.4, clock.t - 0.1, modelled_j=0.123)
    assert bad.energy_j == 0.123 and "sensor_fault:overflow" in bad.flags
    bus.current_a = 0.4
    t0 = clock.t
    step(0.5)
    good = meter.energy_j(t0 + 0.05, clock.t - 0.05)
    assert not good.modelled
    assert good.energy_j == pytest.approx(0.4 * 5000 * (clock.t - 0.1 - t0) / 1e3, rel=0.01)


def test_faults_with_running_thread_keep_meter_alive():
    src = FakePowerSource(1000.0)
    faults = [SensorFault("nan", "x"), OSError(5, "EIO"), RuntimeError("driver bug")] * 20
    with EnergyMeter(src, rate_hz=500.0, fallback_power_mw=900.0) as meter:
        src.fail_next(*faults)
        deadline = time.monotonic() + 5
        while src.script and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.02)  # faults within two sample periods of a window taint it
        t0 = time.monotonic()
        time.sleep(0.05)
        m = meter.energy_j(t0, time.monotonic())
        assert meter.alive
        assert not m.modelled and m.energy_j > 0
        assert meter.fault_counts == {"nan": 20, "io": 40}
        assert meter.stats["faults"]["io"] == 40


def test_charging_and_no_samples_use_model():
    clock = StepClock()
    src = FakePowerSource(clock=clock)
    meter = EnergyMeter(src, rate_hz=100, clock=clock)
    src.fail_next(
        *[PowerReading(clock.t + i * 0.01, 5000.0, flags=("charging",)) for i in range(20)]
    )
    drive(meter, clock, 0.2, 0.01)
    m = meter.energy_j(100.02, 100.15, modelled_j=0.5)
    assert m.energy_j == 0.5 and "charging" in m.flags
    empty = EnergyMeter(FakePowerSource(), rate_hz=100)
    m = empty.energy_j(0.0, 1.0)
    assert m.energy_j is None and {"modelled", "no_samples", "no_energy"} <= set(m.flags)


def test_streaming_source_energy_used():
    class Streaming(FakePowerSource):
        def energy_between(self, t0, t1):
            return 42.0, 1234

    clock = StepClock()
    meter = EnergyMeter(Streaming(clock=clock), rate_hz=100, clock=clock)
    drive(meter, clock, 0.2, 0.01)
    m = meter.energy_j(100.05, 100.1)
    assert (m.energy_j, m.samples) == (42.0, 1234)
