"""A replay over a MIXTURE of contexts (docs/TRACES.md, "Mixture"): the default build's data.

A bundle built on one link and one pair of grids decides well only there (issue 9). A
mixture is a list of components, each one (device carbon trace, server carbon trace,
bandwidth trace, bandwidth scale), replayed with `build_replay` (its own seed, so its own
loads, battery, RTT and link offsets) and cut to a controlled number of events, then
concatenated into one `Replay`.

Without traces, `carboncp build` uses `default_components()`: every shipped bandwidth trace
at x1, x6, x30 and x150 (3G/LTE at x1, LTE/WiFi at x6, WiFi at x30, 5G-like at x150: from
under 1 Mbit/s to several hundred, outages kept, since a scaled zero is still zero), and
every ordered pair of shipped carbon zones on the device and the server side (same zone
included, both directions), over the slices' whole eight weeks. The shipped traces have
no outages (their lowest rate is about 0.01 Mbit/s); real links have them (the 5G traces
measured for issue 9 dropped below 3.5 Mbit/s in 10% of samples, and the offload deadline
exists for them), so the default components overlay OUTAGES on the looped trace: a seeded
two-state process sets `outage_share` (2%) of the trace's rows to 0 Mbit/s in runs of 3
rows on average. Traces a user gives are replayed as measured (no overlay).

Splits stay chronological WITHIN each component (its first 50% trains, the next 25%
calibrates, the last 25% tests). The concatenation orders each split's events by their
relative position in their component's period (then by component), so "the end of the
training period" (Q_θ's early stopping, the build's held-out selection) is the end of every
component's training period at once, and no calibration or test event of any component
precedes a training event in the order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.decision.costs import CostModel, Costs
from carboncp.runtime.signals.traces import (
    HOUR_S,
    BandwidthTrace,
    CarbonTrace,
    load_bandwidth_trace,
    load_carbon_csv,
    shipped_bandwidth_names,
    shipped_bandwidth_path,
    shipped_carbon_path,
    shipped_carbon_zones,
)
from carboncp.tooling.contexts import SPLITS, Replay, ReplayProcesses, build_replay

# x1: the traces as measured (3G/LTE, 0.1-6 Mbit/s); x6: LTE/WiFi-like; x30: WiFi-like;
# x150: 5G-like (a few hundred Mbit/s at the traces' peaks).
DEFAULT_SCALES: tuple[float, ...] = (1.0, 6.0, 30.0, 150.0)
# Events of a default mixture in total (216 components: 300 each). Q_θ trains on half of
# them; the whole build stays a few minutes on 2 cores.
DEFAULT_MIXTURE_EVENTS = 64_800
# Share of a default component's trace rows overlaid with outages, and their mean run length.
DEFAULT_OUTAGE_SHARE = 0.02
OUTAGE_MEAN_ROWS = 3.0
# Standard-time UTC offsets of the shipped zones, for the device's and the server's local
# time (diurnal load, charging window); other zones: UTC.
ZONE_UTC_OFFSET_H = {"DE": 1.0, "DE-LU": 1.0, "GB": 0.0, "US-CAL-CISO": -8.0}


@dataclass(frozen=True)
class Component:
    """One context family of a mixture: two carbon traces and a link at a scale."""

    device_carbon: Path
    server_carbon: Path
    bandwidth: Path
    bandwidth_scale: float = 1.0
    outage_share: float = 0.0  # rows of the trace set to 0 Mbit/s (module docstring)

    def describe(self) -> str:
        out = f", {self.outage_share:.0%} outages" if self.outage_share else ""
        return (
            f"{self.device_carbon.name} / {self.server_carbon.name} / "
            f"{self.bandwidth.name} x{self.bandwidth_scale:g}{out}"
        )


def parse_scales(text: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """'1,6,30' -> (1.0, 6.0, 30.0); ValueError naming the bad value."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            v = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"bandwidth scale {item!r} is not a number") from None
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"bandwidth scale {item!r} must be a finite number > 0")
        out.append(v)
    if not out:
        raise ValueError("give at least one bandwidth scale")
    return tuple(dict.fromkeys(out))


def _paths(given: str | Path | Sequence[str | Path] | None) -> list[Path] | None:
    if given is None:
        return None
    if isinstance(given, (str, Path)):
        return [Path(given)]
    out = [Path(g) for g in given]
    return list(dict.fromkeys(out)) or None


def components(
    device_carbon: str | Path | Sequence[str | Path] | None = None,
    server_carbon: str | Path | Sequence[str | Path] | None = None,
    bandwidth: str | Path | Sequence[str | Path] | None = None,
    bandwidth_scales: Sequence[float] | None = None,
) -> list[Component]:
    """Every combination of the given traces (device x server x bandwidth x scale).

    What is not given comes from the shipped data: every shipped zone on that side, every
    shipped bandwidth trace. Scales default to `DEFAULT_SCALES` for the shipped traces and to
    x1 for traces the user gives (they are taken as the link the device will see); the
    shipped traces get the outage overlay (`DEFAULT_OUTAGE_SHARE`), the user's do not.
    """
    dev = _paths(device_carbon) or [shipped_carbon_path(z) for z in shipped_carbon_zones()]
    srv = _paths(server_carbon) or [shipped_carbon_path(z) for z in shipped_carbon_zones()]
    bws = _paths(bandwidth)
    scales = tuple(bandwidth_scales) if bandwidth_scales else None
    outages = 0.0
    if bws is None:
        bws = [shipped_bandwidth_path(n) for n in shipped_bandwidth_names()]
        scales = scales or DEFAULT_SCALES
        outages = DEFAULT_OUTAGE_SHARE
    scales = scales or (1.0,)
    return [
        Component(d, s, b, float(k), outages) for d in dev for s in srv for b in bws for k in scales
    ]


def default_components() -> list[Component]:
    """The default build's mixture: every shipped zone pair x every shipped link x scales."""
    return components()


def scaled(trace: BandwidthTrace, scale: float) -> BandwidthTrace:
    """The trace with every rate x scale (outages stay outages)."""
    if scale == 1.0:
        return trace
    return replace(trace, name=f"{trace.name} x{scale:g}", mbps=trace.mbps * scale)


def with_outages(trace: BandwidthTrace, share: float, seed: int) -> BandwidthTrace:
    """The trace with about `share` of its rows set to 0 Mbit/s, in runs of
    `OUTAGE_MEAN_ROWS` rows on average (a seeded two-state Markov chain over the rows)."""
    if share <= 0:
        return trace
    rng = np.random.default_rng(seed)
    leave = 1.0 / OUTAGE_MEAN_ROWS
    enter = share * leave / (1.0 - share)
    u = rng.random(len(trace.mbps))
    down = np.empty(len(u), dtype=bool)
    state = bool(rng.random() < share)
    for i, x in enumerate(u.tolist()):  # a few hundred rows per trace
        state = (x >= leave) if state else (x < enter)
        down[i] = state
    return replace(trace, mbps=np.where(down, 0.0, trace.mbps))


def _processes(dev: CarbonTrace, srv: CarbonTrace, base: ReplayProcesses) -> ReplayProcesses:
    return replace(
        base,
        device_utc_offset_h=ZONE_UTC_OFFSET_H.get(dev.zone, base.device_utc_offset_h),
        server_utc_offset_h=ZONE_UTC_OFFSET_H.get(srv.zone, base.server_utc_offset_h),
    )


def make_mixture_replay(
    cm: CostModel,
    comps: Sequence[Component],
    *,
    events_per_hour: int = 12,
    days: float | None = None,
    seed: int = 0,
    events_per_component: int | None = None,
    total_events: int = DEFAULT_MIXTURE_EVENTS,
    processes: ReplayProcesses | None = None,
) -> Replay:
    """Replay every component and concatenate them (module docstring).

    Each component covers its carbon traces' common period (the first `days` of it) with
    `events_per_component` events (default: `total_events` shared evenly), drawn as
    `events_per_hour` per hour or fewer (at least one per hour), and cut at random to that
    number, in time order. A single component with `events_per_component=None` is replayed
    whole, exactly as `make_replay` does.
    """
    if not comps:
        raise ValueError("a mixture needs at least one component")
    if events_per_component is not None and events_per_component < 10:
        raise ValueError("events_per_component must be >= 10")
    base = ReplayProcesses() if processes is None else processes
    carbon: dict[Path, CarbonTrace] = {}
    links: dict[Path, BandwidthTrace] = {}
    single = len(comps) == 1 and events_per_component is None
    per = events_per_component or math.ceil(total_events / len(comps))
    parts: list[Replay] = []
    for i, c in enumerate(comps):
        dev = carbon.setdefault(c.device_carbon, load_carbon_csv(c.device_carbon))
        srv = carbon.setdefault(c.server_carbon, load_carbon_csv(c.server_carbon))
        bw = links.setdefault(c.bandwidth, load_bandwidth_trace(c.bandwidth))
        start = max(dev.start_s, srv.start_s)
        end = None if days is None else start + days * 86400
        if single:
            eph, pr = events_per_hour, base
        else:
            hours = max(1, (min(dev.end_s, srv.end_s) - start) // HOUR_S)
            if end is not None:
                hours = max(1, min(hours, int((end - start) // HOUR_S)))
            eph = min(events_per_hour, max(1, math.ceil(per / hours)))
            pr = _processes(dev, srv, base)
        sub_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        link = with_outages(scaled(bw, c.bandwidth_scale), c.outage_share, sub_seed)
        rp = build_replay(
            dev,
            srv,
            link,
            cm,
            events_per_hour=eph,
            start_s=start,
            end_s=end,
            seed=seed if single else sub_seed,
            processes=pr,
        )
        if not single and len(rp) > per:
            keep = np.sort(np.random.default_rng(sub_seed).choice(len(rp), per, replace=False))
            rp = take_events(rp, keep)
        rp.meta["bandwidth_scale"] = c.bandwidth_scale
        parts.append(rp)
    if single:
        rp = parts[0]
        rp.meta["mixture"] = _mixture_meta(comps, parts, None)
        rp.component = np.zeros(len(rp), dtype=np.int64)
        return rp
    return concatenate(parts, _mixture_meta(comps, parts, per), seed)


def take_events(rp: Replay, keep: np.ndarray) -> Replay:
    """The replay restricted to events `keep` (in time order), re-split chronologically."""
    n = len(keep)
    cuts = np.round(np.cumsum(rp.meta["split"])[:2] * n).astype(int)
    splits = dict(zip(SPLITS, np.split(np.arange(n), cuts), strict=True))
    meta = {**rp.meta, "n_events": n, "subsampled_from": len(rp)}
    pos = None if rp.bandwidth_pos_s is None else rp.bandwidth_pos_s[keep]
    return Replay(
        rp.t_s[keep],
        rp.x_true[keep],
        rp.x_seen[keep],
        rp.tx_mbps[keep],
        rp.costs.take(keep),
        rp.label[keep],
        splits,
        meta,
        pos,
    )


def concatenate(parts: Sequence[Replay], mixture: dict[str, Any], seed: int) -> Replay:
    """One replay of all `parts`: per split, events ordered by their relative position in
    their own component's period, then by component (module docstring)."""
    keys: list[np.ndarray] = []
    for ci, rp in enumerate(parts):
        t0, t1 = rp.meta["period_s"]
        frac = (rp.t_s - t0) / max(t1 - t0, 1)
        rank = np.empty(len(rp), dtype=np.int64)
        for si, name in enumerate(SPLITS):
            rank[rp.splits[name]] = si
        keys.append(np.column_stack([rank, frac, np.full(len(rp), ci), np.arange(len(rp))]))
    k = np.concatenate(keys)
    order = np.lexsort((k[:, 2], k[:, 1], k[:, 0]))
    comp = k[order, 2].astype(np.int64)
    local = k[order, 3].astype(np.int64)

    def cat(get: Any) -> np.ndarray:
        arrays = [get(rp) for rp in parts]
        offsets = np.cumsum([0] + [len(rp) for rp in parts])[:-1]
        return np.concatenate(arrays)[offsets[comp] + local]

    ranks = k[order, 0].astype(np.int64)
    splits = {name: np.flatnonzero(ranks == si) for si, name in enumerate(SPLITS)}
    costs = Costs(**{f.name: cat(lambda rp, f=f: getattr(rp.costs, f.name)) for f in fields(Costs)})
    first = parts[0].meta
    meta = {
        "n_events": len(order),
        "seed": seed,
        "split": first["split"],
        "fields": first["fields"],
        "looping": first["looping"],
        "processes": first["processes"],
        "order": "per split, relative position in the component's period, then component",
        "mixture": mixture,
    }
    pos = (
        None
        if any(rp.bandwidth_pos_s is None for rp in parts)
        else cat(lambda rp: rp.bandwidth_pos_s)
    )
    out = Replay(
        cat(lambda rp: rp.t_s),
        cat(lambda rp: rp.x_true),
        cat(lambda rp: rp.x_seen),
        cat(lambda rp: rp.tx_mbps),
        costs,
        cat(lambda rp: rp.label),
        splits,
        meta,
        pos,
    )
    out.component = comp
    return out


def _quantiles(v: np.ndarray) -> dict[str, float]:
    if v.size == 0:
        return {}
    q = np.quantile(v, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {
        k: round(float(x), 4) for k, x in zip(("min", "p5", "median", "p95", "max"), q, strict=True)
    }


def _mixture_meta(
    comps: Sequence[Component], parts: Sequence[Replay], per: int | None
) -> dict[str, Any]:
    """What the bundle records: every component, its events and the ranges it covers."""
    rows = []
    for c, rp in zip(comps, parts, strict=True):
        rows.append(
            {
                "device_carbon": str(c.device_carbon),
                "device_zone": rp.meta["device_zone"],
                "server_carbon": str(c.server_carbon),
                "server_zone": rp.meta["server_zone"],
                "bandwidth": str(c.bandwidth),
                "bandwidth_scale": c.bandwidth_scale,
                "outage_overlay_share": c.outage_share,
                "period_s": rp.meta["period_s"],
                "events_per_hour": rp.meta["events_per_hour"],
                "n_events": len(rp),
                "n_train": len(rp.splits["train"]),
                "n_cal": len(rp.splits["cal"]),
                "n_test": len(rp.splits["test"]),
                "bandwidth_mbps": _quantiles(rp.tx_mbps),
                "outage_share": round(float(np.mean(rp.tx_mbps <= 0)), 4),
                "seed": rp.meta["seed"],
            }
        )
    return {
        "n_components": len(comps),
        "events_per_component": per,
        "components": rows,
    }


def summary(mixture: dict[str, Any]) -> dict[str, Any]:
    """The short form (zones, links, scales, events) for logs, `evaluate` and `inspect`."""
    comps = mixture.get("components", [])
    return {
        "n_components": len(comps),
        "n_events": int(sum(c["n_events"] for c in comps)),
        "device_zones": sorted({c["device_zone"] for c in comps}),
        "server_zones": sorted({c["server_zone"] for c in comps}),
        "bandwidth_traces": sorted({Path(c["bandwidth"]).name for c in comps}),
        "bandwidth_scales": sorted({c["bandwidth_scale"] for c in comps}),
    }
