"""The run's summary: per policy, the emulated device's carbon, latency and battery, SLO
violations, coverage of the oracle, decision changes by cause and probe costs; the headline
(mode A's carbon saving against local-only and server-only, its SLO violations, its regret
against the causal reference, and the latency and battery it traded) in summary.json; the
headline, table and explanations printed at the end."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.device.loop import J_PER_KWH
from carboncp.tooling.demo.attribution import CAUSES
from carboncp.tooling.demo.config import DemoConfig
from carboncp.tooling.demo.scenario import DemoPlan
from carboncp.tooling.demo.session import TABLE_MODES, SessionResult


def make_summary(
    session: SessionResult, plan: DemoPlan, cfg: DemoConfig, wall_s: float
) -> dict[str, Any]:
    """summarise() of the steps, with the scenario, the probes' costs, the config, the window
    and the broker: what summary.json holds."""
    sc = plan.scenario
    summary = summarise(session.steps, cfg, plan.cost_model, plan.P)
    summary["scale"] = plan.scale
    ob = plan.cost_model.objective
    summary["objective"] = {
        "w_carbon": ob.w_carbon,
        "w_latency": ob.w_latency,
        "w_battery": ob.w_battery,
        "battery_protect_below_pct": ob.battery_protect_below_pct,
        "slo_ms": ob.slo_ms,
    }
    summary["device"] = plan.cost_model.profile.device
    summary["scenario"] = {
        "expected_carbon_changes": sc.expected_carbon_changes,
        "expected_link_changes": sc.expected_link_changes,
        "expected_saving_vs_local": sc.expected_saving_vs_local,
        "expected_saving_vs_server": sc.expected_saving_vs_server,
        "bandwidth_factor": plan.bandwidth_factor,
        "local_share": sc.local_share,
        "threshold_mbps": list(sc.threshold_mbps),
    }
    for name, probes in session.probes.items():
        summary["policies"][name]["probes"] = probes
    summary["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    summary["window_start_utc"] = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(sc.t0_s))
    summary["broker"] = session.broker_kind
    summary["wall_s"] = wall_s
    return summary


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, default=float) + "\n")


def summarise(steps: list[dict[str, Any]], cfg: DemoConfig, cm: Any, P: int) -> dict[str, Any]:
    """Per policy: emulated-Pi carbon, latency, battery, SLO violations, coverage of the oracle."""
    res: dict[str, Any] = {"policies": {}}
    local_carbon = None
    fixed = getattr(cm, "fixed_id", None)
    for name in cfg.policies:
        recs = [s[name] for s in steps]
        carbon = np.array([r.model["carbon_g"] for r in recs])
        # the link probes' part of it (the device charges a probe to the inference it preceded,
        # at the device's intensity: loop._model)
        i_d = [r.realised["device_gco2_per_kwh"] if fixed is None else fixed for r in recs]
        probe_g = np.array([r.model["probe_energy_j"] for r in recs]) * np.array(i_d) / J_PER_KWH
        lat = np.array([r.model["latency_ms"] for r in recs])
        batt = np.array([r.model["battery_pct"] for r in recs])
        rows = np.array([[r.realised[f] for f in _FIELDS] for r in recs], dtype=np.float64)
        true_bw = np.array([s["true_mbps"] for s in steps])
        oracle = cm.oracle(cm.evaluate(rows, true_bw))
        in_set = np.array([o in r.candidates for o, r in zip(oracle, recs, strict=True)])
        parts = np.array([r.partition for r in recs])
        res["policies"][name] = {
            "inferences": len(recs),
            "offloaded_share": float(np.mean([r.offloaded for r in recs])),
            "fallbacks": int(sum(bool(r.fallbacks) for r in recs)),
            "partition_counts": np.bincount(parts, minlength=P + 1).tolist(),
            "decision_changes": int(np.sum(parts[1:] != parts[:-1])),
            "probes_before": int(sum(r.probe is not None for r in recs)),
            # due, but refused by the probe gate (worth less than its energy)
            "probes_skipped": int(sum(r.probe_skipped is not None for r in recs)),
            "changes_by": _changes_by(steps, name, parts),
            "carbon_mg": float(carbon.sum() * 1000.0),
            "probe_carbon_mg": float(probe_g.sum() * 1000.0),
            "inference_carbon_mg": float((carbon - probe_g).sum() * 1000.0),
            "latency_ms_mean": float(lat.mean()),
            "latency_ms_p95": float(np.percentile(lat, 95)),
            "slo_violation_share": float(np.mean(lat > cm.slo)) if cm.slo else 0.0,
            "battery_pct_used": float(batt.sum()),
            "oracle_in_set_share": float(in_set.mean()),
            "mean_set_size": float(np.mean([len(r.candidates) for r in recs])),
            "host_latency_ms_mean": float(np.mean([r.latency_ms for r in recs])),
        }
        if name == "local":
            local_carbon = float(carbon.sum() * 1000.0)
    # Where the cost model's choice flips from local to offloading, at the window's carbon extremes
    seen = [s[cfg.policies[0]].seen for s in steps]
    ratio = np.array([c["server_gco2_per_kwh"] / max(c["device_gco2_per_kwh"], 1.0) for c in seen])
    grid = np.round(np.arange(0.5, 100.0, 0.25), 2)
    res["offload_threshold_mbps"] = {}
    for label, i in (
        ("server_cleanest", int(np.argmin(ratio))),
        ("server_dirtiest", int(np.argmax(ratio))),
    ):
        base = [seen[i][f] for f in _FIELDS]
        x = np.array([[b, *base[1:]] for b in grid], dtype=np.float64)
        x[:, 1], x[:, 2], x[:, 3], x[:, 6] = 5.0, 0.0, 0.0, 100.0
        off = np.flatnonzero(cm.oracle(cm.evaluate(x)) != P)
        res["offload_threshold_mbps"][label] = {
            "mbps": float(grid[off[0]]) if len(off) else None,
            "device_gco2_per_kwh": base[4],
            "server_gco2_per_kwh": base[5],
        }
    server_carbon = res["policies"].get("server", {}).get("carbon_mg")
    for v in res["policies"].values():
        v["carbon_vs_local"] = v["carbon_mg"] / local_carbon if local_carbon else math.nan
        v["carbon_vs_server"] = v["carbon_mg"] / server_carbon if server_carbon else math.nan
    first = cfg.policies[0]
    if first in TABLE_MODES:
        res["references"] = references(steps, first, cm)
        res["headline"] = headline(res, first, cfg.hours / cfg.steps)
    return res


def references(steps: list[dict[str, Any]], name: str, cm: Any) -> dict[str, Any]:
    """Table policy `name` against the causal reference and the oracle, as `carboncp evaluate`
    measures them (docs/METHOD.md §4, §9; tooling/baselines.causal_best, metrics.add_regrets).

    Every partition is priced by the cost model on each step's realised context (its true
    link rate), as the records price the partition run; the causal reference takes, per table cell of the context the device saw
    (the cell it decided in), the partition with the lowest mean realised J over the run's
    steps in that cell; the oracle the lowest J at each step's true context. The policy's own
    partitions are priced the same way (probes excluded), so regret compares choices only.
    Regret (%) = 100 (policy - reference) / reference, on carbon and on J."""
    recs = [s[name] for s in steps]
    rows = np.array([[r.realised[f] for f in _FIELDS] for r in recs], dtype=np.float64)
    costs = cm.evaluate(rows)  # at the realised link rate, as the records price it
    n = len(recs)
    idx = np.arange(n)
    chosen = np.array([r.partition for r in recs])
    cells = np.array([-1 if r.cell is None else int(r.cell) for r in recs])
    causal = np.empty(n, dtype=np.int64)
    for c in np.unique(cells):
        m = cells == c
        causal[m] = int(np.argmin(costs.objective[m].mean(axis=0)))
    oracle = cm.oracle(costs)
    out: dict[str, Any] = {"cells": len(np.unique(cells)), "steps": n}
    for label, choice in (("policy", chosen), ("causal_best", causal), ("oracle", oracle)):
        out[label] = {
            "carbon_mg": float(costs.carbon_g[idx, choice].sum() * 1000.0),
            "objective_j": float(costs.objective[idx, choice].sum()),
            "slo_violation_share": (
                float(np.mean(costs.latency_ms[idx, choice] > cm.slo)) if cm.slo else 0.0
            ),
        }
    pol = out["policy"]
    for ref in ("causal_best", "oracle"):
        suffix = "" if ref == "causal_best" else "_oracle"
        out[f"regret{suffix}_pct"] = _pct(pol["carbon_mg"], out[ref]["carbon_mg"])
        out[f"j_regret{suffix}_pct"] = _pct(pol["objective_j"], out[ref]["objective_j"])
    return out


def headline(res: dict[str, Any], name: str, step_hours: float) -> dict[str, Any]:
    """What the run shows for table policy `name`, from the records: its carbon saving (%)
    against local-only and server-only, on the inferences' carbon (the records' modelled
    carbon less their link probes') and with the probes counted in; its SLO violations; its
    regret against the causal reference (`references`); what the objective traded: mean
    latency and battery against each baseline.

    The probes are shown apart because the demo's steps are `step_hours` emulated hours
    apart: a probe is due before every decision, and the probe gate runs one only where knowing
    the link is worth more to that one decision than the probe's energy (docs/METHOD.md §2.1)."""
    pols = res["policies"]
    a = pols[name]
    h: dict[str, Any] = {"policy": name, "slo_violation_share": a["slo_violation_share"]}
    for base in ("local", "server"):
        b = pols.get(base)
        h[f"saving_vs_{base}_pct"] = (
            -_pct(a["inference_carbon_mg"], b["inference_carbon_mg"]) if b else None
        )
        h[f"saving_vs_{base}_with_probes_pct"] = (
            -_pct(a["carbon_mg"], b["carbon_mg"]) if b else None
        )
        h[f"{base}_slo_violation_share"] = b["slo_violation_share"] if b else None
        h[f"{base}_latency_ms_mean"] = b["latency_ms_mean"] if b else None
        h[f"{base}_battery_pct_used"] = b["battery_pct_used"] if b else None
    h["latency_ms_mean"] = a["latency_ms_mean"]
    h["battery_pct_used"] = a["battery_pct_used"]
    h["probes"] = int(a["probes_before"])
    h["probes_skipped"] = int(a.get("probes_skipped", 0))
    h["probe_carbon_mg"] = a["probe_carbon_mg"]
    h["probe_share_pct"] = (
        100.0 * a["probe_carbon_mg"] / a["inference_carbon_mg"]
        if a["inference_carbon_mg"]
        else None
    )
    h["step_hours"] = step_hours
    ref = res["references"]
    h["regret_pct"] = ref["regret_pct"]
    h["j_regret_pct"] = ref["j_regret_pct"]
    loc = pols.get("local")
    orc = ref["oracle"]["carbon_mg"]
    h["oracle_saving_vs_local_pct"] = -_pct(orc, loc["inference_carbon_mg"]) if loc else None
    return h


def _pct(a: float, b: float) -> float:
    return 100.0 * (a - b) / b if b > 0 else math.nan


def _changes_by(steps: list[dict[str, Any]], name: str, parts: np.ndarray) -> dict[str, int]:
    """Decision changes of a table policy by cause (AttributedPolicy); a change the policy did
    not make (a head error forcing local execution) counts as 'fallback'."""
    out = dict.fromkeys(CAUSES, 0)
    if not any(name in s.get("causes", {}) for s in steps):
        return {}
    out["fallback"] = 0
    for k in range(1, len(steps)):
        if parts[k] != parts[k - 1]:
            out[steps[k]["causes"].get(name) or "fallback"] += 1
    return out


_FIELDS = ("bandwidth_mbps", "rtt_ms", "device_load", "server_load", "device_gco2_per_kwh",
           "server_gco2_per_kwh", "battery_pct")  # fmt: skip


def print_summary(summary: dict[str, Any], cfg: DemoConfig) -> None:
    """The table of policies, the changes by cause, the headline, then what the figures mean."""
    _print_table(summary, cfg)
    _print_headline(summary)
    _print_explanations(summary)


def _less_more(pct: float | None) -> str:
    if pct is None or not math.isfinite(pct):
        return "n/a"
    return f"{abs(pct):.1f}% {'less' if pct >= 0 else 'more'}"


def _objective_words(ob: dict[str, Any] | None) -> str:
    if not ob:
        return "the bundle's objective J"
    if not ob.get("w_latency"):
        bp = ob.get("battery_protect_below_pct")
        battery = (
            f"a battery term only below {bp:g}% charge" if bp is not None and ob.get("w_battery")
            else f"battery weight {ob.get('w_battery', 0):g}"
        )  # fmt: skip
        slo = f"within the {ob['slo_ms']:g} ms SLO" if ob.get("slo_ms") else "(no SLO)"
        return f"carbon-first: the least carbon {slo}, {battery}"
    return (
        f"J with weights carbon {ob.get('w_carbon', 0):g}, latency {ob['w_latency']:g}, "
        f"battery {ob.get('w_battery', 0):g}"
    )


def _print_headline(summary: dict[str, Any]) -> None:
    """Mode A's carbon saving against both baselines, its SLO violations, its regret against
    the causal reference and what its objective traded (latency, battery)."""
    h = summary.get("headline")
    if not h:
        return
    name, ref = h["policy"], summary["references"]
    print(f"Headline: CarbonCP mode {name}, objective {_objective_words(summary.get('objective'))}")
    print(
        f"  carbon of the inferences: {_less_more(h['saving_vs_local_pct'])} than local-only and "
        f"{_less_more(h['saving_vs_server_pct'])} than server-only"
    )
    print(
        f"  link probes: {h['probes']} run ({h['probe_carbon_mg']:.3f} mg, "
        f"{h['probe_share_pct'] or 0.0:.1f}% of mode {name}'s inference carbon), "
        f"{h['probes_skipped']} due but skipped by the probe gate: the steps are "
        f"{h['step_hours']:.1f} emulated hours apart, so a probe informs one decision and runs "
        f"only where knowing the link is worth more to it than the probe's energy "
        f"(docs/METHOD.md §2.1); counted in: "
        f"{_less_more(h['saving_vs_local_with_probes_pct'])} than local-only "
        f"and {_less_more(h['saving_vs_server_with_probes_pct'])} than server-only"
    )

    def share(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 100:.1f}%"

    print(
        f"  SLO violations: {share(h['slo_violation_share'])} of inferences "
        f"(local-only {share(h['local_slo_violation_share'])}, "
        f"server-only {share(h['server_slo_violation_share'])})"
    )
    print(
        f"  regret against the causal reference (per table cell the partition with the least "
        f"mean realised J over this run, chosen in hindsight; {ref['cells']} cells): carbon "
        f"{h['regret_pct']:+.1f}%, J {h['j_regret_pct']:+.1f}%; the clairvoyant oracle would "
        f"emit {_less_more(h['oracle_saving_vs_local_pct'])} than local-only"
    )

    def vs(key: str, fmt: str) -> str:
        a, loc, srv = h[key], h[f"local_{key}"], h[f"server_{key}"]
        parts = [format(a, fmt)]
        extra = [f"{n} {format(v, fmt)}" for n, v in (("local-only", loc), ("server-only", srv))
                 if v is not None]  # fmt: skip
        return parts[0] + (f" ({', '.join(extra)})" if extra else "")

    print(
        f"  trade-offs: mean latency {vs('latency_ms_mean', '.0f')} ms; battery used "
        f"{vs('battery_pct_used', '.3f')} % of charge"
    )


def _print_table(summary: dict[str, Any], cfg: DemoConfig) -> None:
    print()
    print(
        f"CarbonCP demo: emulated {summary['device']} device (its profile's costs; this CPU is "
        f"not that device), offload link paced to {cfg.bandwidth} x {summary['scale']:g} (a real "
        f"3G trace, scaled), carbon {cfg.device_zone} (device) -> {cfg.server_zone} (server) "
        f"replayed over MQTT ({summary['broker']}), {cfg.hours} h from "
        f"{summary['window_start_utc']}, random images"
    )
    head = (f"{'policy':<8} {'carbon mg':>9} {'vs local':>8} {'lat ms':>7} {'p95 ms':>7} "
            f"{'SLO viol':>8} {'battery %':>9} {'offload':>7} {'fallbk':>6} {'changes':>7} "
            f"{'coverage':>8} {'set':>4}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, v in summary["policies"].items():
        print(
            f"{name:<8} {v['carbon_mg']:>9.3f} {v['carbon_vs_local'] * 100:>7.1f}% "
            f"{v['latency_ms_mean']:>7.1f} {v['latency_ms_p95']:>7.1f} "
            f"{v['slo_violation_share'] * 100:>7.1f}% {v['battery_pct_used']:>9.4f} "
            f"{v['offloaded_share'] * 100:>6.0f}% {v['fallbacks']:>6d} {v['decision_changes']:>7d} "
            f"{v['oracle_in_set_share'] * 100:>7.1f}% {v['mean_set_size']:>4.1f}"
        )
    for name, v in summary["policies"].items():
        by = v.get("changes_by")
        if by:
            extra = "".join(f", {k} {by[k]}" for k in ("both", "other", "fallback") if by[k])
            print(
                f"{name}: {v['decision_changes']} decision changes: caused by carbon "
                f"{by['carbon']}, by the link {by['link']}{extra}"
            )


def _print_explanations(summary: dict[str, Any]) -> None:
    sc = summary.get("scenario")
    if sc:
        lo, hi = sc["threshold_mbps"]
        f = sc["bandwidth_factor"]
        print(
            f"cost model: the objective prefers offloading to local execution above a link rate "
            f"B* that carbon moves between {lo * f:.1f} and {hi * f:.1f} Mbit/s in this window "
            f"(inf: the server's grid too dirty to offload at any rate); mode A prices the link "
            f"estimate x its residual quantiles (typically x {f:.2f}), so it offloads above about "
            f"{lo:.1f} to {hi:.1f} Mbit/s. Planned (analysis, knowing the link): ~"
            f"{sc['expected_carbon_changes']:.1f} changes by carbon, "
            f"~{sc['expected_link_changes']:.1f} by the link, "
            f"{sc['expected_saving_vs_local']:.0%} saved against local-only and "
            f"{sc['expected_saving_vs_server']:.0%} against server-only"
        )
    print(
        "cause of a change: the same policy, in the same state, re-decides with the previous "
        "step's carbon (current link) and with the previous step's link (current carbon); "
        "whichever undo reverts the change caused it."
    )
    print(
        f"carbon/latency/battery: the {summary['device']} profile's cost of each inference on its "
        "realised context (true link rate, live carbon) and actual outcome, fallbacks and link "
        "probes included (the table's carbon; the headline's first line leaves the probes out); "
        "coverage: share of inferences whose chosen set held the oracle partition."
    )
