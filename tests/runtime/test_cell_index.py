"""CellIndex, the device's per-decision cell lookup, against the table's numpy lookup
(`Table.cells`, `Table.latency_cells`): random contexts, values on the bin edges, out of
range, infinite and NaN."""

from __future__ import annotations

import math

import numpy as np
from carboncp.runtime.decision.conformal import BinnedLogit
from carboncp.runtime.decision.table import CellIndex, Table

# Every kind of feature: several edges, none (always bin 0), one, duplicated edge values.
EDGES = [[2.0, 10.0, 40.0, 120.0], [], [0.25, 0.5, 0.75], [0.5], [150.0, 150.0, 400.0], [80.0], []]


def _table(edges: list[list[float]], p1: int = 4) -> Table:
    n_cells = math.prod(len(e) + 1 for e in edges)
    n_lat = math.prod(len(e) + 1 for e in edges[:4])
    return Table(
        edges=edges,
        scores=np.zeros((n_cells, p1), np.float16),
        latency_ms=np.zeros((n_lat, p1), np.float16),
        latency_offset_ms=[0.0] * p1,
        alpha=0.1,
        qhat=0.5,
        cal_scores=np.zeros(10, np.float32),
        cal_bins=np.zeros((10, 7), np.uint8),
        bandwidth_log_lower=0.0,
        slo_ms=300.0,
        classifier=BinnedLogit([[]] * 7).to_dict(),
    )


def _contexts(rng: np.random.Generator) -> np.ndarray:
    """Random contexts around and beyond the edges, then each edge value, inf and NaN put
    into one feature at a time."""
    lo = np.array([0.0, 0.0, -0.5, -0.5, 0.0, 0.0, 0.0])
    hi = np.array([200.0, 100.0, 1.5, 1.5, 600.0, 200.0, 100.0])
    x = rng.uniform(lo, hi, (400, 7))
    special = [math.inf, -math.inf, math.nan, -1e300, 1e300]
    rows = []
    for f, e in enumerate(EDGES):
        for v in [*e, *(np.nextafter(e, -math.inf)), *special]:
            r = x[rng.integers(len(x))].copy()
            r[f] = v
            rows.append(r)
    return np.vstack([x, np.asarray(rows)])


def test_cell_equals_the_numpy_lookup() -> None:
    table = _table(EDGES)
    index = CellIndex(table)
    x = _contexts(np.random.default_rng(3))
    cells, lat_cells = table.cells(x), table.latency_cells(x)
    for i, r in enumerate(x.tolist()):
        row = tuple(r)
        assert index.cell(row) == cells[i], row
        assert index.latency_cell(index.cell(row)) == lat_cells[i], row
    # for every cell of the table, the latency cell is the one its bins give
    for c in range(table.scores.shape[0]):
        bins = np.unravel_index(c, table.shape)
        assert index.latency_cell(c) == np.ravel_multi_index(bins[:4], table.latency_shape)


def test_values_on_an_edge_go_up_and_nan_to_the_last_bin() -> None:
    index = CellIndex(_table(EDGES))
    base = [0.0] * 7  # below every edge: cell 0
    assert index.cell(tuple(base)) == 0
    stride = index.strides[0]
    for b, edge in enumerate(EDGES[0], start=1):
        assert index.cell((edge, *base[1:])) == b * stride  # bisect_right: on an edge is above it
    assert index.cell((math.nan, *base[1:])) == len(EDGES[0]) * stride
    assert index.cell((math.inf, *base[1:])) == len(EDGES[0]) * stride
