"""The scenario, chosen with the cost model: where carbon puts the offload threshold B*, how
often carbon and the link are expected to move the decision across it, how much carbon the
cost model's choice saves against local-only and server-only, and the replay window (and
link scale) where it saves most against both while both causes move the decision;
`plan_demo` gathers what a run replays."""

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
# A window qualifies when carbon and the link are each expected to change the decision at
# least this many times over its steps (expected_changes); among those, the one where the
# cost model's choice saves most against the better baseline is replayed.
MIN_EXPECTED_CHANGES = 4.0
_LINK_QUANTILES = 32  # rates standing for the link's distribution in expected_hourly_carbon


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


def link_quantiles(bw: Any, scale: float, n: int = _LINK_QUANTILES) -> np.ndarray:
    """n rates standing for the (scaled) trace's time-weighted distribution: its quantiles at
    levels (k + 1/2)/n."""
    dur = np.diff(bw.t_s, prepend=bw.t_s[0])
    order = np.argsort(bw.mbps)
    v, w = bw.mbps[order] * scale, np.cumsum(dur[order]) / max(dur.sum(), 1e-12)
    return v[np.minimum(np.searchsorted(w, (np.arange(n) + 0.5) / n), len(v) - 1)]


def expected_hourly_carbon(
    cm: Any, dev_gco2: np.ndarray, srv_gco2: np.ndarray, rates: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per hour, the carbon (g) of one inference averaged over the link's rates: local-only
    (p = P), server-only (p = 0, fallbacks included) and the cost model's own choice at the
    rate (the oracle: what mode A would do knowing the link; the planning's bound)."""
    n, g = len(dev_gco2), len(rates)
    out = np.empty((3, n))
    for i0 in range(0, n, 256):
        d, s = dev_gco2[i0 : i0 + 256], srv_gco2[i0 : i0 + 256]
        x = np.zeros((len(d) * g, 7))
        x[:, 0] = np.tile(rates, len(d))
        x[:, 1] = ANALYSIS_RTT_MS
        x[:, 4], x[:, 5], x[:, 6] = np.repeat(d, g), np.repeat(s, g), 100.0
        c = cm.evaluate(x)
        best = c.carbon_g[np.arange(len(x)), cm.oracle(c)]
        for k, col in enumerate((c.carbon_g[:, cm.P], c.carbon_g[:, 0], best)):
            out[k, i0 : i0 + len(d)] = col.reshape(len(d), g).mean(axis=1)
    return out[0], out[1], out[2]


def expected_savings(
    hourly: tuple[np.ndarray, np.ndarray, np.ndarray], hours: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per window start: the expected share of carbon the cost model's choice saves over the
    demo's steps against (local-only, server-only)."""
    local, server, best = hourly
    off = step_hours(hours, steps)
    n_win = max(len(local) - hours + 1, 1)
    idx = np.minimum(np.arange(n_win)[:, None] + off[None, :], len(local) - 1)
    b = best[idx].sum(axis=1)
    return 1.0 - b / local[idx].sum(axis=1), 1.0 - b / server[idx].sum(axis=1)


@dataclass
class Scenario:
    """What the analysis chose and why (printed, and stored in summary.json)."""

    t0_s: int
    scale: float
    expected_carbon_changes: float  # in the window, by expected_changes
    expected_link_changes: float
    local_share: float  # expected share of the window's time with the link below the threshold
    # the cost model's choice (knowing the link) against each baseline, by expected_savings
    expected_saving_vs_local: float
    expected_saving_vs_server: float
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
    """The replay window (and, when scale is None, the link's scale), from the cost model
    alone, without trial runs: among the windows where carbon and the link are each expected
    to change the decision at least MIN_EXPECTED_CHANGES times (expected_changes), the one
    where the cost model's choice is expected to save the most carbon against the better of
    local-only and server-only (expected_savings). When no window qualifies, the one whose
    smaller expected count of changes is largest.

    bandwidth_factor: mode A decides on the link estimate times about this factor (its
    typical bandwidth multiplier), so it offloads above B*/factor: the thresholds whose
    crossings are counted are taken at that level."""
    n = min(len(dev), len(srv))
    if not 1 <= hours <= n:
        raise CarbonCPError(f"--hours {hours}: the shipped slices hold 1..{n} hours")
    d_g, s_g = dev.gco2_per_kwh[:n], srv.gco2_per_kwh[:n]
    th = offload_thresholds(cm, d_g, s_g) / bandwidth_factor
    scales = [scale] if scale is not None else list(np.geomspace(0.01, 100.0, 161))
    dt_bw = passes * bw.duration_s / steps
    best: tuple[float, float, int, tuple[float, ...]] | None = None
    for s in scales:
        carbon, link = expected_changes(
            th, link_cdf(bw, s), link_crossing(bw, s, dt_bw), hours, steps
        )
        sv_l, sv_s = expected_savings(
            expected_hourly_carbon(cm, d_g, s_g, link_quantiles(bw, s)), hours, steps
        )
        both = np.minimum(carbon, link)
        # qualifying windows score their saving (in [-inf, 1]) plus 10: above every
        # non-qualifying one, which scores its smaller count of changes, scaled into [0, 1)
        score = np.where(
            both >= MIN_EXPECTED_CHANGES,
            10.0 + np.maximum(np.minimum(sv_l, sv_s), -9.0),
            both / (both.max() + 1.0) + 1e-3 * (carbon + link) / (carbon + link + 1.0).max(),
        )
        i = int(np.argmax(score))
        if best is None or score[i] > best[0] + 1e-9:
            figures = (float(carbon[i]), float(link[i]), float(sv_l[i]), float(sv_s[i]))
            best = (float(score[i]), float(s), i, figures)
    assert best is not None
    _, s, i, (exp_c, exp_l, sv_local, sv_server) = best
    win = th[i : i + hours]
    F = link_cdf(bw, s)
    return Scenario(
        t0_s=int(dev.t_s[i]),
        scale=float(s) if scale is not None else round(float(s), 3),
        expected_carbon_changes=exp_c,
        expected_link_changes=exp_l,
        local_share=float(np.mean(F(win))),
        expected_saving_vs_local=sv_local,
        expected_saving_vs_server=sv_server,
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
    bw_factor = mode_a_factor(TablePolicy.from_bundle(bundle)) if bundle.section("table") else 1.0
    scenario = plan_scenario(
        cm, dev_tr, srv_tr, bw_tr, cfg.hours, cfg.steps, scale, cfg.bandwidth_passes, bw_factor
    )
    plan = DemoPlan(bundle_path, bundle, cm, dev_tr, srv_tr, bw_tr, scale, bw_factor, scenario)
    _say_plan(plan, cfg)
    return plan


def mode_a_factor(policy: Any) -> float:
    """The factor mode A's choice applies to the link estimate, typically: with the expected
    rule (J averaged over the estimate times exp(r_k), r_k the residual quantiles) the
    median exp(r_k); with the single-quantile rule its pessimistic factor."""
    if getattr(policy, "bandwidth_rule", "lower") == "expected":
        return float(np.exp(np.median(policy.residuals.quantiles)))
    return float(policy.bw_factor)


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
        f"{sc.threshold_mbps[1]:.1f} Mbit/s in the window; expected changes: "
        f"~{sc.expected_carbon_changes:.1f} driven by carbon, ~{sc.expected_link_changes:.1f} by "
        f"the link; knowing the link, the cost model's choice would save "
        f"{sc.expected_saving_vs_local:.0%} of local-only's carbon and "
        f"{sc.expected_saving_vs_server:.0%} of server-only's; mode A expected to run locally "
        f"~{sc.local_share:.0%} of the time",
        cfg,
    )
