"""integrate_energy_j: the trapezoid rule every power source's energy goes through."""

from __future__ import annotations

import math

import pytest
from carboncp.runtime.power.base import PowerReading, integrate_energy_j


def _ramp(n: int, t0: float, t1: float) -> list[PowerReading]:
    # power_mw = 1000 + 500 t: linear, so the trapezoid rule is exact.
    ts = [t0 + (t1 - t0) * i / (n - 1) for i in range(n)]
    return [PowerReading(t_s=t, power_mw=1000 + 500 * t) for t in ts]


def test_linear_power_is_integrated_exactly_over_a_sub_window() -> None:
    readings = _ramp(101, 0.0, 10.0)
    # ∫_2^7 (1000 + 500 t) mW dt = 5000 + 250 (49 - 4) = 16250 mJ
    assert integrate_energy_j(readings, 2.0, 7.0) == pytest.approx(16.25, rel=1e-12)


def test_window_between_samples_interpolates() -> None:
    readings = [PowerReading(0.0, 1000.0), PowerReading(1.0, 3000.0)]
    # power on [0.25, 0.75] goes 1500 -> 2500 mW: mean 2000 mW over 0.5 s = 1 J
    assert integrate_energy_j(readings, 0.25, 0.75) == pytest.approx(1.0)


def test_power_is_held_beyond_the_readings() -> None:
    readings = [PowerReading(1.0, 2000.0), PowerReading(2.0, 2000.0)]
    assert integrate_energy_j(readings, 0.0, 3.0) == pytest.approx(6.0)


def test_readings_without_power_are_skipped_and_order_does_not_matter() -> None:
    readings = [PowerReading(1.0, 1000.0), PowerReading(0.5, None), PowerReading(0.0, 1000.0)]
    assert integrate_energy_j(readings, 0.0, 1.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("readings", "t0", "t1"),
    [([], 0.0, 1.0), ([PowerReading(0.0, None)], 0.0, 1.0), ([PowerReading(0.0, 1.0)], 1.0, 0.0)],
)
def test_unusable_input_is_an_error(readings: list[PowerReading], t0: float, t1: float) -> None:
    with pytest.raises(ValueError):
        integrate_energy_j(readings, t0, t1)


def test_nan_window_is_an_error() -> None:
    with pytest.raises(ValueError):
        integrate_energy_j([PowerReading(0.0, 1.0)], math.nan, 1.0)
