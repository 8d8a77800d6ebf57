"""`carboncp build`: export (if needed) -> profile -> replay -> Q_θ (both objectives) ->
selection -> threshold table -> calibration -> bundle sections 'table', 'qnet' and 'build'.

Without trace options it trains and calibrates on the default MIXTURE of the shipped data
(tooling/mixture.py, docs/TRACES.md "Mixture"): every shipped bandwidth trace at x1, x6,
x30 and x150 (3G to 5G-like links, outages included) times every ordered pair of shipped
carbon zones (device side x server side), 300 events each over the slices' eight weeks,
with the replay's loads and battery. Given traces specialise the bundle: several of each
may be given, and every combination (device x server x bandwidth x scale) is a component.
The components are recorded in the bundle's 'build' section (build.json).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.conformal import check_alpha
from carboncp.runtime.errors import BundleError, CarbonCPError, ConfigError
from carboncp.runtime.signals.traces import shipped_bandwidth_path, shipped_carbon_path

# One representative scenario of the shipped data (bench.decision's fallback contexts); the
# default BUILD uses the whole mixture (tooling/mixture.py).
DEFAULT_DEVICE_ZONE = "DE-LU"
DEFAULT_SERVER_ZONE = "GB"
DEFAULT_BANDWIDTH = "norway_bus_1"
BUILD_JSON = "build.json"
TracesArg = str | Path | Sequence[str | Path] | None


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def default_traces() -> tuple[Path, Path, Path]:
    """One shipped scenario (DE-LU device, GB server, norway_bus_1); not the default build's
    data, which is the mixture of every shipped zone pair and link (tooling/mixture.py)."""
    return (
        shipped_carbon_path(DEFAULT_DEVICE_ZONE),
        shipped_carbon_path(DEFAULT_SERVER_ZONE),
        shipped_bandwidth_path(DEFAULT_BANDWIDTH),
    )


def _simulate(table: Any, cm: Any, rp: Any, idx: np.ndarray, alpha: float) -> dict[str, float]:
    """Mode A over the events `idx`: carbon, J, SLO violations, coverage, set size."""
    from carboncp.tooling.replay import run_table_policy

    run = run_table_policy(table, cm, rp.x_seen[idx], rp.label[idx], "A", alpha)
    ch = run["choice"]
    r = np.arange(len(idx))
    lat = rp.costs.latency_ms[idx][r, ch]
    return {
        "carbon_g": float(rp.costs.carbon_g[idx][r, ch].sum()),
        "objective_j": float(rp.costs.objective[idx][r, ch].sum()),
        "slo_violation_rate": float(np.mean(lat > cm.slo)) if cm.slo is not None else 0.0,
        "coverage": float(run["covered"].mean()),
        "mean_set_size": float(run["size"].mean()),
    }


def bandwidth_levels(alpha: float) -> tuple[float, ...]:
    """Candidate levels of mode A's conformal bandwidth lower bound (chosen on held-out data):
    α itself (the most pessimistic), 0.25, and 0.5 (the median residual: about the point
    estimate, corrected for the EWMA's bias)."""
    return tuple(sorted({round(alpha, 6), 0.25, 0.5}))


def select_q(reports: dict[str, dict[str, float]], alpha: float) -> tuple[str, str]:
    """The §9 rule: among objectives whose mode-A SLO-violation rate on the held-out part of
    the training period is <= α + 0.01, the lower carbon; if neither, the fewer violations."""
    ok = [k for k, r in reports.items() if r["slo_violation_rate"] <= alpha + 0.01]
    if ok:
        best = min(ok, key=lambda k: (reports[k]["carbon_g"], reports[k]["objective_j"]))
        why = f"meets the SLO-violation target (<= {alpha + 0.01:.2f}) with the lower carbon"
    else:
        best = min(reports, key=lambda k: reports[k]["slo_violation_rate"])
        why = "neither meets the SLO-violation target; fewer violations"
    return best, why


def train_and_compile(
    bundle_path: str | Path,
    device_carbon: TracesArg = None,
    server_carbon: TracesArg = None,
    bandwidth: TracesArg = None,
    *,
    bandwidth_scales: Sequence[float] | None = None,
    events_per_component: int | None = None,
    alpha: float = 0.1,
    events_per_hour: int = 12,
    days: float | None = None,
    seed: int = 0,
    cell_budget: int | None = None,
    max_epochs: int = 60,
    q_objective: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Replay, train both Q_θ objectives, keep the better, compile + calibrate the table.

    Each trace argument is a path, several paths, or None (every shipped one); every
    combination, at every bandwidth scale, is a component of the mixture
    (`tooling.mixture.components`). One component is replayed whole at `events_per_hour`;
    a mixture gets `events_per_component` events per component (default: 64,800 shared).
    """
    from carboncp.runtime.decision.costs import cost_model_of
    from carboncp.tooling.mixture import components, make_mixture_replay, summary
    from carboncp.tooling.table_build import DEFAULT_CELL_BUDGET, split_indices

    alpha = check_alpha(alpha)
    comps = components(device_carbon, server_carbon, bandwidth, bandwidth_scales)
    bundle = Bundle.load(bundle_path)
    cm = cost_model_of(bundle)
    if len(comps) == 1:
        _say(f"[build] replay: {comps[0].describe()}", progress)
    else:
        _say(
            f"[build] replay: a mixture of {len(comps)} components "
            f"({len({c.device_carbon for c in comps})} device zones x "
            f"{len({c.server_carbon for c in comps})} server zones x "
            f"{len({c.bandwidth for c in comps})} links x "
            f"{len({c.bandwidth_scale for c in comps})} scales)",
            progress,
        )
    rp = make_mixture_replay(
        cm,
        comps,
        events_per_hour=events_per_hour,
        days=days,
        seed=seed,
        events_per_component=events_per_component,
    )
    mix = rp.meta["mixture"]
    tr = split_indices(rp, "train")
    _say(
        f"[build] {len(rp)} events (train {len(tr)}); oracle label counts {np.bincount(rp.label, minlength=cm.P + 1).tolist()}",
        progress,
    )
    budget = cell_budget or DEFAULT_CELL_BUDGET
    models, reports = {}, {}
    for objective in ("ce", "regression"):
        models[objective], reports[objective] = _train_candidate(
            objective, rp, cm, tr, alpha, budget, seed, max_epochs, progress
        )
    best, why = _choose_objective(reports, alpha, q_objective)
    _say(f"[build] keeping Q_θ[{best}]: {why}", progress)
    bw_level = float(reports[best]["bandwidth_alpha"])
    table = _compile_table(models[best], cm, rp, tr, alpha, bw_level, budget, seed, progress)
    build = {
        "device_carbon": _one_or_list(c.device_carbon for c in comps),
        "server_carbon": _one_or_list(c.server_carbon for c in comps),
        "bandwidth": _one_or_list(c.bandwidth for c in comps),
        "bandwidth_scales": sorted({c.bandwidth_scale for c in comps}),
        "mixture": summary(mix),
        "alpha": alpha,
        "events_per_hour": events_per_hour,
        "events_per_component": mix["events_per_component"],
        "seed": seed,
        "replay": {k: v for k, v in rp.meta.items() if k != "mixture"},
    }
    table.meta.update(
        q_objective=best,
        bandwidth_alpha=bw_level,
        q_selection={"rule": why, "held_out": reports},
        build=build,
    )
    _write_table_and_qnet(bundle.path, table, models[best], progress)
    _write_build_section(bundle.path, build, mix)
    return {"table": table, "selected": best, "reports": reports, "replay": rp}


def _one_or_list(paths: Any) -> str | list[str]:
    """One path as a string (what bundles built on one scenario always recorded), else a list."""
    uniq = list(dict.fromkeys(str(p) for p in paths))
    return uniq[0] if len(uniq) == 1 else uniq


CARBON_SIGNAL = "average/direct"  # what load_carbon_csv's default column is


def _write_build_section(bundle_path: Path, build: dict[str, Any], mixture: dict[str, Any]) -> None:
    """The 'build' section (build.json): what the bundle was trained and calibrated on, every
    mixture component with its events and the bandwidth it covered."""
    from carboncp.runtime.artifacts.bundle import MANIFEST, register_file, save_manifest

    root = Path(bundle_path)
    doc = {
        "format": "carboncp-build/1",
        **{k: v for k, v in build.items() if k != "replay"},
        "components": mixture["components"],
    }
    (root / BUILD_JSON).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    with open(root / MANIFEST, encoding="utf-8") as f:
        manifest = json.load(f)
    register_file(manifest, root, BUILD_JSON)
    manifest.setdefault("sections", {})["build"] = BUILD_JSON
    # The replay reads Electricity Maps' direct (operational) column: say so, so the device
    # accepts payloads of that signal only (docs/BUNDLE.md, carbon_signal).
    manifest["carbon_signal"] = CARBON_SIGNAL
    save_manifest(root, manifest)


def _compile_table(
    qmodel: Any,
    cm: Any,
    rp: Any,
    tr: np.ndarray,
    alpha: float,
    bw_level: float,
    budget: int,
    seed: int,
    progress: bool,
) -> Any:
    """The kept Q_θ's table over the whole training split, calibrated on the 'cal' split."""
    from carboncp.tooling.table_build import build_table, calibrate_from_replay

    _say("[build] compiling the threshold table ...", progress)
    table = build_table(
        qmodel.q,
        cm,
        rp.x_seen[tr],
        slo_ms=cm.slo,
        cell_budget=budget,
        seed=seed,
        progress=progress,
    )
    calibrate_from_replay(table, rp, "cal", alpha, bandwidth_alpha=bw_level)
    cal = table.meta["calibration"]
    _say(
        f"[build] calibrated on {cal['n_cal']} events: q̂ = {table.qhat:.4g}, coverage on cal {cal['coverage_on_cal']:.3f}",
        progress,
    )
    return table


def _train_candidate(
    objective: str,
    rp: Any,
    cm: Any,
    tr: np.ndarray,
    alpha: float,
    budget: int,
    seed: int,
    max_epochs: int,
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    """Train Q_θ[objective] on the first 80% of `tr`; judge its table in mode A on the rest
    (calibrate on one half, simulate the other) at each bandwidth level; keep the best level."""
    from carboncp.tooling.qnet import train_q
    from carboncp.tooling.table_build import build_table, calibrate

    n_fit = len(tr) - max(1, round(0.2 * len(tr)))
    val = tr[n_fit:]
    val_cal, val_eval = val[: len(val) // 2], val[len(val) // 2 :]
    _say(f"[build] training Q_θ ({objective}) ...", progress)
    q = train_q(rp, cm.profile, objective, seed=seed, max_epochs=max_epochs, progress=progress)
    t = build_table(q.q, cm, rp.x_seen[tr[:n_fit]], slo_ms=cm.slo, cell_budget=budget, seed=seed)
    by_level = {}
    for level in bandwidth_levels(alpha):
        calibrate(
            t,
            rp.x_seen[val_cal],
            rp.label[val_cal],
            rp.costs.latency_ms[val_cal],
            rp.tx_mbps[val_cal],
            alpha,
            bandwidth_alpha=level,
        )
        by_level[str(level)] = _simulate(t, cm, rp, val_eval, alpha)
    level, _ = select_q(by_level, alpha)
    r = by_level[level] | {
        "bandwidth_alpha": float(level),
        "by_bandwidth_alpha": by_level,
        "train": q.report,
    }
    _say(
        f"[build]   {objective}: held-out mode A carbon {r['carbon_g']:.4f} g, SLO violations "
        f"{r['slo_violation_rate']:.3f}, coverage {r['coverage']:.3f}, mean set {r['mean_set_size']:.2f} "
        f"(bandwidth bound level {r['bandwidth_alpha']})",
        progress,
    )
    return q, r


def _choose_objective(
    reports: dict[str, dict[str, Any]], alpha: float, q_objective: str
) -> tuple[str, str]:
    """(objective, why): the held-out rule's choice, unless `q_objective` forces one."""
    best, why = select_q(reports, alpha)
    if q_objective != "auto":
        if q_objective not in reports:
            raise ConfigError(f"q_objective={q_objective!r} is not 'auto', 'ce' or 'regression'")
        best, why = q_objective, f"forced by --q-objective (the held-out rule chose {best}: {why})"
    return best, why


def _write_table_and_qnet(bundle_path: Path, table: Any, qmodel: Any, progress: bool) -> None:
    """Store the table and the kept Q_θ as bundle sections."""
    from carboncp.tooling.table_build import write_qnet, write_table

    write_table(bundle_path, table)
    write_qnet(bundle_path, qmodel)
    _say(
        f"[build] wrote table/ ({table.n_bytes()} bytes of arrays, {table.scores.shape[0]} cells) and qnet/",
        progress,
    )


def _bundle_ok(out: Path, model: str) -> bool:
    try:
        b = Bundle.load(out)
    except CarbonCPError:
        return False
    return b.model_name == model


def build_bundle(
    model: str = "resnet18",
    out: str | Path = "models/bundles/resnet18",
    device_profile: str = "rpi4",
    device_carbon: TracesArg = None,
    server_carbon: TracesArg = None,
    bandwidth: TracesArg = None,
    alpha: float = 0.1,
    objective: str | Path | None = None,
    progress: bool = True,
    *,
    quick_profile: bool = False,
    wire_dtype: str = "float16",
    reuse_profile: bool = False,
    **kw: Any,
) -> Path:
    """The whole pipeline; reuses a valid bundle of the same model at `out`."""
    alpha = check_alpha(alpha)
    if (not device_carbon) != (not server_carbon):
        raise CarbonCPError("give both --device-carbon and --server-carbon, or neither")
    out = Path(out)
    t0 = time.monotonic()
    if _bundle_ok(out, model):
        _say(f"[build] reusing the valid {model} bundle at {out}", progress)
    else:
        from carboncp.tooling.export import export_bundle

        _say(f"[build] exporting {model} to {out} ...", progress)
        export_bundle(model, out, progress=progress)
    if reuse_profile and Bundle.load(out).section("profile") is not None:
        _reuse_profile(out, objective, progress)
    else:
        _profile(out, device_profile, objective, quick_profile, wire_dtype, progress)
    if Bundle.load(out).section("objective") is None:
        raise BundleError(f"{out}: profiling wrote no 'objective' section")
    train_and_compile(
        out, device_carbon, server_carbon, bandwidth, alpha=alpha, progress=progress, **kw
    )
    _say(f"[build] done in {time.monotonic() - t0:.0f} s: {out}", progress)
    return out


def _reuse_profile(out: Path, objective: str | Path | None, progress: bool) -> None:
    """Keep the bundle's measured profile (comparable scenarios on a shared, noisy host);
    write the objective section when one is given."""
    from dataclasses import replace

    from carboncp.runtime.decision.objective import load_objective
    from carboncp.runtime.decision.profile import load_profile
    from carboncp.tooling.profile import write_sections

    bundle = Bundle.load(out)
    prof = load_profile(bundle)
    _say(f"[build] reusing the bundle's profile (device {prof.device})", progress)
    if objective is not None:
        write_sections(bundle, prof, replace(load_objective(objective), radio=prof.radio))


def _profile(
    out: Path,
    device_profile: str,
    objective: str | Path | None,
    quick_profile: bool,
    wire_dtype: str,
    progress: bool,
) -> None:
    _say(f"[build] profiling ({device_profile}) ...", progress)
    from carboncp.tooling.profile import profile_bundle

    # float16 activations on the wire where the export measured their output error (the
    # image at p = 0 is always sent as uint8): docs/METHOD.md §1.
    pkw: dict[str, Any] = {
        "device_profile": device_profile,
        "quick": quick_profile,
        "wire_dtype": wire_dtype,
        "progress": progress,
    }
    if objective is not None:
        pkw["objective"] = objective
    profile_bundle(out, **pkw)
