"""Replay of real traces: shapes, chronology, and that x_seen differs from x_true only as the
module documents."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.errors import TraceError
from carboncp.runtime.signals.traces import (
    BandwidthTrace,
    CarbonTrace,
    load_bandwidth_trace,
    load_carbon_csv,
    shipped_bandwidth_path,
    shipped_carbon_path,
)
from carboncp.tooling.contexts import ReplayProcesses, build_replay

from tests.support.cost_fixtures import resnet18_like_profile

DAYS = 7


@pytest.fixture(scope="module")
def setup() -> tuple[CarbonTrace, CarbonTrace, BandwidthTrace, CostModel]:
    dev = load_carbon_csv(shipped_carbon_path("DE-LU"))
    srv = load_carbon_csv(shipped_carbon_path("GB"))
    bw = load_bandwidth_trace(shipped_bandwidth_path("norway_bus_1"))
    return dev, srv, bw, CostModel(resnet18_like_profile(), Objective())


@pytest.fixture(scope="module")
def replay(setup):  # type: ignore[no-untyped-def]
    dev, srv, bw, cm = setup
    return build_replay(dev, srv, bw, cm, events_per_hour=10, end_s=dev.start_s + DAYS * 86400)


def test_shapes_chronology_and_splits(replay, setup) -> None:  # type: ignore[no-untyped-def]
    dev = setup[0]
    n = DAYS * 24 * 10
    assert len(replay) == n
    assert replay.x_true.shape == replay.x_seen.shape == (n, 7)
    assert replay.costs.objective.shape == (n, 7)
    assert np.all(np.diff(replay.t_s) >= 0)
    assert replay.t_s[0] >= dev.start_s and replay.t_s[-1] < dev.start_s + DAYS * 86400
    s = replay.splits
    assert [len(s[k]) for k in ("train", "cal", "test")] == [n // 2, n // 4, n // 4]
    np.testing.assert_array_equal(np.concatenate([s["train"], s["cal"], s["test"]]), np.arange(n))
    assert replay.t_s[s["train"]].max() <= replay.t_s[s["cal"]].min()
    assert replay.t_s[s["cal"]].max() <= replay.t_s[s["test"]].min()


def test_costs_and_labels_come_from_the_true_context(replay, setup) -> None:  # type: ignore[no-untyped-def]
    cm = setup[3]
    np.testing.assert_array_equal(replay.x_true[:, 0], replay.tx_mbps)
    c = cm.evaluate(replay.x_true)
    np.testing.assert_array_equal(c.objective, replay.costs.objective)
    np.testing.assert_array_equal(cm.oracle(c), replay.label)


def test_carbon_seen_is_the_last_message(replay, setup) -> None:  # type: ignore[no-untyped-def]
    dev, srv = setup[0], setup[1]
    lag = replay.meta["processes"]["carbon_lag_s"]
    into_hour = replay.t_s % 3600
    np.testing.assert_array_equal(replay.x_true[:, 4], dev.at_array(replay.t_s))
    np.testing.assert_array_equal(replay.x_true[:, 5], srv.at_array(replay.t_s))
    fresh = into_hour >= lag
    np.testing.assert_array_equal(replay.x_seen[fresh, 4], replay.x_true[fresh, 4])
    stale = ~fresh & (replay.t_s >= dev.start_s + 3600)
    np.testing.assert_array_equal(replay.x_seen[stale, 4], dev.at_array(replay.t_s[stale] - 3600))
    np.testing.assert_array_equal(replay.x_seen[stale, 5], srv.at_array(replay.t_s[stale] - 3600))
    assert 0.15 < stale.mean() < 0.35  # lag 900 s of 3600


def test_bandwidth_true_is_the_trace_and_seen_is_the_ewma_of_the_past(replay, setup) -> None:  # type: ignore[no-untyped-def]
    bw = setup[2]
    pos = replay.bandwidth_pos_s
    np.testing.assert_array_equal(replay.tx_mbps, bw.at_array(pos))
    pr = replay.meta["processes"]
    k = np.arange(1, pr["ewma_samples"] + 1)
    w = pr["ewma_beta"] * (1 - pr["ewma_beta"]) ** (k - 1)
    w = w / w.sum()
    for i in range(0, len(replay), 97):
        past = [bw.at(pos[i] - j * pr["inference_period_s"]) for j in k]
        assert replay.x_seen[i, 0] == pytest.approx(float(np.dot(w, past)))
    # Within a day the position advances with wall time.
    same_day = (replay.t_s[1:] // 86400) == (replay.t_s[:-1] // 86400)
    np.testing.assert_allclose(np.diff(pos)[same_day], np.diff(replay.t_s)[same_day])
    assert replay.meta["bandwidth_duration_s"] == bw.duration_s


def test_loads_rtt_and_battery_follow_their_processes(replay) -> None:  # type: ignore[no-untyped-def]
    x, s = replay.x_true, replay.x_seen
    pr = replay.meta["processes"]
    assert np.all((x[:, 2:4] >= 0) & (x[:, 2:4] <= 1))
    inner = (x[:, 2] > 0.2) & (x[:, 2] < 0.8)  # away from the clipping
    assert np.std(s[inner, 2] - x[inner, 2]) == pytest.approx(pr["load_noise"], rel=0.15)
    assert np.all(s[:, 1] == s[0, 1]) and np.std(np.log(x[:, 1])) == pytest.approx(
        pr["rtt_sigma"], rel=0.15
    )
    np.testing.assert_array_equal(s[:, 6], np.round(x[:, 6]))
    assert x[:, 6].min() >= 5.0 and x[:, 6].max() <= 100.0
    hour = (replay.t_s % 86400) / 3600
    charging = (hour >= pr["charge_start_h"]) | (hour < pr["charge_end_h"])
    assert x[charging, 6].mean() > x[~charging, 6].mean()
    # Diurnal device load: afternoon busier than night (statistical, over a week).
    assert x[(hour > 12) & (hour < 16), 2].mean() > x[(hour > 0) & (hour < 4), 2].mean() + 0.2


def test_residuals(replay, setup) -> None:  # type: ignore[no-untyped-def]
    cm = setup[3]
    r = replay.bandwidth_log_residuals("cal")
    i = replay.splits["cal"]
    np.testing.assert_allclose(
        r,
        np.log(np.maximum(replay.tx_mbps[i], 1e-3)) - np.log(np.maximum(replay.x_seen[i, 0], 1e-3)),
    )
    lat = replay.latency_residuals_ms("cal", cm)
    assert lat.shape == (len(i), 7)
    # The local partition's residual is load noise only: small; offloads carry the link's error.
    assert np.abs(lat[:, -1]).mean() < np.abs(lat[:, 0]).mean()
    with pytest.raises(KeyError):
        replay.bandwidth_log_residuals("validation")


def test_constant_link_means_zero_bandwidth_residuals(setup) -> None:  # type: ignore[no-untyped-def]
    dev, srv, _, cm = setup
    flat = BandwidthTrace("flat", np.array([0.0, 10.0, 20.0]), np.array([5.0, 5.0, 5.0]))
    r = build_replay(dev, srv, flat, cm, events_per_hour=2, end_s=dev.start_s + 86400)
    assert np.all(r.bandwidth_log_residuals(None) == 0)


def test_seeded_and_refuses_disjoint_traces(setup) -> None:  # type: ignore[no-untyped-def]
    dev, srv, bw, cm = setup
    kw = dict(events_per_hour=2, end_s=dev.start_s + 86400)
    a, b = (
        build_replay(dev, srv, bw, cm, seed=1, **kw),
        build_replay(dev, srv, bw, cm, seed=1, **kw),
    )
    np.testing.assert_array_equal(a.x_seen, b.x_seen)
    c = build_replay(dev, srv, bw, cm, seed=2, **kw)
    assert not np.array_equal(a.x_true, c.x_true)
    later = CarbonTrace("X", srv.t_s + 365 * 86400, srv.gco2_per_kwh)
    with pytest.raises(TraceError, match="share less than one hour"):
        build_replay(dev, later, bw, cm)
    with pytest.raises(ValueError, match="split"):
        build_replay(dev, srv, bw, cm, split=(0.5, 0.5, 0.5))


def test_charging_intensity_is_last_nights_mean(setup) -> None:  # type: ignore[no-untyped-def]
    dev, srv, bw, cm = setup
    r = build_replay(dev, srv, bw, cm, events_per_hour=4, end_s=dev.start_s + 3 * 86400,
                     processes=ReplayProcesses(device_intensity="charging"))  # fmt: skip
    np.testing.assert_array_equal(r.x_seen[:, 4], r.x_true[:, 4])
    hour = (r.t_s % 86400) // 3600
    day = (r.t_s - dev.start_s) // 86400
    # Day 1, 12:00-21:59: off the charger; last window = day 0 22:00 to day 1 06:00.
    sel = (day == 1) & (hour >= 12) & (hour < 22)
    night = dev.gco2_per_kwh[22:30]  # hours 22..29 from the trace's start (a midnight)
    np.testing.assert_allclose(r.x_true[sel, 4], night.mean())
    on = (day == 1) & (hour >= 23)
    np.testing.assert_array_equal(r.x_true[on, 4], dev.at_array(r.t_s[on]))
    with pytest.raises(ValueError, match="device_intensity"):
        build_replay(
            dev, srv, bw, cm, events_per_hour=1, processes=ReplayProcesses(device_intensity="solar")
        )


def test_processes_are_the_metadata(setup) -> None:  # type: ignore[no-untyped-def]
    dev, srv, bw, cm = setup
    pr = ReplayProcesses(rtt_ms=35.0, ewma_samples=4, charge_mw=5000.0)
    r = build_replay(dev, srv, bw, cm, events_per_hour=2, end_s=dev.start_s + 86400, processes=pr)
    meta = dict(r.meta["processes"])
    assert meta.pop("battery_mean_draw_mw") > 0
    assert meta == asdict(pr)
    default = build_replay(dev, srv, bw, cm, events_per_hour=2, end_s=dev.start_s + 86400)
    assert default.meta["processes"]["rtt_ms"] == ReplayProcesses().rtt_ms
