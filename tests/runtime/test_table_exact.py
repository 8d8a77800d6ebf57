"""The threshold table's arithmetic pinned exactly (docs/TABLE.md): row-major strides and cells,
the latency cell inside a cell, the SLO guard at its boundary, the bandwidth bound, storage
of +∞, and the load-time checks at their limits."""

from __future__ import annotations

import json
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


def test_latency_strides_are_zero_off_the_latency_features() -> None:
    idx = CellIndex(_table(EDGES))
    assert idx.lat_strides == [4, 2, 1, 1, 0, 0, 0]


def test_bandwidth_levels_with_and_without_quantiles() -> None:
    t = _table(EDGES)
    assert t.bandwidth_levels() == []
    t.bandwidth_log_quantiles = np.array([-1.0, -0.5, 0.0, 0.5])
    assert t.bandwidth_levels() == [0.125, 0.375, 0.625, 0.875]
    t.bandwidth_log_quantiles = np.array([0.0])
    assert t.bandwidth_levels() == [0.5]


def test_out_of_support_at_and_beyond_the_bounds() -> None:
    """Inside means lo <= x <= hi per feature: both bounds are inside, the next float
    beyond either is out; NaN is out; no support: nothing is out."""
    t = _table(EDGES)
    x = np.array([[5.0, 20.0, 0.5, 0.5, 300.0, 100.0, 50.0]])
    assert t.out_of_support(x).tolist() == [False]
    lo = np.array([1.0, 10.0, 0.0, 0.0, 100.0, 50.0, 20.0])
    hi = np.array([9.0, 40.0, 1.0, 1.0, 500.0, 150.0, 90.0])
    t.support = np.stack([lo, hi])
    rows = [x[0], lo, hi]
    want = [False, False, False]
    for f in range(7):
        for v, out in ((np.nextafter(lo[f], -np.inf), True), (np.nextafter(hi[f], np.inf), True),
                       (math.nan, True)):  # fmt: skip
            r = x[0].copy()
            r[f] = v
            rows.append(r)
            want.append(out)
    assert t.out_of_support(np.array(rows)).tolist() == want
    assert t.out_of_support(lo).tolist() == [False]  # one (7,) row
    t.support = None
    assert t.out_of_support(np.array(rows)).tolist() == [False] * len(rows)


def test_save_creates_missing_parents_and_overwrites(tmp_path) -> None:
    t = _table(EDGES)
    root = tmp_path / "a" / "b"
    files = t.save(root)
    assert files[0] == "table/table.json" and (root / "table" / "scores.npy").is_file()
    t.qhat = 0.25
    t.save(root)  # again into the existing directory
    back = Table.from_layout(
        json.loads((root / "table/table.json").read_text()), lambda rel: root / rel
    )
    assert back.qhat == 0.25


def test_a_pickled_array_is_never_loaded(tmp_path) -> None:
    """An object (pickled) .npy in place of an array is refused as unreadable: np.load must
    not unpickle it (a pickle runs code), even when the layout names the object dtype."""
    t = _table(EDGES)
    t.save(tmp_path)
    obj = np.empty(10, dtype=object)
    obj[:] = [0.0] * 10
    np.save(tmp_path / "table" / "cal_scores.npy", obj, allow_pickle=True)
    layout = json.loads((tmp_path / "table/table.json").read_text())
    layout["files"]["cal_scores"]["dtype"] = "object"
    with pytest.raises(BundleError, match="unreadable table array"):
        Table.from_layout(layout, lambda rel: tmp_path / rel)


def _reload(t: Table, tmp_path):
    t.save(tmp_path)
    layout = json.loads((tmp_path / "table/table.json").read_text())
    return Table.from_layout(layout, lambda rel: tmp_path / rel)


def test_latency_table_of_the_wrong_shape_is_refused(tmp_path) -> None:
    t = _table(EDGES)
    t.latency_ms = np.zeros((12, 5), np.float16)  # 2-D, one partition too many
    with pytest.raises(BundleError, match="latency_ms"):
        _reload(t, tmp_path)
    t.latency_ms = np.zeros((11, 4), np.float16)  # one latency cell short
    with pytest.raises(BundleError, match="latency_ms"):
        _reload(t, tmp_path)


@pytest.mark.parametrize(
    ("q", "ok"),
    [
        ([0.0], True),  # one quantile
        ([-1.0, 0.0, 0.0, 1.0], True),  # equal neighbours are non-decreasing
        (list(np.linspace(-2.0, 1.0, 16)), True),  # the most a table may carry
        (list(np.linspace(-2.0, 1.0, 17)), False),
        ([], False),
        ([0.0, -1e-9], False),
        ([0.0, math.inf], False),
        ([[0.0, 1.0]], False),  # not 1-D
    ],
)
def test_bandwidth_quantiles_limits_at_load(tmp_path, q, ok: bool) -> None:
    t = _table(EDGES)
    t.bandwidth_log_quantiles = np.array(q, dtype=np.float64)
    if ok:
        assert _reload(t, tmp_path).bandwidth_log_quantiles.tolist() == q
    else:
        with pytest.raises(BundleError, match="bandwidth_log_quantiles"):
            _reload(t, tmp_path)


@pytest.mark.parametrize(
    ("change", "ok"),
    [
        ("none", True),
        ("equal", True),  # lo == hi: one seen value
        ("infinite", True),  # a feature the table does not bin
        ("crossed", False),
        ("nan_low", False),
        ("nan_high", False),
        ("shape", False),
    ],
)
def test_support_limits_at_load(tmp_path, change: str, ok: bool) -> None:
    lo = np.array([1.0, 10.0, 0.0, 0.0, 100.0, 50.0, 20.0])
    hi = np.array([9.0, 40.0, 1.0, 1.0, 500.0, 150.0, 90.0])
    if change == "equal":
        hi[3] = lo[3]
    elif change == "infinite":
        lo[5], hi[5] = -math.inf, math.inf
    elif change == "crossed":
        lo[6] = hi[6] + 1e-9
    elif change == "nan_low":
        lo[2] = math.nan
    elif change == "nan_high":
        hi[4] = math.nan
    sup = np.stack([lo, hi])
    t = _table(EDGES)
    t.support = sup[:, :6] if change == "shape" else sup
    if ok:
        np.testing.assert_array_equal(_reload(t, tmp_path).support, sup)
    else:
        with pytest.raises(BundleError, match="support"):
            _reload(t, tmp_path)
