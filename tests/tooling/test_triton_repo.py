"""`carboncp export --triton-repo`: the Triton model repository's layout and config.pbtxt per
model, and the generated model.py run against a stand-in for Triton's `pb_utils` (no Triton
here: `make test-triton` runs the real server, tests/triton/test_triton.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.cli import main
from carboncp.runtime.link import wire
from carboncp.runtime.link.routes import model_name

from tests.support.requires import require

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tiny_bundle, tmp_path_factory) -> Path:
    require("litert_torch", "the repository's tails are converted to .tflite")
    from carboncp.tooling.triton_repo import write_triton_repo

    return write_triton_repo(tiny_bundle, tmp_path_factory.mktemp("t") / "repo", progress=False)


def _expected_models(bundle: Bundle) -> dict[str, tuple[int, wire.WireSpec]]:
    out = {}
    for p in range(bundle.last):
        out[model_name(bundle, p)] = (p, wire.wire_spec(bundle, p))
        if bundle.partitions[p].float16 is not None:
            out[model_name(bundle, p, float16=True)] = (p, wire.wire_spec(bundle, p, True))
    return out


def test_one_model_per_tail_and_float16_tail_named_as_the_device_asks(repo, tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    expected = _expected_models(bundle)
    name = bundle.model_name
    assert set(expected) == {
        f"{name}-tail-p0", f"{name}-tail-p1", f"{name}-tail-p1-fp16",
        f"{name}-tail-p2", f"{name}-tail-p2-fp16",
    }  # fmt: skip
    models = {d.name for d in repo.iterdir() if d.is_dir()}
    assert models == set(expected)
    for m in models:
        assert sorted(f.name for f in (repo / m).rglob("*") if f.is_file()) == [
            "config.pbtxt", "model.py", "tail.tflite"
        ]  # fmt: skip
    info = json.loads((repo / "carboncp-triton.json").read_text())
    assert set(info["models"]) == set(expected)
    assert all(e <= 1e-4 for e in info["verify_max_abs_vs_pte_tail"].values())


def test_config_pbtxt_has_the_wire_names_dtypes_and_shapes(repo, tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    types_ = {"uint8": "TYPE_UINT8", "float16": "TYPE_FP16", "float32": "TYPE_FP32"}
    out = list(bundle.output_shape)
    for name, (p, spec) in _expected_models(bundle).items():
        cfg = (repo / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in cfg and 'backend: "python"' in cfg
        assert "max_batch_size: 0" in cfg and "KIND_CPU" in cfg
        dims = ", ".join(map(str, spec.shape))
        assert re.search(
            rf'input \[\s*\{{ name: "input", data_type: {types_[spec.dtype]}, dims: \[ {dims} \] \}}',
            cfg,
        ), cfg
        assert re.search(
            rf'output \[\s*\{{ name: "output", data_type: TYPE_FP32, '
            rf"dims: \[ {', '.join(map(str, out))} \] \}}",
            cfg,
        ), cfg
        # p = 0 takes the uint8 image, later tails the float32 activation (float16: -fp16)
        assert spec.dtype == ("uint8" if p == 0 else "float16" if "fp16" in name else "float32")


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _Response:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error = output_tensors, error


def _load_model_py(path: Path, monkeypatch):
    """The generated model.py with a stand-in for Triton's triton_python_backend_utils."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor
    pb.InferenceResponse = _Response
    pb.TritonError = str
    pb.get_input_tensor_by_name = lambda req, name: req[name]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location(f"tail_{path.parent.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_py_runs_the_tail_as_carboncp_serve_does(repo, tiny_bundle, monkeypatch):
    require("executorch", "the .pte tails are the reference")
    from carboncp.runtime.artifacts.runners import ExecuTorchRunner, LiteRTRunner

    bundle = Bundle.load(tiny_bundle)
    rng = np.random.default_rng(3)
    im = rng.integers(0, 256, bundle.input_shape, dtype=np.uint8)
    with LiteRTRunner(bundle) as heads, ExecuTorchRunner(bundle, part="tail") as tails:
        for name, (p, spec) in _expected_models(bundle).items():
            mod = _load_model_py(repo / name / "1" / "model.py", monkeypatch)
            model = mod.TritonPythonModel()
            cfg = {"parameters": {"num_threads": {"string_value": "1"}}}
            model.initialize(
                {
                    "model_config": json.dumps(cfg),
                    "model_repository": str(repo / name),
                    "model_version": "1",
                }
            )
            a = im if p == 0 else heads.run(p, im)
            x = a.astype(np.float16) if spec.dtype == "float16" else a
            (resp,) = model.execute([{"input": _Tensor("input", x)}])
            assert resp.error is None
            (y,) = resp.output_tensors
            assert y.name == "output" and y.array.dtype == np.float32
            ref = tails.run(p, x.astype(np.float32) if p else x)  # what carboncp serve runs
            assert np.abs(y.array - ref).max() <= 1e-4, name
            # a wrong shape is an error response, not a crash of the stub
            (bad,) = model.execute([{"input": _Tensor("input", x.reshape(-1))}])
            assert bad.error is not None and "takes" in bad.error
            model.finalize()


def test_a_folder_that_is_not_a_repository_is_refused(tiny_bundle, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    rc = main(["export", "--quiet", "--triton-repo", str(tmp_path / "other"), str(tiny_bundle)])
    assert rc == 2 and "holds no repository" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_bundle_without_triton_repo_is_refused(tiny_bundle, capsys):
    rc = main(["export", str(tiny_bundle)])
    assert rc == 2 and "--triton-repo" in capsys.readouterr().err
