"""The device loop with real artifacts: every input gets the full model's answer, whatever
the server does; the JSON record; fallbacks; policy failures; settings from TOML + CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.artifacts.runners import make_runner
from carboncp.runtime.decision.baselines import ArgminPolicy, FixedPolicy
from carboncp.runtime.decision.context import Decision
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.device.loop import DeviceLoop, LoopConfig, StaticCarbon
from carboncp.runtime.device.settings import load_settings
from carboncp.runtime.errors import ConfigError
from carboncp.runtime.link.offload import OffloadClient
from carboncp.runtime.signals.load import LoadSampler

from tests.support.edge_server import ServerProcess, free_port, synthetic_profile


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


@pytest.fixture(scope="module")
def head(bundle):
    r = make_runner(bundle, backend="litert")
    yield r
    r.close()


def _images(bundle, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, bundle.input_shape, dtype=np.uint8) for _ in range(n)]


def _loop(bundle, head, policy, url=None, log=None, **cfg):
    cm = CostModel(synthetic_profile(bundle), Objective())
    client = OffloadClient(url, bundle) if url else None
    return DeviceLoop(
        bundle, policy, head, client=client,
        carbon=StaticCarbon({"DE-LU": 500.0, "GB": 200.0}),
        config=LoopConfig(device_zone="DE-LU", server_zone="GB", deadline_ms=2000.0, **cfg),
        cost_model=cm, load=LoadSampler(0.0), log=log,
    )  # fmt: skip


def test_kill_the_server_mid_run_loses_nothing_and_offloading_resumes(bundle, head, tiny_bundle):
    port = free_port()
    srv = ServerProcess(tiny_bundle, port=port).start()
    log = io.StringIO()
    loop = _loop(bundle, head, FixedPolicy(1, "fixed"), srv.url, log=log)
    xs = _images(bundle, 12)
    recs = []
    try:
        for i, x in enumerate(xs):
            if i == 4:
                srv.kill()  # SIGKILL mid-run
            if i == 8:
                srv.start()  # same port
            recs.append(loop.infer(x))
    finally:
        srv.stop()
    assert len(recs) == len(xs)  # zero lost results
    for x, r in zip(xs, recs, strict=True):
        assert np.abs(r.output - head.run(bundle.last, x)).max() <= 1e-5
    assert all(r.offloaded for r in recs[:4])
    assert all(not r.offloaded and r.fallbacks[0] == "unreachable" for r in recs[4:8])
    assert all("local_full" in r.fallbacks for r in recs[4:8])
    assert all(r.offloaded for r in recs[8:])  # resumed after the restart
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert len(lines) == len(xs)
    assert [ln["offloaded"] for ln in lines] == [r.offloaded for r in recs]
    assert loop.counters == {"offloaded": 8, "local": 0, "fallback": 4}


def test_record_fields(bundle, head):
    log = io.StringIO()
    loop = _loop(bundle, head, FixedPolicy(bundle.last, "local"), log=log)
    rec = loop.infer(_images(bundle, 1)[0])
    d = json.loads(log.getvalue())
    for key in (
        "time_unix",
        "partition",
        "candidates",
        "seen",
        "realised",
        "latency_ms",
        "energy_j",
        "energy_flags",
        "carbon_g",
        "model",
        "fallbacks",
        "battery_pct",
    ):
        assert key in d, key
    assert d["partition"] == bundle.last and not d["fallbacks"]
    assert d["seen"]["device_gco2_per_kwh"] == 500.0 and d["seen"]["server_gco2_per_kwh"] == 200.0
    assert "modelled" in d["energy_flags"]  # no power source: modelled and flagged
    assert d["energy_j"] > 0 and d["carbon_g"] > 0
    # the battery drains by the energy used (modelled battery)
    assert rec.battery_pct < 100.0 and d["battery_source"] == "modelled"


def test_no_server_and_failing_policy_still_answer(bundle, head):
    class Broken:
        def decide(self, seen):
            raise RuntimeError("table corrupt")

        def observe(self, *a):
            raise RuntimeError("also broken")

    for policy in (Broken(), FixedPolicy(0, "server")):
        loop = _loop(bundle, head, policy)
        for x in _images(bundle, 3, seed=1):
            r = loop.infer(x)
            assert np.abs(r.output - head.run(bundle.last, x)).max() <= 1e-5
    assert r.fallbacks[:2] == ["no_server", "local_full"]


def test_local_tail_finishes_a_failed_offload(bundle, head):
    tail = make_runner(bundle, backend="executorch", part="tail")
    loop = _loop(bundle, head, FixedPolicy(2, "fixed"))
    loop.tail = tail
    x = _images(bundle, 1, seed=2)[0]
    r = loop.infer(x)
    assert r.fallbacks == ["no_server", "local_tail"]
    assert np.abs(r.output - head.run(bundle.last, x)).max() <= 1e-5
    tail.close()


def test_policy_sees_the_carbon_and_gets_the_realised_context(bundle, head):
    seen_log = []

    class Spy(ArgminPolicy):
        def observe(self, decision: Decision, seen, realised):
            seen_log.append((decision.partition, seen, realised))

    cm = CostModel(synthetic_profile(bundle), Objective())
    loop = _loop(bundle, head, Spy(cm))
    carbon = loop.carbon
    carbon.values.update({"DE-LU": 900.0, "GB": 20.0})
    dirty = loop.infer(_images(bundle, 1)[0])
    carbon.values.update({"DE-LU": 20.0, "GB": 900.0})
    clean = loop.infer(_images(bundle, 1)[0])
    assert dirty.partition < bundle.last  # dirty device: the cost model offloads
    assert clean.partition == bundle.last  # dirty server: stays local
    assert [s.device_gco2_per_kwh for _, s, _ in seen_log] == [900.0, 20.0]


def test_settings_from_toml_and_cli(tmp_path, tiny_bundle):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'[run]\nbundle = "{tiny_bundle}"\nmode = "M"\ncount = 5\nshape_scale = 15\n'
        'server = "http://127.0.0.1:9"\ndevice_zone = "FR"\n'
    )
    s = load_settings(cfg, {"mode": "R", "count": None})
    assert (s.mode, s.count, s.shape_scale, s.device_zone) == ("R", 5, 15.0, "FR")
    bad = [
        ('mode = "Z"', "'mode'"),
        ("count = 0", "'count'"),
        ('count = "many"', "'count'"),
        ("shape_scale = -1", "'shape_scale'"),
        ('server = "ftp://x"', "'server'"),
        ('broker = "http://x"', "'broker'"),
        ("device_load = 2", "'device_load'"),
        ('input = "/nonexistent"', "'input'"),
        ('shape_trace = "no_such_trace"', "'shape_trace'"),
        ("colour = 1", "'colour'"),
        ("[run\n", "TOML"),
    ]
    for line, key in bad:
        cfg.write_text(f'bundle = "{tiny_bundle}"\n{line}\n')
        with pytest.raises(ConfigError, match=key):
            load_settings(cfg)
    with pytest.raises(ConfigError, match="'bundle'"):
        load_settings(None, {})


@pytest.mark.parametrize(("setting", "want"), [(None, 1), (2, 2), (0, None)])
def test_max_loaded_heads_reaches_the_litert_runner(tiny_bundle, setting, want) -> None:
    # The device keeps one LiteRT head loaded by default (memory: docs/DEPLOY.md); 0 = all.
    from carboncp.runtime.artifacts.runners import expected_input
    from carboncp.runtime.device.wiring import open_device

    s = load_settings(
        None, {"bundle": str(tiny_bundle), "policy": "local", "max_loaded_heads": setting}
    )
    with open_device(s) as device:
        loop, _inputs = device.loop, device.inputs
        bundle = loop.head.bundle
        assert loop.head.max_loaded == want
        for p in range(1, bundle.last + 1):
            dtype, shape = expected_input(bundle, p, "head")
            loop.head.run(p, np.zeros(shape, dtype=dtype))
        assert loop.head.loaded[-1] == bundle.last
        assert len(loop.head.loaded) == min(want or bundle.last, bundle.last)


RUN_CHILD = """
import sys
for name in ("torch", "executorch", "litert_torch", "carboncp.tooling"):
    sys.modules[name] = None  # as on a device without them: importing raises ImportError
from carboncp.runtime.cli import main
rc = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "executorch")
                and sys.modules[m] is not None)
print("TORCH_MODULES", loaded)
sys.exit(rc)
"""


def test_carboncp_run_without_torch_and_config_errors(tiny_bundle, tmp_path):
    import subprocess
    import sys

    log = tmp_path / "run.jsonl"
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    b = Bundle.load(tiny_bundle)
    rng = np.random.default_rng(9)
    for i in range(2):
        np.save(imgs / f"{i}.npy", rng.integers(0, 256, b.input_shape[1:], dtype=np.uint8))
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'bundle = "{tiny_bundle}"\npolicy = "fixed:1"\ncount = 3\n')
    args = ["run", "--config", str(cfg), "--server", f"http://127.0.0.1:{free_port()}",
            "--input", str(imgs), "--log", str(log), "--quiet"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", RUN_CHILD, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH_MODULES []" in proc.stdout
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(recs) == 3 and all(r["fallbacks"][0] == "unreachable" for r in recs)
    assert "3 fell back" in proc.stdout
    cfg.write_text(f'bundle = "{tiny_bundle}"\nmode = "Q"\n')
    proc = subprocess.run([sys.executable, "-c", RUN_CHILD, "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "'mode'" in proc.stderr and "Traceback" not in proc.stderr


def test_example_config_is_valid(tiny_bundle):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "deploy" / "run.example.toml"
    s = load_settings(example, {"bundle": str(tiny_bundle), "input": "random"})
    assert s.power == "ina219:1:0x40" and s.mode == "A" and s.float16 is True


def test_a_failing_head_falls_back_to_the_full_model(bundle, head):
    class Flaky:
        def run(self, p, x):
            if p == 1:
                raise RuntimeError("interpreter fault")
            return head.run(p, x)

    loop = _loop(bundle, Flaky(), FixedPolicy(1, "fixed"))
    x = _images(bundle, 1, seed=4)[0]
    r = loop.infer(x)
    assert r.partition == bundle.last and r.fallbacks == ["head_error:RuntimeError"]
    assert "head_error" in r.decision_flags
    assert np.abs(r.output - head.run(bundle.last, x)).max() <= 1e-5


def test_image_inputs_npy_shapes_and_png_without_pillow(tmp_path, tiny_bundle, monkeypatch):
    import sys

    from carboncp.runtime.device.inputs import iter_inputs

    b = Bundle.load(tiny_bundle)
    shape = b.input_shape
    rng = np.random.default_rng(1)
    chw = rng.integers(0, 256, shape[1:], dtype=np.uint8)
    np.save(tmp_path / "a.npy", chw)  # CHW gets its batch axis
    np.save(tmp_path / "b.npy", chw[None])
    got = list(iter_inputs(str(tmp_path), 3, shape))
    assert [g.shape for g in got] == [shape] * 3 and np.array_equal(got[0], chw[None])
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "f.npy", chw.astype(np.float32))
    with pytest.raises(ConfigError, match="uint8"):
        list(iter_inputs(str(bad), 1, shape))
    png = tmp_path / "png"
    png.mkdir()
    (png / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    with pytest.raises(ConfigError, match="Pillow"):
        list(iter_inputs(str(png), 1, shape))


def test_carboncp_run_stops_with_one_line_when_nothing_can_compute(
    tiny_bundle, tmp_path, monkeypatch, capsys
):
    # The device's model fails and no server is configured: no answer exists, so the CLI
    # says why in one line (exit 2) instead of a traceback.
    from carboncp.runtime import cli
    from carboncp.runtime.device.loop import DeviceLoop

    def broken(self, x):
        raise RuntimeError("interpreter fault")

    monkeypatch.setattr(DeviceLoop, "infer", broken)
    code = cli.main(["run", "--bundle", str(tiny_bundle), "--policy", "local",
                     "--input", "random", "--count", "2", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "inference 1: the device could not run the model" in err
    assert "RuntimeError: interpreter fault" in err and "Traceback" not in err
