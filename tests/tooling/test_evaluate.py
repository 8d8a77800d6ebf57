"""`carboncp evaluate`: metrics.json shape, policies, shift block, plots, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from carboncp.runtime.cli import main as cli_main
from carboncp.runtime.errors import ConfigError, TraceError
from carboncp.runtime.signals.traces import shipped_carbon_path
from carboncp.tooling.build import train_and_compile
from carboncp.tooling.evaluate import POLICIES, evaluate

from tests.support.decision import make_bundle, scaled_bandwidth_file

KEYS = {
    "carbon_g", "latency_ms_mean", "latency_ms_p95", "slo_violation_rate", "battery_pct",
    "coverage", "mean_set_size", "regret_pct", "regret_oracle_pct", "decision_error_rate",
}  # fmt: skip
DE, GB, US = (shipped_carbon_path(z) for z in ("DE-LU", "GB", "US-CAL-CISO"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("eval")
    bw = scaled_bandwidth_file(d / "fast_link.txt", scale=10.0)
    root = make_bundle(d / "bundle")
    train_and_compile(root, DE, GB, bw, days=14, max_epochs=6, progress=False)
    return root, bw


def test_metrics_json_has_the_issue_shape(built, tmp_path) -> None:
    root, bw = built
    m = evaluate(root, DE, GB, bw, tmp_path, days=14, progress=False)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["alpha"] == 0.1 and data["n_test"] == m["n_test"] > 0
    assert set(data["policies"]) == set(POLICIES)
    for name, pm in data["policies"].items():
        assert set(pm) >= KEYS, name
        has_sets = name.startswith("carboncp") or name == "known_bandwidth"
        assert (pm["coverage"] is not None) == has_sets
    assert "shift" not in data
    pol = data["policies"]
    assert pol["causal_best"]["regret_pct"] == 0
    assert pol["oracle"]["decision_error_rate"] == 0
    assert pol["local_only"]["carbon_g"] > pol["oracle"]["carbon_g"]  # offloading pays here
    assert 0 <= pol["carboncp_a"]["coverage"] <= 1
    assert "local_only" in data["reductions_pct"]["carboncp_a"]
    for png in ("cumulative_carbon", "partition_vs_carbon", "coverage_vs_alpha", "set_size_hist"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000


def test_shift_block_only_with_calibration_traces(built, tmp_path) -> None:
    root, bw = built
    evaluate(
        root, US, GB, bw, tmp_path, days=14, calibrate_device_carbon=DE, plots=False, progress=False
    )
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert {"split_cp_coverage", "weighted_cp_coverage", "aci_coverage", "weighted_cp_ess"} <= set(
        data["shift"]
    )
    assert data["scenario"]["calibrate_device_carbon"].endswith(DE.name)


def test_bad_alpha_and_bad_traces(built, tmp_path) -> None:
    root, bw = built
    with pytest.raises(ConfigError, match="alpha"):
        evaluate(root, DE, GB, bw, tmp_path, alpha=1.5, days=7, progress=False)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TraceError):
        evaluate(root, empty, GB, bw, tmp_path, days=7, progress=False)
    with pytest.raises(TraceError):
        evaluate(root, DE, GB, tmp_path / "missing_trace", tmp_path, days=7, progress=False)


def test_cli_prints_errors_without_traceback(built, tmp_path, capsys) -> None:
    root, bw = built
    base = ["evaluate", str(root), "--device-carbon", str(DE), "--server-carbon", str(GB),
            "--bandwidth", str(bw), "--out", str(tmp_path), "--days", "7", "--quiet"]  # fmt: skip
    assert cli_main([*base, "--alpha", "0"]) == 2
    err = capsys.readouterr().err
    assert "alpha" in err and "Traceback" not in err
    assert cli_main([*base, "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "carboncp_a" in out and (tmp_path / "metrics.json").is_file()
