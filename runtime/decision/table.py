"""The threshold table the device decides from (docs/METHOD.md §8; layout in docs/TABLE.md).

JSON (`table/table.json`) plus flat .npy arrays, never pickle. numpy only; the per-decision
path (`CellIndex.cell`) is pure Python over lists prepared at load.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import section_fault
from carboncp.runtime.decision.conformal import BinnedLogit
from carboncp.runtime.decision.context import CONTEXT_FIELDS
from carboncp.runtime.errors import BundleError

TABLE_FORMAT = "carboncp-table/1"
TABLE_DIR = "table"
TABLE_JSON = "table/table.json"
# Features whose bins index the latency sub-table (latency does not depend on carbon/battery).
LATENCY_FEATURES = (0, 1, 2, 3)
# Most quantiles of log(B_real / B̂) a table may carry (mode A prices every one per decision).
MAX_BANDWIDTH_QUANTILES = 16


@dataclass
class Table:
    """Scores per cell and partition, the calibrated thresholds and the guard's bounds.

    The device decides from it through `TablePolicy`; build one with 'carboncp build' and load
    it with `Table.from_bundle` (layout in docs/TABLE.md). A context row (CONTEXT_FIELDS order)
    falls in bin `bisect_right(edges[f], x[f])` of each feature f; its cell is the row-major
    index of those bins in `shape`. Partitions are 0..P (`n_partitions` = P+1).
    """

    edges: list[list[float]]  # per CONTEXT_FIELDS feature, increasing; bin = bisect_right
    scores: np.ndarray  # (n_cells, P+1) float16, s = Q − min_p Q (0 at the cell's argmin)
    latency_ms: np.ndarray  # (n_lat_cells, P+1) float16: predicted latency per latency cell
    latency_offset_ms: list[float]  # per partition: conformal upper offset (realised − pred)
    alpha: float
    qhat: float  # split-CP threshold on the table's own scores
    cal_scores: np.ndarray  # (n_cal,) float32: calibration scores of the oracle label (ACI, WCP)
    cal_bins: np.ndarray  # (n_cal, 7) uint8: calibration contexts' bins for the WCP classifier
    bandwidth_log_lower: float  # conformal lower offset of log(B_real) − log(B̂)
    slo_ms: float | None
    classifier: dict[str, Any]  # BinnedLogit.to_dict() (edges fixed at build, weights refit)
    meta: dict[str, Any] = field(default_factory=dict)
    # (K,) float64, non-decreasing: quantiles of log(B_real / B̂) at the levels (k + 1/2)/K
    # (midpoints of K equal-probability bins), mode A's expected-J rule; None in older tables
    # (mode A then prices at the single factor exp(bandwidth_log_lower), flagged).
    bandwidth_log_quantiles: np.ndarray | None = None
    # (2, 7) float64: per feature the lowest (row 0) and highest (row 1) seen value of the
    # calibration contexts; ±inf for a feature the table does not bin. None in older tables.
    support: np.ndarray | None = None

    # -- shape -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Bins per feature (len(edges[f]) + 1): the table's cell grid."""
        return tuple(len(e) + 1 for e in self.edges)

    @property
    def latency_shape(self) -> tuple[int, ...]:
        """Bins per latency feature (LATENCY_FEATURES): the latency sub-table's grid."""
        return tuple(len(self.edges[f]) + 1 for f in LATENCY_FEATURES)

    @property
    def n_partitions(self) -> int:
        """P+1: the number of partitions the table scores."""
        return int(self.scores.shape[1])

    def strides(self, shape: tuple[int, ...]) -> list[int]:
        """Row-major strides of `shape`: cell = Σ bin[f] * strides[f]."""
        out, s = [], 1
        for d in reversed(shape):
            out.append(s)
            s *= d
        return out[::-1]

    # -- lookups -----------------------------------------------------------------------------
    def bins(self, x: np.ndarray) -> np.ndarray:
        """(N, 7) bin index of every feature of contexts x, (N, 7) or (7,) in CONTEXT_FIELDS
        order (searchsorted right: a value on an edge goes up)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return np.stack(
            [
                np.searchsorted(np.asarray(e), x[:, f], side="right")
                for f, e in enumerate(self.edges)
            ],
            axis=1,
        )

    def cells(self, x: np.ndarray) -> np.ndarray:
        """(N,) cell index of every context row of x, (N, 7) or (7,) (numpy; the tooling's path)."""
        b = self.bins(x)
        return (b * np.asarray(self.strides(self.shape))).sum(axis=1)

    def latency_cells(self, x: np.ndarray) -> np.ndarray:
        """(N,) latency-cell index of every context row of x (its LATENCY_FEATURES bins)."""
        b = self.bins(x)[:, list(LATENCY_FEATURES)]
        return (b * np.asarray(self.strides(self.latency_shape))).sum(axis=1)

    def latency_upper_ms(self) -> np.ndarray:
        """(n_lat_cells, P+1) conformal latency upper bounds of the SLO guard, in ms."""
        return self.latency_ms.astype(np.float64) + np.asarray(self.latency_offset_ms)[None, :]

    def guard_ok(self) -> np.ndarray:
        """(n_lat_cells, P+1) bool: the partition's latency bound meets the SLO (all True
        when `slo_ms` is None)."""
        if self.slo_ms is None:
            return np.ones(self.latency_ms.shape, dtype=bool)
        return self.latency_upper_ms() <= self.slo_ms

    def bandwidth_lower(self, bandwidth_mbps: float) -> float:
        """Conformal lower bound (Mbit/s) of the realised bandwidth given the seen one."""
        return bandwidth_mbps * math.exp(self.bandwidth_log_lower)

    def bandwidth_levels(self) -> list[float]:
        """The levels of `bandwidth_log_quantiles`: (k + 1/2)/K, k = 0..K-1 ([] without them)."""
        k = 0 if self.bandwidth_log_quantiles is None else len(self.bandwidth_log_quantiles)
        return quantile_levels(k)

    def out_of_support(self, x: np.ndarray) -> np.ndarray:
        """(N,) bool: a context row of x (N, 7) lies outside the calibration range of some
        feature (`support`); all False when the table records no support."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if self.support is None:
            return np.zeros(len(x), dtype=bool)
        inside = (x >= self.support[0][None, :]) & (x <= self.support[1][None, :])
        return ~inside.all(axis=1)

    def _arrays(self) -> dict[str, tuple[np.ndarray, str]]:
        """key -> (array, dtype) of every array the table holds (the optional ones if set)."""
        out = {
            "scores": (self.scores, "float16"),
            "latency_ms": (self.latency_ms, "float16"),
            "cal_scores": (self.cal_scores, "float32"),
            "cal_bins": (self.cal_bins, "uint8"),
        }
        if self.bandwidth_log_quantiles is not None:
            out["bandwidth_log_quantiles"] = (self.bandwidth_log_quantiles, "float64")
        if self.support is not None:
            out["support"] = (self.support, "float64")
        return out

    def n_bytes(self) -> int:
        """Bytes held by the table's arrays (scores, latency_ms, cal_scores, cal_bins, and
        the bandwidth quantiles and support when present)."""
        return int(sum(a.nbytes for a, _ in self._arrays().values()))

    # -- storage -----------------------------------------------------------------------------
    def layout(self) -> dict[str, Any]:
        """The table.json dict (format, edges, shapes, thresholds, the .npy files' specs)."""
        return {
            "format": TABLE_FORMAT,
            "features": list(CONTEXT_FIELDS),
            "edges": [list(map(float, e)) for e in self.edges],
            "bin_rule": "bin = number of edges <= value (bisect_right); cell = row-major index",
            "shape": list(self.shape),
            "latency_features": [CONTEXT_FIELDS[f] for f in LATENCY_FEATURES],
            "latency_shape": list(self.latency_shape),
            "n_partitions": self.n_partitions,
            "alpha": self.alpha,
            "qhat": _json_float(self.qhat),
            "slo_ms": self.slo_ms,
            "latency_offset_ms": [_json_float(v) for v in self.latency_offset_ms],
            "bandwidth_log_lower": _json_float(self.bandwidth_log_lower),
            "classifier": self.classifier,
            "files": {
                key: {"file": f"{key}.npy", "dtype": dtype, "shape": list(arr.shape)}
                for key, (arr, dtype) in self._arrays().items()
            },
            "meta": self.meta,
        }

    def save(self, root: Path) -> list[str]:
        """Write table/table.json and the .npy files under root; returns their relative paths.

        Raises:
            OSError: `root` cannot be written.
        """
        d = Path(root) / TABLE_DIR
        d.mkdir(parents=True, exist_ok=True)
        arrays = {f"{k}.npy": a.astype(dtype) for k, (a, dtype) in self._arrays().items()}
        for name, arr in arrays.items():
            np.save(d / name, np.ascontiguousarray(arr), allow_pickle=False)
        with open(Path(root) / TABLE_JSON, "w", encoding="utf-8") as f:
            json.dump(self.layout(), f, indent=1)
            f.write("\n")
        return [TABLE_JSON] + [f"{TABLE_DIR}/{n}" for n in arrays]

    @classmethod
    def from_layout(cls, layout: dict[str, Any], read: Any, where: str = TABLE_JSON) -> Table:
        """Build from table.json's dict and `read(rel_path) -> Path` (a bundle's file lookup).

        Parameters:
            layout: table.json's content (`layout()` of the table that was saved).
            read: maps a path relative to the bundle root to the file to load.
            where: how error messages name table.json.

        Raises:
            BundleError: wrong format, a missing key or malformed value, an unreadable array,
                an array whose dtype/shape differs from the layout, arrays that disagree with
                each other or the edges, or a weighted-CP classifier that does not load.
        """
        if layout.get("format") != TABLE_FORMAT:
            raise BundleError(
                f"{where}: table format {layout.get('format')!r} is not {TABLE_FORMAT!r}; "
                "rebuild the bundle with 'carboncp build'"
            )
        fix = "rebuild the bundle with 'carboncp build'"
        with section_fault(where, fix):
            arrs = {}
            for key, spec in layout["files"].items():
                path = read(f"{TABLE_DIR}/{spec['file']}")
                try:
                    arr = np.load(path, allow_pickle=False)
                except (ValueError, OSError) as exc:
                    raise BundleError(f"{path}: unreadable table array ({exc}); {fix}") from None
                if str(arr.dtype) != spec["dtype"] or list(arr.shape) != list(spec["shape"]):
                    raise BundleError(
                        f"{path}: dtype/shape {arr.dtype}{list(arr.shape)} differ from "
                        f"{where} ({spec['dtype']}{spec['shape']}); {fix}"
                    )
                arrs[key] = arr
            t = cls(
                edges=[list(map(float, e)) for e in layout["edges"]],
                scores=arrs["scores"],
                latency_ms=arrs["latency_ms"],
                latency_offset_ms=[float(v) for v in layout["latency_offset_ms"]],
                alpha=float(layout["alpha"]),
                qhat=float(layout["qhat"]),
                cal_scores=arrs["cal_scores"],
                cal_bins=arrs["cal_bins"],
                bandwidth_log_lower=float(layout["bandwidth_log_lower"]),
                slo_ms=None if layout.get("slo_ms") is None else float(layout["slo_ms"]),
                classifier=dict(layout["classifier"]),
                meta=dict(layout.get("meta", {})),
                bandwidth_log_quantiles=arrs.get("bandwidth_log_quantiles"),
                support=arrs.get("support"),
            )
            shape = tuple(int(v) for v in layout["shape"])
            BinnedLogit.from_dict(t.classifier)  # the weighted-CP classifier must load too
        _check_shapes(t, shape, where, fix)
        return t

    @classmethod
    def from_bundle(cls, bundle: Any) -> Table:
        """The table of a loaded `Bundle` (its 'table' section and arrays).

        Raises:
            BundleError: the bundle has no 'table' section, the table is malformed (see
                `from_layout`), or it scores another number of partitions than the bundle has.
        """
        layout = bundle.section("table")
        if layout is None:
            raise BundleError(
                f"{bundle.path}: the bundle has no 'table' section; build one with 'carboncp build'"
            )
        where = str(bundle.path / TABLE_JSON)
        t = cls.from_layout(layout, bundle.file, where)
        if t.n_partitions != bundle.last + 1:
            raise BundleError(
                f"{where}: the table scores {t.n_partitions} partitions, the bundle has "
                f"{bundle.last + 1} (p = 0..{bundle.last}); rebuild it with 'carboncp build'"
            )
        return t


class CellIndex:
    """Pure-Python cell lookup (bisect per feature), prepared once at load."""

    def __init__(self, table: Table):
        self.edges = [list(e) for e in table.edges]
        self.shape = table.shape
        self.strides = table.strides(table.shape)
        lat = table.strides(table.latency_shape)
        self.lat_strides = [0] * len(self.edges)
        for k, f in enumerate(LATENCY_FEATURES):
            self.lat_strides[f] = lat[k]
        self.active = [f for f, e in enumerate(self.edges) if e]
        # What cell() walks: (feature, edges, stride) of the features that have edges (a
        # feature without edges is always bin 0), one tuple unpack per feature per call.
        self._walk = tuple((f, self.edges[f], self.strides[f]) for f in self.active)

    def cell(self, row: Any) -> int:
        """Table cell of one context row (CONTEXT_FIELDS order): the per-decision lookup.

        bisect_right as in `Table.cells`: a value on an edge goes up, NaN to the last bin.
        """
        c = 0
        for f, e, s in self._walk:
            c += bisect_right(e, row[f]) * s
        return c

    def latency_cell(self, cell: int) -> int:
        """The latency cell within a table cell: its latency features' bins are the cell's."""
        lc = 0
        for f in LATENCY_FEATURES:
            lc += cell // self.strides[f] % self.shape[f] * self.lat_strides[f]
        return lc


def _check_shapes(t: Table, shape: tuple[int, ...], where: str, fix: str) -> None:
    """The arrays agree with each other and with the edges (a table that loads decides)."""
    n_feat = len(CONTEXT_FIELDS)
    if len(t.edges) != n_feat:
        raise BundleError(f"{where}: 'edges' has {len(t.edges)} features, expected {n_feat}; {fix}")
    if t.scores.ndim != 2 or t.shape != shape or t.scores.shape[0] != math.prod(t.shape):
        raise BundleError(f"{where}: 'shape' does not match the edges and scores; {fix}")
    p1 = t.scores.shape[1]
    if t.latency_ms.ndim != 2 or t.latency_ms.shape != (math.prod(t.latency_shape), p1):
        raise BundleError(
            f"{where}: latency_ms rows/columns do not match the latency shape and the "
            f"{p1} partitions of the scores; {fix}"
        )
    if len(t.latency_offset_ms) != p1:
        raise BundleError(
            f"{where}: 'latency_offset_ms' has {len(t.latency_offset_ms)} entries, the scores "
            f"{p1} partitions; {fix}"
        )
    if t.cal_scores.ndim != 1 or t.cal_bins.shape != (len(t.cal_scores), n_feat):
        raise BundleError(
            f"{where}: cal_scores must be 1-D and cal_bins (n_cal, {n_feat}) of the same n_cal; "
            f"{fix}"
        )
    if not 0 < t.alpha < 1:
        raise BundleError(f"{where}: 'alpha' must be in (0, 1), got {t.alpha}; {fix}")
    if math.isnan(t.qhat) or math.isnan(t.bandwidth_log_lower):
        raise BundleError(f"{where}: 'qhat' and 'bandwidth_log_lower' must not be NaN; {fix}")
    _check_optional(t, where, fix)


def _check_optional(t: Table, where: str, fix: str) -> None:
    """The bandwidth quantiles and the support, when the table has them."""
    q = t.bandwidth_log_quantiles
    if q is not None and (
        q.ndim != 1
        or not 1 <= len(q) <= MAX_BANDWIDTH_QUANTILES
        or not np.isfinite(q).all()
        or (np.diff(q) < 0).any()
    ):
        raise BundleError(
            f"{where}: bandwidth_log_quantiles must be 1 to {MAX_BANDWIDTH_QUANTILES} finite, "
            f"non-decreasing values, got shape {list(q.shape)}; {fix}"
        )
    sup = t.support
    if sup is not None and (
        sup.shape != (2, len(CONTEXT_FIELDS)) or np.isnan(sup).any() or (sup[0] > sup[1]).any()
    ):
        raise BundleError(
            f"{where}: support must be (2, {len(CONTEXT_FIELDS)}) bounds without NaN and with "
            f"lower <= upper, got shape {list(sup.shape)}; {fix}"
        )


def quantile_levels(k: int) -> list[float]:
    """The levels (i + 1/2)/k, i = 0..k-1: midpoints of k equal-probability bins."""
    return [(i + 0.5) / k for i in range(k)]


def _json_float(v: float) -> float | str:
    """JSON has no infinity: +inf is written as the string "inf"."""
    v = float(v)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v
