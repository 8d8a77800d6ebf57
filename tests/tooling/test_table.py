"""The threshold table: bins where decisions change, coverage of the table's own sets on
every shipped zone, storage in the bundle (sha256, allow_pickle=False), size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.conformal import split_threshold
from carboncp.runtime.decision.table import Table
from carboncp.runtime.errors import BundleError
from carboncp.tooling.table_build import (
    calibrate_from_replay,
    choose_edges,
    decision_flips,
    split_indices,
    write_table,
)

from tests.support.decision import cost_model, make_bundle, small_replay, trained


def test_edges_follow_decision_flips_not_training_quantiles() -> None:
    cm = cost_model()
    rp = small_replay(cm, days=7, bandwidth_scale=10.0)
    x = rp.x_seen[split_indices(rp, "train")]
    edges, why = choose_edges(cm, x)
    flips = decision_flips(cm, x, 0)
    assert flips.size > 0
    # Bandwidth edges lie inside the range where the oracle's choice flips.
    assert edges[0] and min(edges[0]) >= flips.min() - 1e-6 and max(edges[0]) <= flips.max() + 1e-6
    assert edges[1] == [] and "constant" in why["rtt_ms"]  # the seen RTT never varies
    # Carbon edges may sit above every training value (an unseen, dirtier zone keeps bins).
    assert all(e >= 0 for e in edges[4])


@pytest.mark.parametrize("zone", ["DE-LU", "GB", "US-CAL-CISO"])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_table_sets_cover_on_each_zones_test_period(zone: str, alpha: float) -> None:
    _cm, rp, _, table = trained(zone, "GB" if zone != "GB" else "DE-LU")
    calibrate_from_replay(table, rp, "cal", alpha)
    te = split_indices(rp, "test")
    s = table.scores[table.cells(rp.x_seen[te]), rp.label[te]].astype(np.float64)
    coverage = np.mean(s <= table.qhat)
    assert coverage >= 1 - alpha - 0.02, (zone, alpha, coverage)
    assert table.qhat == split_threshold(
        table.scores[table.cells(rp.x_seen[rp.splits["cal"]]), rp.label[rp.splits["cal"]]], alpha
    )


def test_table_roundtrip_through_the_bundle(tmp_path) -> None:
    _cm, rp, _, table = trained()
    calibrate_from_replay(table, rp, "cal", 0.1)
    root = make_bundle(tmp_path / "b")
    write_table(root, table)
    b = Bundle.load(root)  # verifies every sha256, the table's files included
    assert "table/scores.npy" in b.manifest["files"] and b.manifest["sections"]["table"]
    t2 = Table.from_bundle(b)
    assert np.array_equal(t2.scores, table.scores) and t2.scores.dtype == np.float16
    assert t2.qhat == pytest.approx(table.qhat) and t2.edges == table.edges
    assert np.array_equal(t2.cells(rp.x_seen[:100]), table.cells(rp.x_seen[:100]))
    assert t2.n_bytes() <= 1_000_000
    layout = json.loads((root / "table/table.json").read_text())
    assert layout["files"]["scores"]["dtype"] == "float16"
    # A tampered array is refused by the bundle's hash check.
    arr = np.load(root / "table/scores.npy")
    np.save(root / "table/scores.npy", arr * 2)
    with pytest.raises(BundleError, match=r"sha256|bytes"):
        Bundle.load(root)


def test_table_json_missing_key_is_a_bundle_error(tmp_path) -> None:
    _cm, rp, _, table = trained()
    calibrate_from_replay(table, rp, "cal", 0.1)
    table.save(tmp_path)
    layout = json.loads((tmp_path / "table/table.json").read_text())
    del layout["qhat"]
    with pytest.raises(BundleError, match="qhat"):
        Table.from_layout(layout, lambda rel: tmp_path / rel)
    layout = json.loads((tmp_path / "table/table.json").read_text())
    layout["format"] = "other/9"
    with pytest.raises(BundleError, match="format"):
        Table.from_layout(layout, lambda rel: tmp_path / rel)
