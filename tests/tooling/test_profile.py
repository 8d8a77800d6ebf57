"""Device profiles, the background load generator, and `carboncp profile` on a real bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.cli import main
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.decision.profile import load_profile
from carboncp.runtime.errors import ConfigError
from carboncp.tooling.loadgen import BackgroundLoad
from carboncp.tooling.profile import (
    device_profile_names,
    load_device_profile,
    profile_bundle,
    resolve_device_profile,
)


def test_shipped_device_profiles_load_with_sources() -> None:
    assert device_profile_names() == ["host", "jetson-orin-nano", "rpi4"]
    for name in device_profile_names():
        dp = load_device_profile(name)
        assert dp.p_active_mw > dp.p_idle_mw > 0 and dp.battery_wh > 0
        text = resolve_device_profile(name).read_text(encoding="utf-8")
        # Every figure is commented: a source, or honestly an assumption/estimate.
        assert any(w in text for w in ("Source", "ASSUMPTION", "ESTIMATE"))
    assert load_device_profile("host").measured
    rpi = load_device_profile("rpi4")
    assert not rpi.measured and rpi.reference_model == "resnet18"


def test_latency_scale_uses_the_published_figure_for_its_model() -> None:
    rpi = load_device_profile("rpi4")
    s, how = rpi.latency_scale("resnet18", 10.0)
    assert s == pytest.approx(rpi.reference_full_model_ms / 10.0) and "published" in how
    s, how = rpi.latency_scale("mobilenet_v2", 10.0)
    assert s == rpi.fallback_scale and "fallback" in how
    assert load_device_profile("host").latency_scale("resnet18", 10.0)[0] == 1.0
    # The edge server is anchored to its reference full-model latency the same way.
    s, how = rpi.server_scale("resnet18", 41.0)
    assert s == pytest.approx(8.2 / 41.0) and "reference" in how
    assert rpi.server_scale("mobilenet_v2", 41.0)[0] == rpi.server_latency_scale
    assert load_device_profile("host").server_scale("resnet18", 41.0)[0] == 1.0


def _dp(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "dev.toml"
    p.write_text(text, encoding="utf-8")
    return p


GOOD = 'p_active_mw = 5000\np_idle_mw = 2000\nradio = "lte"\nbattery_wh = 10\n'


@pytest.mark.parametrize(
    "text,match",
    [
        (GOOD + "colour = 1\n", "unknown key 'colour'"),
        (GOOD + "[latency]\nscale = 2\n", "unknown key 'latency.scale'"),
        (GOOD.replace('"lte"', '"5g"'), "'radio'"),
        (GOOD.replace("battery_wh = 10", "battery_wh = -1"), "'battery_wh'"),
        (GOOD.replace("p_idle_mw = 2000\n", ""), "missing key 'p_idle_mw'"),
        (GOOD + "[latency]\nmeasured = false\nfallback_scale = 0\n", "'latency.fallback_scale'"),
        (GOOD + "[server]\np_marginal_mw = 'lots'\n", "'server.p_marginal_mw'"),
        (GOOD + "[server]\nreference_full_model_ms = 0\n", "'server.reference_full_model_ms'"),
        ("p_active_mw = = 1\n", "not valid TOML"),
    ],
)
def test_bad_device_profiles_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_device_profile(_dp(tmp_path, text))


def test_device_profile_by_path_and_bad_names(tmp_path: Path) -> None:
    dp = load_device_profile(_dp(tmp_path, GOOD))
    assert dp.radio == "lte" and dp.measured and dp.name == "dev"
    with pytest.raises(ConfigError, match="valid names: host, jetson-orin-nano, rpi4"):
        resolve_device_profile("raspberry")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_device_profile(tmp_path / "absent.toml")


def test_background_load_runs_and_always_stops() -> None:
    load = BackgroundLoad(0.5, cpus=2)
    assert load.duties() == [1.0]
    assert BackgroundLoad(0.75, cpus=2).duties() == [1.0, 0.5]
    assert BackgroundLoad(0.0).duties() == []
    with pytest.raises(ValueError):
        BackgroundLoad(1.5)
    with pytest.raises(RuntimeError, match="boom"), BackgroundLoad(0.5, cpus=2) as load:
        pids = load.pids
        assert len(pids) == 1
        proc = psutil.Process(pids[0])
        before = sum(proc.cpu_times()[:2])
        deadline = time.monotonic() + 10.0
        while sum(proc.cpu_times()[:2]) - before < 0.05 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(proc.cpu_times()[:2]) - before >= 0.05  # it really burns CPU
        raise RuntimeError("boom")
    assert load.pids == []
    assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == "zombie"


@pytest.mark.slow
def test_profile_writes_valid_sections(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    obj = tmp_path / "obj.toml"
    obj.write_text('radio = "lte"\nslo_ms = 150.0\nalpha = 0.2\n', encoding="utf-8")
    prof = profile_bundle(tiny_bundle_copy, "rpi4", quick=True, progress=False, objective=obj)
    bundle = Bundle.load(tiny_bundle_copy)  # verifies every sha256, the new sections' too
    assert bundle.manifest["sections"]["profile"] == "profile.json"
    for rel in ("profile.json", "objective.json"):
        assert rel in bundle.manifest["files"]
    loaded = load_profile(bundle)
    assert loaded.to_dict() == json.loads(json.dumps(prof.to_dict()))
    P = bundle.last
    assert loaded.last == P and loaded.device == "rpi4"
    assert loaded.device_ms[0] == 0 and loaded.server_ms[P] == 0
    assert np.all(loaded.device_ms[1:] > 0) and np.all(loaded.server_ms[:P] > 0)
    assert np.all(loaded.device_ms_p90 >= loaded.device_ms)
    expected_wire = [p.wire_bytes for p in bundle.partitions[:P]] + [0]
    np.testing.assert_array_equal(loaded.wire_bytes, expected_wire)
    assert loaded.wire_bytes[0] == np.prod(bundle.input_shape)  # uint8 image
    assert loaded.return_bytes[P] == 0 and loaded.return_bytes[0] == 4 * np.prod(
        bundle.output_shape
    )
    assert loaded.device_load_u.tolist() == [0.0, 1.0]
    assert np.all(np.diff(loaded.device_slowdown_g) >= 0) and loaded.device_slowdown_g[0] == 1.0
    assert "fallback_scale" in loaded.sources["device_ms"]  # tiny_net is not resnet18
    assert loaded.p_active_mw == 6400.0 and loaded.battery_wh == 37.0
    objective = Objective.from_dict(bundle.section("objective"))
    assert objective.radio == "lte" and objective.slo_ms == 150.0 and objective.alpha == 0.2
    assert loaded.radio == "lte"
    # The written sections drive the cost model.
    costs = CostModel(loaded, objective).evaluate(np.array([[10, 20, 0, 0, 300, 100, 80.0]]))
    assert costs.latency_ms.shape == (1, P + 1)

    # Re-profiling without --objective keeps the recorded objective, radio from the device.
    profile_bundle(tiny_bundle_copy, "host", quick=True, progress=False, load_levels=(0.0,))
    again = Bundle.load(tiny_bundle_copy)
    kept = Objective.from_dict(again.section("objective"))
    assert kept.slo_ms == 150.0 and kept.radio == "wifi"
    assert load_profile(again).device == "host"


@pytest.mark.slow
def test_cli_profile_and_its_errors(
    tiny_bundle_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile", str(tiny_bundle_copy), "--device-profile", "nope"]) == 2
    assert "valid names" in capsys.readouterr().err
    png = tiny_bundle_copy.parent / "profile.png"
    assert main(["profile", str(tiny_bundle_copy), "--quick", "--quiet", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "device host" in out and "slow-down" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Bundle.load(tiny_bundle_copy).section("profile") is not None


@pytest.mark.slow
def test_power_source_replaces_the_profile_power(tiny_bundle_copy: Path) -> None:
    from carboncp.runtime.power.fake import FakePowerSource

    with pytest.raises(ConfigError, match="measures THIS machine"):
        profile_bundle(tiny_bundle_copy, "rpi4", quick=True, progress=False, power_source="fake")
    prof = profile_bundle(
        tiny_bundle_copy,
        "host",
        quick=True,
        progress=False,
        load_levels=(0.0,),
        power_source=FakePowerSource(1500.0),
        power_window_s=0.3,
    )
    assert prof.p_idle_mw == pytest.approx(1500.0, rel=0.02)
    assert prof.p_active_mw == pytest.approx(1500.0, rel=0.02)
    assert "measured here with power source" in prof.sources["power"]
    assert load_profile(tiny_bundle_copy).p_idle_mw == prof.p_idle_mw
