"""Compile Q_θ into the threshold table (docs/METHOD.md §8) and calibrate it.

Bins go where the cost model's decision changes, not at training quantiles: for each
context feature we sweep a physical range (bandwidth 0.05-1000 Mbit/s on a log grid,
carbon 0-1000 gCO2/kWh, loads 0-1, battery 0-100 %, RTT 1-500 ms) with the other features
held at contexts drawn from the training events, record where argmin_p J flips, and put
the feature's edges at quantiles of those flip locations (in log space for bandwidth).
A feature gets one bin when the training data never varies it or when no decision flips
along it; a cell budget caps the product. The score of a cell is Q_θ at the cell's
representative context (the median of training events in the bin, or the bin's midpoint
where none fell, so unseen zones get physically sensible cells).

The split-CP threshold, the guard's latency offsets and the bandwidth lower bound are then
calibrated on the TABLE's own cells and scores, so the guarantee holds for what the device
runs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import MANIFEST, register_file, save_manifest
from carboncp.runtime.decision.conformal import (
    BinnedLogit,
    check_alpha,
    lower_bound_offset,
    split_threshold,
    upper_bound_offset,
)
from carboncp.runtime.decision.context import CONTEXT_FIELDS
from carboncp.runtime.decision.table import (
    LATENCY_FEATURES,
    TABLE_JSON,
    Table,
    quantile_levels,
)

# Physical sweep ranges per feature (CONTEXT_FIELDS order) and whether the axis is log.
RANGES: list[tuple[float, float, bool]] = [
    (0.05, 1000.0, True),  # bandwidth_mbps
    (1.0, 500.0, False),  # rtt_ms
    (0.0, 1.0, False),  # device_load
    (0.0, 1.0, False),  # server_load
    (0.0, 1000.0, False),  # device_gco2_per_kwh
    (0.0, 1000.0, False),  # server_gco2_per_kwh
    (0.0, 100.0, False),  # battery_pct
]
# Most bins a feature may get (before the cell budget trims the largest).
MAX_BINS = [20, 3, 6, 3, 10, 10, 4]
DEFAULT_CELL_BUDGET = 12000
BW_FLOOR_MBPS = 0.01
# Quantiles of log(B_real / B̂) stored for mode A's expected-J rule (docs/METHOD.md §7): the
# midpoints of this many equal-probability bins.
N_BANDWIDTH_QUANTILES = 9

# Fixed edges of the weighted-CP classifier (storable; finer than the table on carbon,
# where zones differ). Bandwidth on a log grid.
CLASSIFIER_EDGES: list[list[float]] = [
    [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256],
    [10.0, 25.0, 50.0, 100.0, 200.0],
    [0.1 * i for i in range(1, 10)],
    [0.25, 0.5, 0.75],
    [25.0 + 50.0 * i for i in range(20)],
    [25.0 + 50.0 * i for i in range(20)],
    [10.0 * i for i in range(1, 10)],
]


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _grid(f: int, n: int) -> np.ndarray:
    lo, hi, log = RANGES[f]
    return np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n)


def decision_flips(cost_model: Any, x_ref: np.ndarray, f: int, n_grid: int = 120) -> np.ndarray:
    """Values of feature f at which argmin_p J changes, sweeping f over its physical range."""
    g = _grid(f, n_grid)
    m = len(x_ref)
    x = np.repeat(x_ref, n_grid, axis=0)
    x[:, f] = np.tile(g, m)
    best = np.asarray(cost_model.oracle(cost_model.evaluate(x))).reshape(m, n_grid)
    flips = best[:, 1:] != best[:, :-1]
    mids = np.sqrt(g[1:] * g[:-1]) if RANGES[f][2] else (g[1:] + g[:-1]) / 2
    return np.broadcast_to(mids, flips.shape)[flips]


def choose_edges(
    cost_model: Any,
    x_train: np.ndarray,
    *,
    cell_budget: int = DEFAULT_CELL_BUDGET,
    n_ref: int = 200,
    seed: int = 0,
) -> tuple[list[list[float]], dict[str, Any]]:
    """Per-feature bin edges at quantiles of the cost model's decision flips."""
    rng = np.random.default_rng(seed)
    x_ref = x_train[rng.choice(len(x_train), size=min(n_ref, len(x_train)), replace=False)]
    flips: list[np.ndarray] = []
    bins = []
    why = {}
    for f, name in enumerate(CONTEXT_FIELDS):
        lo, hi, _ = RANGES[f]
        spread = float(np.ptp(x_train[:, f])) if len(x_train) else 0.0
        loc = decision_flips(cost_model, x_ref, f)
        flips.append(loc)
        if spread <= 1e-6 * (hi - lo):
            bins.append(1)
            why[name] = "constant in the training events: 1 bin"
        elif loc.size == 0:
            bins.append(1)
            why[name] = "no decision flips along it: 1 bin"
        else:
            # No more bins than distinct flip locations + 1: a feature along which the
            # decision flips at two places needs three bins, not ten.
            distinct = int(np.unique(np.round(loc, 6)).size)
            bins.append(min(MAX_BINS[f], distinct + 1))
            why[name] = f"{loc.size} decision flips at {distinct} distinct values"
    while math.prod(bins) > cell_budget:  # trim evenly relative to each feature's maximum
        f = max((i for i in range(len(bins)) if bins[i] > 1), key=lambda i: bins[i] / MAX_BINS[i])
        bins[f] -= 1
    edges: list[list[float]] = []
    for f in range(len(CONTEXT_FIELDS)):
        if bins[f] <= 1:
            edges.append([])
            continue
        loc = flips[f]
        qs = np.linspace(0, 1, bins[f] + 1)[1:-1]
        e = np.exp(np.quantile(np.log(loc), qs)) if RANGES[f][2] else np.quantile(loc, qs)
        edges.append(sorted({float(np.round(v, 6)) for v in e}))
    return edges, why


def representatives(edges: list[float], f: int, x_train: np.ndarray) -> np.ndarray:
    """One value per bin: median of training events in it, else the bin's midpoint."""
    lo, hi, log = RANGES[f]
    bounds = [min(lo, *edges) if edges else lo, *edges, max(hi, *edges) if edges else hi]
    vals = x_train[:, f]
    b = np.searchsorted(np.asarray(edges), vals, side="right")
    out = []
    for k in range(len(edges) + 1):
        inside = vals[b == k]
        if inside.size >= 5:
            out.append(float(np.median(inside)))
        elif log:
            out.append(float(math.sqrt(max(bounds[k], 1e-3) * bounds[k + 1])))
        else:
            out.append(float((bounds[k] + bounds[k + 1]) / 2))
    return np.asarray(out)


def _product_rows(reps: list[np.ndarray]) -> np.ndarray:
    mesh = np.meshgrid(*reps, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def compile_scores(
    q_fn: Any, cost_model: Any, x_train: np.ndarray, edges: list[list[float]]
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (n_cells, P+1) float16, latency_ms (n_lat_cells, P+1) float16)."""
    reps = [representatives(edges[f], f, x_train) for f in range(len(edges))]
    rows = _product_rows(reps)
    q = np.asarray(q_fn(rows), dtype=np.float64)
    scores = (q - q.min(axis=1, keepdims=True)).astype(np.float16)
    # float16 rounding may leave a tiny positive at the argmin: keep exact zeros there.
    scores[np.arange(len(q)), np.argmin(q, axis=1)] = 0
    med = np.median(x_train, axis=0)
    lat_reps = [reps[f] if f in LATENCY_FEATURES else np.array([med[f]]) for f in range(7)]
    lat_rows = _product_rows(lat_reps)
    lat = np.asarray(cost_model.evaluate(lat_rows).latency_ms, dtype=np.float64)
    return scores, np.minimum(lat, 65000.0).astype(np.float16)


def calibrate(
    table: Table,
    x_seen: np.ndarray,
    labels: np.ndarray,
    latency_real_ms: np.ndarray,
    bw_real_mbps: np.ndarray,
    alpha: float,
    *,
    bandwidth_alpha: float | None = None,
    max_cal: int = 6000,
    keep_support: bool = False,
) -> Table:
    """Set q̂, the guard offsets, the bandwidth bound and quantiles, the support and the WCP
    data from calibration events.

    The support (per binned feature, the range of the calibration contexts) says where the
    table's scores were calibrated; `keep_support` leaves the table's support as it is (the
    evaluation recalibrates q̂ on other traces, but the scores stay the build's; a table
    without a support keeps none).
    """
    alpha = check_alpha(alpha)
    bw_alpha = check_alpha(alpha if bandwidth_alpha is None else bandwidth_alpha, "bandwidth_alpha")
    cells = table.cells(x_seen)
    s = table.scores[cells, np.asarray(labels)].astype(np.float64)
    table.alpha = alpha
    table.qhat = split_threshold(s, alpha)
    lat_pred = table.latency_ms[table.latency_cells(x_seen)].astype(np.float64)
    resid = np.asarray(latency_real_ms, dtype=np.float64) - lat_pred
    table.latency_offset_ms = [
        upper_bound_offset(resid[:, p], alpha) for p in range(resid.shape[1])
    ]
    r_bw = np.log(np.maximum(bw_real_mbps, BW_FLOOR_MBPS)) - np.log(
        np.maximum(x_seen[:, 0], BW_FLOOR_MBPS)
    )
    table.bandwidth_log_lower = lower_bound_offset(r_bw, bw_alpha)
    table.bandwidth_log_quantiles = bandwidth_quantiles(r_bw)
    if not keep_support:
        table.support = support_bounds(table, x_seen)
    keep = slice(max(0, len(s) - max_cal), len(s))  # the most recent calibration events
    clf = BinnedLogit(CLASSIFIER_EDGES)
    table.cal_scores = s[keep].astype(np.float32)
    table.cal_bins = clf.bins(x_seen[keep]).astype(np.uint8)
    table.classifier = clf.to_dict()
    table.meta["calibration"] = {
        "n_cal": len(s),
        "n_stored": len(table.cal_scores),
        "coverage_on_cal": float(np.mean(s <= table.qhat)),
        "bandwidth_alpha": bw_alpha,
    }
    return table


def bandwidth_quantiles(r_bw: np.ndarray, k: int = N_BANDWIDTH_QUANTILES) -> np.ndarray:
    """(k,) quantiles of the residuals log(B_real / B̂) at the levels (i + 1/2)/k (numpy's
    linear interpolation): mode A's predictive distribution of the link, equally weighted."""
    r = np.asarray(r_bw, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return np.zeros(k)
    return np.maximum.accumulate(np.quantile(r, quantile_levels(k)))


def support_bounds(table: Table, x_seen: np.ndarray) -> np.ndarray:
    """(2, 7): per feature the lowest and highest calibration context value, for the
    features the table bins (a feature with one bin gets (-inf, inf): its scores do not
    vary along it, and a constant replay value, like the seen RTT, says nothing of reach)."""
    x = np.asarray(x_seen, dtype=np.float64)
    out = np.stack([np.full(x.shape[1], -np.inf), np.full(x.shape[1], np.inf)])
    if len(x) == 0:
        return out
    for f, e in enumerate(table.edges):
        if e:
            out[0, f], out[1, f] = np.nanmin(x[:, f]), np.nanmax(x[:, f])
    return out


def calibrate_from_replay(table: Table, replay: Any, split: str, alpha: float, **kw: Any) -> Table:
    idx = split_indices(replay, split)
    return calibrate(
        table,
        replay.x_seen[idx],
        replay.label[idx],
        replay.costs.latency_ms[idx],
        replay.tx_mbps[idx],
        alpha,
        **kw,
    )


def split_indices(replay: Any, split: str) -> np.ndarray:
    """Indices of a replay split (the replay may store a slice or an index array)."""
    s = replay.splits[split]
    if isinstance(s, slice):
        return np.arange(len(replay.t_s))[s]
    if isinstance(s, tuple) and len(s) == 2:
        return np.arange(int(s[0]), int(s[1]))
    return np.asarray(s, dtype=np.int64)


def build_table(
    q_fn: Any,
    cost_model: Any,
    x_train: np.ndarray,
    *,
    slo_ms: float | None,
    cell_budget: int = DEFAULT_CELL_BUDGET,
    seed: int = 0,
    progress: bool = False,
) -> Table:
    """An uncalibrated table (q̂ = +inf) from Q_θ and the cost model."""
    edges, why = choose_edges(cost_model, x_train, cell_budget=cell_budget, seed=seed)
    shape = [len(e) + 1 for e in edges]
    _say(
        f"  table: {math.prod(shape)} cells, bins per feature {dict(zip(CONTEXT_FIELDS, shape, strict=False))}",
        progress,
    )
    scores, lat = compile_scores(q_fn, cost_model, x_train, edges)
    return Table(
        edges=edges,
        scores=scores,
        latency_ms=lat,
        latency_offset_ms=[0.0] * scores.shape[1],
        alpha=0.1,
        qhat=math.inf,
        cal_scores=np.zeros(0, np.float32),
        cal_bins=np.zeros((0, 7), np.uint8),
        bandwidth_log_lower=0.0,
        slo_ms=slo_ms,
        classifier=BinnedLogit(CLASSIFIER_EDGES).to_dict(),
        meta={"edges_why": why},
    )


def write_table(bundle_path: str | Path, table: Table) -> Path:
    """Write table/ into the bundle, register every file with its sha256, section 'table'."""
    root = Path(bundle_path)
    rels = table.save(root)
    return _register(root, rels, "table", TABLE_JSON)


def write_qnet(bundle_path: str | Path, qmodel: Any, name: str = "qnet") -> Path:
    """Store Q_θ's weights as .npy + JSON (for the benchmark and the baselines; not the device)."""
    root = Path(bundle_path)
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    rels = []
    arrays = qmodel.arrays()
    for key, arr in arrays.items():
        np.save(d / f"{key}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        rels.append(f"{name}/{key}.npy")
    meta = qmodel.meta()
    meta["arrays"] = {k: f"{k}.npy" for k in arrays}
    with open(d / "qnet.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, default=float)
        f.write("\n")
    rels.append(f"{name}/qnet.json")
    return _register(root, rels, name, f"{name}/qnet.json")


def load_qnet(bundle: Any, name: str = "qnet") -> Any:
    """The stored Q_θ of a bundle, or None."""
    from carboncp.tooling.qnet import QModel

    meta = bundle.section(name)
    if meta is None:
        return None
    arrays = {
        k: np.load(bundle.file(f"{name}/{v}"), allow_pickle=False)
        for k, v in meta["arrays"].items()
    }
    return QModel.from_arrays(meta, arrays)


def _register(root: Path, rels: list[str], section: str, section_rel: str) -> Path:
    with open(root / MANIFEST, encoding="utf-8") as f:
        manifest = json.load(f)
    for rel in rels:
        register_file(manifest, root, rel)
    manifest.setdefault("sections", {})[section] = section_rel
    return save_manifest(root, manifest)
