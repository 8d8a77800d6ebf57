"""The threshold table's arithmetic pinned exactly (docs/TABLE.md): row-major strides and cells,
the latency cell inside a cell, the SLO guard at its boundary, the bandwidth bound, storage
of +∞, and the load-time checks at their limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from carboncp.runtime.decision.table import CellIndex, Table, _json_float
from carboncp.runtime.errors import BundleError

from tests.runtime.test_cell_index import _table

EDGES = [[2.0, 10.0], [30.0], [0.5], [], [200.0, 400.0], [], [50.0]]


def test_strides_cells_and_latency_cells_by_hand() -> None:
    t = _table(EDGES)
    assert t.shape == (3, 2, 2, 1, 3, 1, 2) and t.latency_shape == (3, 2, 2, 1)
    assert t.strides(t.shape) == [24, 12, 6, 6, 2, 2, 1]
    assert t.strides(t.latency_shape) == [4, 2, 1, 1]
    assert t.n_partitions == 4
    # B = 10 (on an edge: bin 2), RTT 31 (1), u 0.1 (0), I_d 200 (1), battery 80 (1)
    x = np.array([[10.0, 31.0, 0.1, 0.0, 200.0, 0.0, 80.0]])
    assert t.bins(x).tolist() == [[2, 1, 0, 0, 1, 0, 1]]
    assert t.cells(x).tolist() == [2 * 24 + 12 + 2 + 1]
    assert t.latency_cells(x).tolist() == [2 * 4 + 2]
    idx = CellIndex(t)
    cell = idx.cell(tuple(x[0]))
    assert cell == 63 and idx.latency_cell(cell) == 10
    assert idx.active == [0, 1, 2, 4, 6]
    # every cell's latency cell is its bandwidth/RTT/load bins
    for c in range(math.prod(t.shape)):
        b = np.unravel_index(c, t.shape)
        assert idx.latency_cell(c) == int(np.ravel_multi_index(b[:4], t.latency_shape))


def test_guard_at_the_slo_boundary_and_without_an_slo() -> None:
    t = _table([[], [], [], [], [], [], []], p1=3)
    t.latency_ms = np.array([[250.0, 300.0, 310.0]], np.float16)
    t.latency_offset_ms = [50.0, 0.0, -10.0]
    np.testing.assert_array_equal(t.latency_upper_ms(), [[300.0, 300.0, 300.0]])
    assert t.guard_ok().tolist() == [[True, True, True]]  # <= SLO: kept
    t.latency_offset_ms = [50.5, 0.5, -9.5]
    assert t.guard_ok().tolist() == [[False, False, False]]
    t.slo_ms = None
    assert t.guard_ok().tolist() == [[True, True, True]]


def test_bandwidth_bound_bytes_and_json_floats() -> None:
    t = _table(EDGES)
    t.bandwidth_log_lower = math.log(0.25)
    assert t.bandwidth_lower(8.0) == pytest.approx(2.0, rel=1e-15)
    want = t.scores.nbytes + t.latency_ms.nbytes + t.cal_scores.nbytes + t.cal_bins.nbytes
    assert t.n_bytes() == want == 72 * 4 * 2 + 12 * 4 * 2 + 10 * 4 + 10 * 7
    assert _json_float(math.inf) == "inf" and _json_float(-math.inf) == "-inf"
    assert _json_float(2) == 2.0 and isinstance(_json_float(2), float)


def test_infinite_qhat_survives_storage(tmp_path) -> None:
    t = _table(EDGES)
    t.qhat = math.inf
    t.bandwidth_log_lower = -math.inf
    t.save(tmp_path)
    import json

    layout = json.loads((tmp_path / "table/table.json").read_text())
    assert layout["qhat"] == "inf" and layout["bandwidth_log_lower"] == "-inf"
    assert layout["shape"] == [3, 2, 2, 1, 3, 1, 2] and layout["n_partitions"] == 4
    back = Table.from_layout(layout, lambda rel: tmp_path / rel)
    assert back.qhat == math.inf and back.bandwidth_log_lower == -math.inf
    assert back.edges == EDGES and back.slo_ms == 300.0 and back.alpha == 0.1
    layout["slo_ms"] = None
    assert Table.from_layout(layout, lambda rel: tmp_path / rel).slo_ms is None


@pytest.mark.parametrize(("alpha", "ok"), [(0.0, False), (1.0, False), (1e-9, True), (0.999, True)])
def test_alpha_limits_at_load(tmp_path, alpha: float, ok: bool) -> None:
    import json

    t = _table(EDGES)
    t.save(tmp_path)
    layout = json.loads((tmp_path / "table/table.json").read_text())
    layout["alpha"] = alpha
    if ok:
        assert Table.from_layout(layout, lambda rel: tmp_path / rel).alpha == alpha
    else:
        with pytest.raises(BundleError, match="alpha"):
            Table.from_layout(layout, lambda rel: tmp_path / rel)
