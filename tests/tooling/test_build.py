"""`carboncp build`: both Q_θ objectives reported, the better kept, table + qnet sections."""

from __future__ import annotations

import json

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.policy import TablePolicy
from carboncp.runtime.decision.table import Table
from carboncp.runtime.errors import CarbonCPError, ConfigError
from carboncp.runtime.signals.traces import shipped_carbon_path
from carboncp.tooling.build import build_bundle, select_q, train_and_compile
from carboncp.tooling.table_build import load_qnet

from tests.support.decision import make_bundle, scaled_bandwidth_file


def test_train_and_compile_writes_verified_sections(tmp_path) -> None:
    bw = scaled_bandwidth_file(tmp_path / "fast.txt", scale=10.0)
    root = make_bundle(tmp_path / "b")
    res = train_and_compile(
        root, shipped_carbon_path("DE-LU"), shipped_carbon_path("GB"), bw,
        days=10, max_epochs=4, progress=False,
    )  # fmt: skip
    assert set(res["reports"]) == {"ce", "regression"}
    b = Bundle.load(root)
    t = Table.from_bundle(b)
    assert t.meta["q_objective"] == res["selected"]
    assert set(t.meta["q_selection"]["held_out"]) == {"ce", "regression"}
    assert load_qnet(b).objective == res["selected"]
    # the device's policy decides from the stored table exactly as the table says
    pol = TablePolicy.from_bundle(b, mode="M", online="split")
    x = res["replay"].x_seen[-50:]
    for row, cell, lcell in zip(x.tolist(), t.cells(x), t.latency_cells(x), strict=True):
        d = pol.decide_row(tuple(row))
        s = t.scores[cell].astype(float)
        cand = tuple(int(p) for p in np.flatnonzero(s <= t.qhat))
        kept = [p for p in cand if t.guard_ok()[lcell][p]] or list(cand)
        assert (d.cell, d.candidates) == (cell, cand)
        assert d.partition == min(kept, key=lambda p: (s[p], p))
    layout = json.loads((root / "table/table.json").read_text())
    assert layout["alpha"] == 0.1


def test_select_q_rule() -> None:
    a = {"carbon_g": 1.0, "objective_j": 1.0, "slo_violation_rate": 0.3}
    b = {"carbon_g": 2.0, "objective_j": 1.0, "slo_violation_rate": 0.05}
    assert select_q({"ce": a, "regression": b}, 0.1)[0] == "regression"
    assert select_q({"ce": {**a, "slo_violation_rate": 0.0}, "regression": b}, 0.1)[0] == "ce"
    assert (
        select_q({"ce": a, "regression": {**b, "slo_violation_rate": 0.2}}, 0.1)[0] == "regression"
    )


def test_build_refuses_bad_options(tmp_path) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        build_bundle(out=tmp_path / "x", alpha=0.0)
    with pytest.raises(CarbonCPError, match="both"):
        build_bundle(out=tmp_path / "x", device_carbon=shipped_carbon_path("GB"))


@pytest.mark.slow
def test_build_on_the_tiny_bundle(tiny_bundle_copy) -> None:
    model = Bundle.load(tiny_bundle_copy).model_name
    out = build_bundle(
        model=model, out=tiny_bundle_copy, device_profile="host", quick_profile=True,
        progress=False, days=7, max_epochs=3,
    )  # fmt: skip
    b = Bundle.load(out)
    assert {"profile", "objective", "table", "qnet"} <= set(b.manifest["sections"])
    t = Table.from_bundle(b)
    assert t.n_partitions == b.last + 1
    # ... and `evaluate` runs on it (a small replay) with the metrics.json shape.
    from carboncp.tooling.evaluate import POLICIES, evaluate

    res = out / "eval"
    evaluate(
        out, shipped_carbon_path("DE-LU"), shipped_carbon_path("GB"),
        shipped_carbon_path("GB").parent.parent / "bandwidth" / "norway_bus_1", res,
        days=7, plots=False, progress=False,
    )  # fmt: skip
    data = json.loads((res / "metrics.json").read_text())
    assert set(data["policies"]) == set(POLICIES) and data["n_test"] > 0


def test_build_bundle_reuses_export_and_profile(tmp_path) -> None:
    bw = scaled_bandwidth_file(tmp_path / "fast.txt", scale=10.0)
    root = make_bundle(tmp_path / "b")
    toml = tmp_path / "objective.toml"
    toml.write_text('slo_ms = 250.0\ndeadline_rule = "slack"\nearly_abandon_ms = 40.0\n')
    out = build_bundle(
        model="resnet18-hand", out=root, objective=toml, reuse_profile=True, progress=False,
        device_carbon=shipped_carbon_path("DE-LU"), server_carbon=shipped_carbon_path("GB"),
        bandwidth=bw, days=7, max_epochs=3,
    )  # fmt: skip
    b = Bundle.load(out)
    assert b.section("objective")["slo_ms"] == 250.0
    assert b.section("objective")["early_abandon_ms"] == 40.0
    assert Table.from_bundle(b).slo_ms == 250.0
