"""The scenario, chosen with the cost model: where carbon puts the offload threshold B*, how
often carbon and the link are expected to move the decision across it, and the replay
window (and link scale) where both do; `plan_demo` gathers what a run replays."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.errors import CarbonCPError
from carboncp.tooling.demo.config import DemoConfig, say

ANALYSIS_RTT_MS = 5.0  # the estimator's starting RTT; loopback adds less than 1 ms
_B_GRID = np.geomspace(0.01, 1000.0, 400)  # Mbit/s: ~1.2% steps, any model's threshold


def offload_thresholds(cm: Any, dev_gco2: np.ndarray, srv_gco2: np.ndarray) -> np.ndarray:
    """B*(hour): the link rate (Mbit/s) above which the cost model's oracle offloads (some
    p < P) rather than running locally, for each pair of device/server intensities.

    This is where carbon enters the decision: the cleaner the device's grid relative to the
    server's, the higher B*. inf where local wins at every rate, the grid's floor where
    offloading wins at every rate."""
    n, g = len(dev_gco2), len(_B_GRID)
    out = np.empty(n)
    for i0 in range(0, n, 256):  # bounded memory: 256 hours x 400 rates at a time
        d, s = dev_gco2[i0 : i0 + 256], srv_gco2[i0 : i0 + 256]
        x = np.zeros((len(d) * g, 7))
        x[:, 0] = np.tile(_B_GRID, len(d))
        x[:, 1] = ANALYSIS_RTT_MS
        x[:, 4], x[:, 5], x[:, 6] = np.repeat(d, g), np.repeat(s, g), 100.0
        local = (cm.oracle(cm.evaluate(x)) == cm.P).reshape(len(d), g)
        last = g - 1 - np.argmax(local[:, ::-1], axis=1)  # highest rate where local wins
        th = np.where(last + 1 < g, _B_GRID[np.minimum(last + 1, g - 1)], np.inf)
        out[i0 : i0 + len(d)] = np.where(local.any(axis=1), th, _B_GRID[0])
    return out


def link_cdf(bw: Any, scale: float) -> Any:
    """F(B): the share of the (scaled) trace's time with a rate below B."""
    dur = np.diff(bw.t_s, prepend=bw.t_s[0])
    order = np.argsort(bw.mbps)
    v, w = bw.mbps[order] * scale, np.cumsum(dur[order]) / max(dur.sum(), 1e-12)

    def F(b: np.ndarray) -> np.ndarray:
        i = np.searchsorted(v, b, side="left")
        return np.where(i > 0, w[np.maximum(i - 1, 0)], 0.0)

    return F


def step_hours(hours: int, steps: int) -> np.ndarray:
    """Hour (from the window's start) whose carbon each step sees."""
    return (np.arange(steps) * hours) // steps


def link_crossing(bw: Any, scale: float, dt_s: float, n: int = 4000) -> Any:
    """G(B): the probability that the (scaled) link crosses B between two steps dt_s of
    trace time apart, over all positions in the (looped) trace."""
    t = np.linspace(0.0, bw.duration_s, n, endpoint=False)
    a, b = bw.at_array(t) * scale, bw.at_array(t + dt_s) * scale
    lo, hi = np.sort(np.minimum(a, b)), np.sort(np.maximum(a, b))

    def G(x: np.ndarray) -> np.ndarray:
        return (np.searchsorted(lo, x, side="left") - np.searchsorted(hi, x, side="left")) / n

    return G


def expected_changes(
    th: np.ndarray, F: Any, G: Any, hours: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per window start: the expected numbers of (carbon-driven, link-driven) changes of the
    cost model's choice (local vs offload) over the demo's steps.

    Between two steps carbon moves B* from B*(h) to B*(h'): the choice flips when the link
    lies between the two, with probability |F(B*(h')) - F(B*(h))| for a link drawn from the
    trace. The link moves from one rate to the next: the choice flips when the pair
    straddles B*, with probability G(B*). Summed over the steps of each window."""
    off = step_hours(hours, steps)
    n_win = max(len(th) - hours + 1, 1)
    idx = np.minimum(np.arange(n_win)[:, None] + off[None, :], len(th) - 1)
    carbon = np.abs(np.diff(F(th)[idx], axis=1)).sum(axis=1)
    link = G(th)[idx][:, 1:].sum(axis=1)
    return carbon, link


@dataclass
class Scenario:
    """What the analysis chose and why (printed, and stored in summary.json)."""

    t0_s: int
    scale: float
    expected_carbon_changes: float  # in the window, by expected_changes
    expected_link_changes: float
    local_share: float  # expected share of the window's time with the link below the threshold
    threshold_mbps: tuple[float, float]  # B* range within the window
    thresholds: np.ndarray = field(repr=False)  # B* per hour of the window


def plan_scenario(
    cm: Any,
    dev: Any,
    srv: Any,
    bw: Any,
    hours: int,
    steps: int,
    scale: float | None,
    passes: int = 3,
    bandwidth_factor: float = 1.0,
) -> Scenario:
    """The replay window (and, when scale is None, the link's scale) in which both carbon
    and the link move the decision most: the smaller of the two expected counts of changes
    (expected_changes) is maximised, from the cost model alone, without trial runs.

    bandwidth_factor: mode A decides on a conformal lower bound of the link, the estimate
    times this factor (< 1; the table's `bandwidth_log_lower`), so it offloads above
    B*/factor: the thresholds are taken at that level."""
    n = min(len(dev), len(srv))
    if not 1 <= hours <= n:
        raise CarbonCPError(f"--hours {hours}: the shipped slices hold 1..{n} hours")
    th = offload_thresholds(cm, dev.gco2_per_kwh[:n], srv.gco2_per_kwh[:n]) / bandwidth_factor
    scales = [scale] if scale is not None else list(np.geomspace(0.01, 100.0, 161))
    dt_bw = passes * bw.duration_s / steps
    best: tuple[float, float, int, float, float] | None = None
    for s in scales:
        carbon, link = expected_changes(
            th, link_cdf(bw, s), link_crossing(bw, s, dt_bw), hours, steps
        )
        score = np.minimum(carbon, link) + 1e-3 * (carbon + link)
        i = int(np.argmax(score))
        if best is None or score[i] > best[0] + 1e-9:
            best = (float(score[i]), float(s), i, float(carbon[i]), float(link[i]))
    assert best is not None
    _, s, i, exp_c, exp_l = best
    win = th[i : i + hours]
    F = link_cdf(bw, s)
    return Scenario(
        t0_s=int(dev.t_s[i]),
        scale=float(s) if scale is not None else round(float(s), 3),
        expected_carbon_changes=exp_c,
        expected_link_changes=exp_l,
        local_share=float(np.mean(F(win))),
        threshold_mbps=(float(win.min()), float(win.max())),
        thresholds=win,
    )


@dataclass
class DemoPlan:
    """What a run replays: the bundle and its cost model, the traces, the chosen scenario."""

    bundle_path: Path
    bundle: Any
    cost_model: Any
    device_carbon: Any  # CarbonTrace of the device's zone
    server_carbon: Any
    bandwidth: Any  # the shipped (unscaled) BandwidthTrace
    scale: float  # the link's rates are x this
    bandwidth_factor: float  # mode A's conformal factor on the link estimate (1 without a table)
    scenario: Scenario

    @property
    def P(self) -> int:
        return int(self.bundle.last)


def plan_demo(cfg: DemoConfig, bundle_path: Path, scale: float) -> DemoPlan:
    """Load the bundle and the shipped traces, choose the window with plan_scenario and say
    what the run will replay.

    Raises:
        CarbonCPError: the bundle has no profile, or `cfg.hours` exceeds the shipped slices.
    """
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.decision.policy import TablePolicy
    from carboncp.runtime.device.wiring import optional_cost_model
    from carboncp.runtime.signals.traces import (
        load_bandwidth_trace,
        load_carbon_csv,
        shipped_bandwidth_path,
        shipped_carbon_path,
    )

    bundle = Bundle.load(bundle_path)
    cm = optional_cost_model(bundle)
    if cm is None:
        raise CarbonCPError(f"{bundle_path}: no profile section; rebuild with --rebuild")
    dev_tr = load_carbon_csv(shipped_carbon_path(cfg.device_zone))
    srv_tr = load_carbon_csv(shipped_carbon_path(cfg.server_zone))
    bw_tr = load_bandwidth_trace(shipped_bandwidth_path(cfg.bandwidth))
    bw_factor = TablePolicy.from_bundle(bundle).bw_factor if bundle.section("table") else 1.0
    scenario = plan_scenario(
        cm, dev_tr, srv_tr, bw_tr, cfg.hours, cfg.steps, scale, cfg.bandwidth_passes, bw_factor
    )
    plan = DemoPlan(bundle_path, bundle, cm, dev_tr, srv_tr, bw_tr, scale, bw_factor, scenario)
    _say_plan(plan, cfg)
    return plan


def _say_plan(plan: DemoPlan, cfg: DemoConfig) -> None:
    sc, bw, scale = plan.scenario, plan.bandwidth, plan.scale
    lo = float(np.min(bw.mbps)) * scale
    hi = float(np.max(bw.mbps)) * scale
    say(
        f"[demo] emulating a {plan.cost_model.profile.device} device (its profile's costs) on a "
        f"link paced to {cfg.bandwidth} x {scale:g} (a real 3G trace, scaled: {lo:.1f} to "
        f"{hi:.0f} Mbit/s); carbon {cfg.device_zone} (device) and {cfg.server_zone} (server), "
        f"{cfg.hours} h from {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(sc.t0_s))} in "
        f"{cfg.steps} steps; the {bw.duration_s:.0f} s link trace is walked "
        f"{cfg.bandwidth_passes}x over the window",
        cfg,
    )
    say(
        f"[demo] window chosen with the cost model: carbon moves mode A's offload threshold "
        f"(B*/{plan.bandwidth_factor:.2f}) between {sc.threshold_mbps[0]:.1f} and "
        f"{sc.threshold_mbps[1]:.1f} Mbit/s "
        f"inside the link's range; expected changes: ~{sc.expected_carbon_changes:.1f} "
        f"driven by carbon, ~{sc.expected_link_changes:.1f} by the link; mode A expected "
        f"to run locally ~{sc.local_share:.0%} of the time",
        cfg,
    )
