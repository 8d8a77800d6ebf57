"""The default build's mixture (issue 9 item 1): every shipped link at every scale x every
ordered pair of shipped zones, chronological splits within each component, the ranges it
covers, and several traces of each kind reaching the build from the command line."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from carboncp.runtime.cli import main as cli_main
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.signals.traces import (
    load_carbon_csv,
    shipped_bandwidth_names,
    shipped_bandwidth_path,
    shipped_carbon_path,
    shipped_carbon_zones,
)
from carboncp.tooling.mixture import (
    DEFAULT_SCALES,
    components,
    default_components,
    make_mixture_replay,
    parse_scales,
    summary,
)

from tests.support.cost_fixtures import resnet18_like_profile
from tests.support.decision import make_bundle, scaled_bandwidth_file


@pytest.fixture(scope="module")
def mix():
    cm = CostModel(resnet18_like_profile(), Objective())
    return make_mixture_replay(cm, default_components(), events_per_component=40, seed=3)


def test_default_components_cover_every_shipped_pair_link_and_scale() -> None:
    zones = [shipped_carbon_path(z) for z in shipped_carbon_zones()]
    links = [shipped_bandwidth_path(n) for n in shipped_bandwidth_names()]
    assert len(zones) == 3 and len(links) == 6 and DEFAULT_SCALES == (1.0, 6.0, 30.0, 150.0)
    got = {
        (c.device_carbon, c.server_carbon, c.bandwidth, c.bandwidth_scale)
        for c in default_components()
    }
    assert got == set(itertools.product(zones, zones, links, DEFAULT_SCALES))
    assert len(default_components()) == 216


def test_the_mixture_replay_covers_every_component_and_the_ranges(mix) -> None:
    m = mix.meta["mixture"]
    assert m["n_components"] == 216 and m["events_per_component"] == 40
    assert len(mix) == 216 * 40 and np.bincount(mix.component).tolist() == [40] * 216
    s = summary(m)
    assert len(s["device_zones"]) == 3 and s["device_zones"] == s["server_zones"]
    assert s["bandwidth_scales"] == list(DEFAULT_SCALES)
    assert s["bandwidth_traces"] == shipped_bandwidth_names()
    # Bandwidth from outages and sub-Mbit/s 3G to several hundred Mbit/s.
    tx = mix.tx_mbps
    assert 0.005 < (tx == 0).mean() < 0.06  # the outage overlay (2% of trace rows)
    assert np.quantile(tx[tx > 0], 0.05) < 1.0 and tx.max() > 300.0
    assert {r["outage_overlay_share"] for r in m["components"]} == {0.02}
    assert np.quantile(mix.x_seen[:, 0], 0.95) > 100.0
    # Carbon: both sides span the three zones' ranges over the eight weeks.
    traces = [load_carbon_csv(shipped_carbon_path(z)) for z in shipped_carbon_zones()]
    lo = min(float(t.gco2_per_kwh.min()) for t in traces)
    hi = max(float(t.gco2_per_kwh.max()) for t in traces)
    for col in (4, 5):
        c = mix.x_true[:, col]
        assert c.min() < lo + 0.25 * (hi - lo) and c.max() > hi - 0.25 * (hi - lo)
    # Every ordered zone pair, same zone included, both directions.
    pairs = {(r["device_zone"], r["server_zone"]) for r in m["components"]}
    assert len(pairs) == 9
    # Loads and battery vary (the replay's processes), battery below and above 30 %.
    assert np.ptp(mix.x_true[:, 2]) > 0.5 and np.ptp(mix.x_true[:, 3]) > 0.5
    assert (mix.x_true[:, 6] < 30).mean() > 0.05 and (mix.x_true[:, 6] > 90).mean() > 0.05
    # Events spread over the slices' whole period.
    t0, t1 = m["components"][0]["period_s"]
    assert t1 - t0 == 8 * 7 * 86400
    assert mix.t_s.min() - t0 < 86400 * 3 and t1 - mix.t_s.max() < 86400 * 3


def test_splits_are_chronological_within_every_component(mix) -> None:
    tr, cal, te = (mix.splits[k] for k in ("train", "cal", "test"))
    # Contiguous in the concatenation: train, then calibration, then test.
    assert tr.max() < cal.min() and cal.max() < te.min()
    assert len(tr) + len(cal) + len(te) == len(mix)
    for c in range(216):
        at = mix.component == c
        t_tr, t_cal, t_te = (mix.t_s[np.intersect1d(np.flatnonzero(at), s)] for s in (tr, cal, te))
        assert (len(t_tr), len(t_cal), len(t_te)) == (20, 10, 10)
        assert t_tr.max() < t_cal.min() and t_cal.max() < t_te.min()
    # Within the training split, the events advance through every component's period
    # together, so its end (Q_θ's validation part) is the end of every component's training.
    t_rel = (mix.t_s[tr] - mix.t_s[tr].min()) / np.ptp(mix.t_s[tr])
    assert np.all(np.diff(t_rel) > -0.05)
    last = tr[-len(tr) // 5 :]
    t0, t1 = mix.meta["mixture"]["components"][0]["period_s"]
    assert ((mix.t_s[last] - t0) / (t1 - t0)).min() > 0.35  # train covers [0, 0.5)
    assert len(np.unique(mix.component[last])) > 180  # (4 events of each on average)


def test_the_replay_is_consistent_with_the_cost_model(mix) -> None:
    cm = CostModel(resnet18_like_profile(), Objective())
    idx = np.arange(0, len(mix), 97)
    costs = cm.evaluate(mix.x_true[idx])
    np.testing.assert_allclose(costs.objective, mix.costs.objective[idx])
    np.testing.assert_array_equal(cm.oracle(costs), mix.label[idx])


def test_user_traces_make_every_combination(tmp_path) -> None:
    a = scaled_bandwidth_file(tmp_path / "a.txt", scale=2.0)
    b = scaled_bandwidth_file(tmp_path / "b.txt", name="norway_metro_2", scale=5.0)
    de, gb = shipped_carbon_path("DE-LU"), shipped_carbon_path("GB")
    comps = components([de], [gb, de], [a, b], (1.0, 6.0))
    assert len(comps) == 8
    assert {(c.server_carbon, c.bandwidth, c.bandwidth_scale) for c in comps} == set(
        itertools.product([gb, de], [a, b], [1.0, 6.0])
    )
    # Own traces default to x1 without outage overlay; the shipped ones to the default scales.
    assert {(c.bandwidth_scale, c.outage_share) for c in components(de, gb, a)} == {(1.0, 0.0)}
    assert len(components(de, gb)) == 6 * 4
    assert parse_scales("1, 6,30") == (1.0, 6.0, 30.0)
    for bad in ("0", "-1", "x", "nan", ""):
        with pytest.raises(ValueError, match="scale"):
            parse_scales(bad)


def test_one_component_is_replayed_whole_as_before() -> None:
    from carboncp.tooling.replay import make_replay

    cm = CostModel(resnet18_like_profile(), Objective())
    de, gb = shipped_carbon_path("DE-LU"), shipped_carbon_path("GB")
    bw = shipped_bandwidth_path("norway_bus_1")
    one = make_mixture_replay(cm, components(de, gb, bw), days=3, seed=1)
    ref = make_replay(cm, de, gb, bw, days=3, seed=1)
    np.testing.assert_array_equal(one.x_seen, ref.x_seen)
    np.testing.assert_array_equal(one.label, ref.label)
    assert one.meta["mixture"]["n_components"] == 1


def test_several_bandwidth_and_carbon_flags_reach_the_build(tmp_path, monkeypatch) -> None:
    import carboncp.tooling.build as build

    got = {}

    def fake_build_bundle(**kw):
        got.update(kw)
        return tmp_path / "b"

    monkeypatch.setattr(build, "build_bundle", fake_build_bundle)
    argv = ["build", "--out", str(tmp_path / "b"), "--bandwidth", "a.txt", "--bandwidth", "b.txt",
            "--device-carbon", "x.csv", "--device-carbon", "y.csv", "--server-carbon", "z.csv",
            "--bandwidth-scale", "1,6,30", "--events-per-component", "50"]  # fmt: skip
    assert cli_main(argv) == 0
    assert got["bandwidth"] == ["a.txt", "b.txt"]
    assert got["device_carbon"] == ["x.csv", "y.csv"] and got["server_carbon"] == ["z.csv"]
    assert got["bandwidth_scales"] == (1.0, 6.0, 30.0) and got["events_per_component"] == 50


@pytest.mark.parametrize(
    "flags",
    [["--bandwidth-scale", "0"], ["--bandwidth-scale", "1,x"], ["--events-per-component", "3"]],
)
def test_build_refuses_bad_mixture_flags(tmp_path, capsys, flags) -> None:
    assert cli_main(["build", "--out", str(tmp_path / "b"), *flags]) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_a_mixture_build_records_its_components(tmp_path) -> None:
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.decision.table import Table
    from carboncp.tooling.build import train_and_compile

    a = scaled_bandwidth_file(tmp_path / "a.txt", scale=1.0)
    b = scaled_bandwidth_file(tmp_path / "b.txt", name="norway_metro_2", scale=1.0)
    root = make_bundle(tmp_path / "bundle")
    de, gb = shipped_carbon_path("DE-LU"), shipped_carbon_path("GB")
    res = train_and_compile(
        root, [de, gb], [gb], [a, b], bandwidth_scales=(1.0, 30.0), events_per_component=300,
        days=14, max_epochs=2, progress=False,
    )  # fmt: skip
    assert len(res["replay"]) == 8 * 300
    bundle = Bundle.load(root)
    doc = bundle.section("build")
    assert doc is not None and doc["format"] == "carboncp-build/1"
    assert bundle.manifest["carbon_signal"] == "average/direct"  # what the device will accept
    rows = doc["components"]
    assert len(rows) == 8 and {r["n_events"] for r in rows} == {300}
    assert {(r["device_zone"], r["bandwidth_scale"]) for r in rows} == set(
        itertools.product(["DE", "GB"], [1.0, 30.0])
    )
    assert {r["bandwidth"] for r in rows} == {str(a), str(b)}
    meta = Table.from_bundle(bundle).meta["build"]
    assert meta["mixture"]["n_components"] == 8 and meta["bandwidth"] == [str(a), str(b)]
    assert meta["server_carbon"] == str(gb)
    assert json.loads((root / "build.json").read_text())["bandwidth_scales"] == [1.0, 30.0]
    # ... and `evaluate` says what the bundle was built on.
    from carboncp.tooling.evaluate import evaluate

    m = evaluate(root, de, gb, a, tmp_path / "eval", days=7, plots=False, progress=False)
    built = m["scenario"]["bundle_built_on"]
    assert built["n_components"] == 8 and built["bandwidth_scales"] == [1.0, 30.0]
