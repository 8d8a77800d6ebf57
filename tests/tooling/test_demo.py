"""`carboncp demo` end to end on the tiny bundle: build (quick), broker, server subprocess,
carbon replay over MQTT, the real runtime for mode A and the baselines, summary and plot;
decisions that change with carbon and with the link, each change put down to its cause."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.context import Context, Decision

from tests.support.mosquitto import require_mosquitto
from tests.support.requires import require

RPI4 = Path(__file__).resolve().parents[2] / "tooling" / "device_profiles" / "rpi4.toml"


def slow_device_profile(tmp_path: Path) -> Path:
    """The rpi4 profile with the tiny net pinned to 90 ms on the device and 10 ms on the
    server (as ResNet-18 on a Pi and on an edge server): on the real rpi4 profile the tiny net
    runs in about a millisecond, so local execution wins in every context and nothing could
    change. Pinned (reference_model = the bundle's model) rather than scaled, so that the
    costs do not depend on how busy this machine is while it profiles."""
    text = RPI4.read_text()
    text = text.replace('reference_model = "resnet18"', 'reference_model = "tiny_net"')
    text = re.sub(
        r"(?m)^reference_full_model_ms = 123\.12$", "reference_full_model_ms = 90.0", text
    )
    text = re.sub(r"(?m)^reference_full_model_ms = 8\.2$", "reference_full_model_ms = 10.0", text)
    text = text.replace('name = "rpi4"', 'name = "slow-test-device"')
    assert text.count('"tiny_net"') == 2 and "= 90.0" in text and "= 10.0" in text
    path = tmp_path / "slow-device.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_demo_on_the_tiny_bundle(tiny_bundle_copy, tmp_path, capsys):
    require_mosquitto()
    require("matplotlib", "it draws demo.png (tooling extra)")
    from carboncp.tooling.demo import CAUSES, DemoConfig, run_demo

    # 48 steps over 32 h (carbon moves at 2 of 3 steps), the link trace walked 5 times (16 s
    # of it per step: consecutive rates nearly independent, no position repeated)
    steps = 48
    cfg = DemoConfig(
        out_dir=tmp_path / "out", bundle=tiny_bundle_copy, model="tiny_net", steps=steps,
        hours=32, scale=None, device_profile=slow_device_profile(tmp_path), bandwidth_passes=5,
        extra={"quick_profile": True, "days": 14, "max_epochs": 5}, progress=False,
    )  # fmt: skip
    summary = run_demo(cfg)
    b = Bundle.load(tiny_bundle_copy)
    assert b.section("table") is not None  # built on the first run ...
    marker = json.loads((tiny_bundle_copy / "demo-build.json").read_text())
    assert marker["settings"]["scale"] == "auto" and marker["scale_used"] == summary["scale"]
    # the device's zone and the server's are the table's training traces
    build = b.section("table")["meta"]["build"]
    zones = {cfg.device_zone: "live", cfg.server_zone: "live"}
    assert f"{cfg.device_zone}_" in build["device_carbon"]
    assert f"{cfg.server_zone}_" in build["server_carbon"]
    pols = summary["policies"]
    assert set(pols) == {"A", "local", "server"}
    assert all(p["inferences"] == steps for p in pols.values())
    assert pols["local"]["offloaded_share"] == 0.0 and pols["local"]["carbon_vs_local"] == 1.0
    assert pols["server"]["partition_counts"][0] == steps

    # The scenario the cost model chose expects several carbon-driven changes in the window
    # (a property of the analysis, not of this run) ...
    assert summary["scenario"]["expected_carbon_changes"] >= 3.0
    # ... and mode A's decisions do change, some moved by carbon, some by the link.
    recs = {}
    for name in pols:
        lines = (cfg.out_dir / f"records-{name}.jsonl").read_text().splitlines()
        recs[name] = [json.loads(line) for line in lines]
        assert len(recs[name]) == steps
        assert all(r["carbon_state"] == zones for r in recs[name])
    parts = np.array([r["partition"] for r in recs["A"]])
    assert len(set(parts.tolist())) >= 2, parts
    by = pols["A"]["changes_by"]
    assert set(CAUSES) <= set(by)
    assert sum(by.values()) == pols["A"]["decision_changes"] == int(np.sum(parts[1:] != parts[:-1]))
    # carbon moves decisions; the link can too, but with steps hours apart the probe gate
    # seldom pays for a probe, so a run may see no link-driven change (README, the demo)
    assert by["carbon"] >= 1, by
    # a carbon-driven change happens at a step where carbon moved; a link-driven one where the
    # link estimate moved (the attribution re-decides with one of them undone)
    ctx = [r["seen"] for r in recs["A"]]
    carbon_keys = ("device_gco2_per_kwh", "server_gco2_per_kwh")
    moved_carbon = [any(ctx[k][f] != ctx[k - 1][f] for f in carbon_keys) for k in range(1, steps)]
    moved_link = [ctx[k]["bandwidth_mbps"] != ctx[k - 1]["bandwidth_mbps"] for k in range(1, steps)]
    assert sum(moved_carbon) >= by["carbon"] and sum(moved_link) >= by["link"]
    assert "changes_by" not in pols["local"] or not pols["local"]["changes_by"]

    # The headline: mode A's carbon against both baselines, as the records sum it (the
    # profile's carbon of each inference, `model`), without and with the link probes charged
    # to the inferences they preceded; its SLO violations, its regret against the causal
    # reference (docs/METHOD.md §4), and the latency and battery it traded.
    probe = {n: [r["model"]["probe_energy_j"] * r["realised"]["device_gco2_per_kwh"] / 3.6e6
                 for r in rs] for n, rs in recs.items()}  # fmt: skip
    total = {n: sum(r["model"]["carbon_g"] for r in rs) for n, rs in recs.items()}
    carbon = {n: total[n] - sum(probe[n]) for n in recs}
    h = summary["headline"]
    assert h["policy"] == "A"
    assert h["probes"] == sum(r["probe"] is not None for r in recs["A"]) >= 1
    # a probe is due before every step after a local run: each ran or the gate refused it
    assert h["probes_skipped"] == sum(r["probe_skipped"] is not None for r in recs["A"])
    due = sum(not r["offloaded"] for r in recs["A"][:-1]) + 1
    assert h["probes"] + h["probes_skipped"] == due
    assert h["probe_carbon_mg"] == pytest.approx(1000.0 * sum(probe["A"]))
    for base in ("local", "server"):
        want = 100.0 * (1.0 - carbon["A"] / carbon[base])
        assert h[f"saving_vs_{base}_pct"] == pytest.approx(want, rel=1e-6, abs=1e-9)
        want = 100.0 * (1.0 - total["A"] / total[base])
        assert h[f"saving_vs_{base}_with_probes_pct"] == pytest.approx(want, rel=1e-6, abs=1e-9)
        assert pols["A"][f"carbon_vs_{base}"] == pytest.approx(total["A"] / total[base])
        assert h[f"{base}_slo_violation_share"] == pols[base]["slo_violation_share"]
    slo = summary["objective"]["slo_ms"]
    lat_a = [r["model"]["latency_ms"] for r in recs["A"]]
    assert h["slo_violation_share"] == pytest.approx(np.mean([t > slo for t in lat_a]))
    ref = summary["references"]
    assert ref["cells"] == len({r["cell"] for r in recs["A"]}) and ref["steps"] == steps
    for key in ("regret_pct", "j_regret_pct"):
        assert np.isfinite(h[key]) and h[key] == ref[key]
    c_pol, c_ref = ref["policy"]["carbon_mg"], ref["causal_best"]["carbon_mg"]
    assert h["regret_pct"] == pytest.approx(100.0 * (c_pol - c_ref) / c_ref)
    # the causal reference fixes one partition per cell: never a lower J than the per-step
    # oracle (whose partitions are feasible wherever any is) ...
    assert ref["oracle"]["objective_j"] <= ref["causal_best"]["objective_j"] + 1e-9
    # ... and the policy's own partitions, priced like the reference's, are the records'
    # (their modelled carbon less the probes', where no transfer fell back)
    if not any(r["fallbacks"] for r in recs["A"]):
        assert c_pol == pytest.approx(1000.0 * carbon["A"], rel=1e-6)

    assert (cfg.out_dir / "demo.png").stat().st_size > 10_000
    assert json.loads((cfg.out_dir / "summary.json").read_text())["policies"].keys() == pols.keys()
    out = capsys.readouterr().out
    assert "emulated slow-test-device device" in out
    assert f"x {summary['scale']:g}" in out
    assert re.search(r"A: \d+ decision changes: caused by carbon \d+, by the link \d+", out)
    lines = out.splitlines()
    for start, suffix in (("carbon of the inferences: ", ""), ("link probes: ", "_with_probes")):
        line = next(ln for ln in lines if ln.strip().startswith(start))
        for base in ("local", "server"):
            pct = h[f"saving_vs_{base}{suffix}_pct"]
            assert f"{abs(pct):.1f}% {'less' if pct >= 0 else 'more'} than {base}-only" in line
    assert "regret against the causal reference" in out and f"carbon {h['regret_pct']:+.1f}%" in out
    assert "SLO violations: " in out and "trade-offs: mean latency" in out
    # ... and reused, not rebuilt, on the second run
    cfg.steps = 4
    again = run_demo(cfg)
    assert again["policies"]["A"]["inferences"] == 4
    assert again["scale"] == summary["scale"]


class ThresholdPolicy:
    """Offload (p = 0) when the link is above a threshold that carbon sets, else local (3);
    `bias` stands for the policy's own state (a conformal threshold that moved)."""

    def __init__(self):
        self.bias = 0.0
        self.n_decisions = 0
        self.n_guard_relaxed = 0
        self.rng = random.Random(0)
        self.observed = 0

    def decide(self, seen: Context) -> Decision:
        self.n_decisions += 1
        self.rng.random()
        b_star = 10.0 * seen.server_gco2_per_kwh / seen.device_gco2_per_kwh + self.bias
        p = 0 if seen.bandwidth_mbps > b_star else 3
        return Decision(p, (p,), "A", None, ())

    def observe(self, decision, seen, realised) -> None:
        self.observed += 1


def ctx(bw: float, i_d: float, i_s: float) -> Context:
    return Context(bw, 5.0, 0.0, 0.0, i_d, i_s, 100.0)


def test_attribution_names_what_moved_each_change():
    from carboncp.tooling.demo import AttributedPolicy

    inner = ThresholdPolicy()
    pol = AttributedPolicy(inner)
    seq = [
        (ctx(25.0, 100, 200), None),  # B* 20: offload
        (ctx(25.0, 100, 300), "carbon"),  # B* 30: local; the link did not move
        (ctx(35.0, 100, 300), "link"),  # offload; carbon did not move
        (ctx(35.0, 100, 300), None),  # nothing moved, no change
        (ctx(25.0, 100, 200), None),  # both moved, but the decision stays offload
        (ctx(15.0, 100, 300), "both"),  # 25 -> 15 alone flips it, B* 20 -> 30 alone too
        (ctx(25.0, 100, 200), "both"),  # neither alone (15 < 20, 25 < 30), together yes
    ]
    for seen, cause in seq:
        pol.decide(seen)
        assert pol.causes[-1] == cause, (seen, pol.causes)
    inner.bias = 10.0  # the policy's own state moves: B* 30 > 25 -> local
    pol.decide(ctx(25.0, 100, 200))
    assert pol.causes[-1] == "other"
    # the what-if decisions left the policy's counters and RNG as the real decisions alone would
    ref = ThresholdPolicy()
    for seen, _ in [*seq, (ctx(25.0, 100, 200), None)]:
        ref.decide(seen)
    assert inner.n_decisions == ref.n_decisions == len(seq) + 1
    assert inner.rng.random() == ref.rng.random()
    pol.observe(None, None, None)
    assert inner.observed == 1


def test_the_demo_link_estimate_forgets_earlier_steps() -> None:
    # Steps are hours apart in emulated time and milliseconds apart on the wall clock: the
    # estimator's window must age on emulated time, or every step would average all earlier
    # steps' transfers and the link would hardly move a decision.
    from carboncp.runtime.signals.bandwidth import BandwidthEstimator
    from carboncp.tooling.demo.attribution import VirtualClock
    from carboncp.tooling.demo.session import _emulated_clock

    clock = VirtualClock(1_000_000.0)
    est = BandwidthEstimator(initial_mbps=20.0, initial_rtt_ms=5.0, clock=_emulated_clock(clock))
    est.update(100.0, 5.0)
    clock.t_s += 2.3 * 3600  # the next step
    est.update(2.0, 5.0)
    assert est.bandwidth_mbps == pytest.approx(2.0)
