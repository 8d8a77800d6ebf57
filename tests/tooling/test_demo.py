"""`carboncp demo` end to end on the tiny bundle: build (quick), broker, server subprocess,
carbon replay over MQTT, the real runtime for mode A and the baselines, summary and plot."""

from __future__ import annotations

import json

import pytest
from carboncp.runtime.bundle import Bundle

from tests.support.mosquitto import require_mosquitto

pytestmark = pytest.mark.slow


def test_demo_on_the_tiny_bundle(tiny_bundle_copy, tmp_path, capsys):
    require_mosquitto()
    pytest.importorskip("matplotlib", reason="matplotlib (tooling extra) draws demo.png")
    from carboncp.tooling.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out_dir=tmp_path / "out", bundle=tiny_bundle_copy, model="tiny_net", steps=16, hours=8,
        extra={"quick_profile": True, "days": 7, "max_epochs": 2}, progress=False,
    )  # fmt: skip
    summary = run_demo(cfg)
    b = Bundle.load(tiny_bundle_copy)
    assert b.section("table") is not None  # built on the first run ...
    assert (tiny_bundle_copy / "demo-build.json").is_file()
    pols = summary["policies"]
    assert set(pols) == {"A", "local", "server"}
    assert all(p["inferences"] == 16 for p in pols.values())
    assert pols["local"]["offloaded_share"] == 0.0 and pols["local"]["carbon_vs_local"] == 1.0
    assert pols["server"]["partition_counts"][0] == 16
    for name in pols:
        lines = (cfg.out_dir / f"records-{name}.jsonl").read_text().splitlines()
        recs = [json.loads(line) for line in lines]
        assert len(recs) == 16
        assert all(r["carbon_state"] == {"DE-LU": "live", "GB": "live"} for r in recs)
    assert (cfg.out_dir / "demo.png").stat().st_size > 10_000
    assert json.loads((cfg.out_dir / "summary.json").read_text())["policies"].keys() == pols.keys()
    out = capsys.readouterr().out
    assert "emulated Raspberry Pi 4" in out and "x 15" in out
    # ... and reused, not rebuilt, on the second run
    cfg.steps = 4
    again = run_demo(cfg)
    assert again["policies"]["A"]["inferences"] == 4
