"""A Triton model repository from a bundle: every tail as a model a stock Triton loads
(docs/TRITON.md).

One model per tail, named as the device asks for it (`carboncp.runtime.link.routes.model_name`):
`{model}-tail-p{p}` takes the bundle's wire dtype (UINT8 at p = 0, FP32 after), and where the
bundle allows float16 for p, `{model}-tail-p{p}-fp16` takes FP16 (Triton has one datatype per
model input). Inputs and outputs are named, typed and shaped as `carboncp.runtime.link.wire`
puts them on the wire, so `carboncp run` offloads to Triton unchanged.

Each model runs in Triton's Python backend (shipped with every Triton build) with a
self-contained `model.py` that runs the tail as TFLite through `ai_edge_litert` (or
`tflite_runtime`): ExecuTorch needs numpy >= 2 and torch, while the Python backend's stub
runs in an environment where numpy < 2 is the rule. Bundles keep their tails as `.pte` only,
so the tails are converted here from the model the manifest records (its factory and seed, or
the `--weights` file whose sha256 it records), checked against the manifest's cuts and wire
shapes, and verified against the bundle's own `.pte` tails (what `carboncp serve` runs) on
activations from the bundle's heads. Tail 0 is head P's program: the bundle's
`heads/pP.tflite` is copied when it exists.

Layout written (DIR is replaced when it holds a repository written here before):

    DIR/carboncp-triton.json          what was written and the verification errors
    DIR/{model}-tail-p{p}/config.pbtxt
    DIR/{model}-tail-p{p}/1/model.py
    DIR/{model}-tail-p{p}/1/tail.tflite
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle, sha256_file
from carboncp.runtime.errors import ConfigError
from carboncp.runtime.link import wire
from carboncp.runtime.link.routes import model_name
from carboncp.tooling.export import VERIFY_TOL, VerificationError

MARKER = "carboncp-triton.json"
TAIL_FILE = "tail.tflite"
VERIFY_SAMPLES = 8
# Open Inference Protocol datatype -> Triton config data_type
TRITON_TYPE = {"UINT8": "TYPE_UINT8", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32"}

MODEL_PY = '''\
"""CarbonCP tail on Triton's Python backend, written by `carboncp export --triton-repo`.

Self-contained: it needs numpy and ai-edge-litert (or tflite-runtime) in the Python backend's
environment, nothing from CarbonCP. One input "input" (the wire tensor: UINT8 image at p = 0,
FP32 activation, or FP16 for the -fp16 models, cast back to float32 here as `carboncp serve`
does), one output "output" (FP32). Parameter num_threads in config.pbtxt: interpreter threads
(0 = every core).
"""

import json
import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # boards and images where only tflite-runtime exists
    from tflite_runtime.interpreter import Interpreter


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        params = config.get("parameters", {})
        threads = int(params.get("num_threads", {}).get("string_value", "0") or 0)
        self.interp = Interpreter(
            model_path=os.path.join(here, "tail.tflite"),
            num_threads=threads if threads > 0 else (os.cpu_count() or 1),
        )
        self.interp.allocate_tensors()
        (inp,), (out,) = self.interp.get_input_details(), self.interp.get_output_details()
        self.in_index, self.out_index = inp["index"], out["index"]
        self.in_dtype, self.in_shape = np.dtype(inp["dtype"]), tuple(inp["shape"])
        self.lock = threading.Lock()  # an interpreter is not re-entrant

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
            if x.dtype == np.float16:
                x = x.astype(np.float32)  # the -fp16 models: the tail takes float32
            if x.dtype != self.in_dtype or tuple(x.shape) != self.in_shape:
                err = pb_utils.TritonError(
                    f"input is {x.dtype} {list(x.shape)}, the tail takes "
                    f"{self.in_dtype} {list(self.in_shape)}"
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
                continue
            with self.lock:
                self.interp.set_tensor(self.in_index, np.ascontiguousarray(x))
                self.interp.invoke()
                y = np.array(self.interp.get_tensor(self.out_index), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("output", y)]))
        return responses

    def finalize(self):
        self.interp = None
'''


@dataclass(frozen=True)
class TailModel:
    """One Triton model: its name, partition and the tensor it takes."""

    name: str
    p: int
    input: wire.WireSpec
    output: wire.WireSpec


def tail_models(bundle: Bundle) -> list[TailModel]:
    """Every model the device may ask for: each tail in the bundle's wire dtype, plus an FP16
    model where the bundle allows float16 for p (`routes.model_name` names both)."""
    out = wire.output_spec(bundle)
    models = []
    for p in range(bundle.last):
        models.append(TailModel(model_name(bundle, p), p, wire.wire_spec(bundle, p), out))
        fp16 = wire.wire_spec(bundle, p, float16=True)
        if fp16.dtype == "float16":
            models.append(TailModel(model_name(bundle, p, float16=True), p, fp16, out))
    return models


def config_pbtxt(model: TailModel, num_threads: int = 0) -> str:
    """The model's config.pbtxt: Python backend, no batching (the device sends batch-1 tensors
    of the bundle's exact shape, which Triton then checks), one CPU instance."""

    def dims(shape: tuple[int, ...]) -> str:
        return ", ".join(str(d) for d in shape)

    return (
        f'name: "{model.name}"\n'
        'backend: "python"\n'
        "max_batch_size: 0\n"
        "input [\n"
        f'  {{ name: "{wire.INPUT_NAME}", data_type: {TRITON_TYPE[model.input.datatype]}, '
        f"dims: [ {dims(model.input.shape)} ] }}\n"
        "]\n"
        "output [\n"
        f'  {{ name: "{wire.OUTPUT_NAME}", data_type: {TRITON_TYPE[model.output.datatype]}, '
        f"dims: [ {dims(model.output.shape)} ] }}\n"
        "]\n"
        "instance_group [ { count: 1, kind: KIND_CPU } ]\n"
        f'parameters: {{ key: "num_threads", value: {{ string_value: "{num_threads}" }} }}\n'
    )


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"carboncp export: {msg}", file=sys.stderr, flush=True)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--triton-repo {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(
            f"--triton-repo {out}: folder exists, is not empty and holds no repository written "
            "by carboncp; choose an empty or new folder"
        )


def _rebuild(bundle: Bundle, weights: str | None) -> Any:
    """The model's cuts, rebuilt as the export built them; refused where they differ."""
    from carboncp.tooling.export import _build

    m = bundle.manifest["model"]
    winfo = m.get("weights") or {}
    factory = m.get("factory")
    if not factory:
        raise ConfigError(f"{bundle.path}: the manifest records no model factory to rebuild from")
    if winfo.get("kind") == "file":
        if weights is None:
            raise ConfigError(
                f"{bundle.path}: the bundle was exported from weights file "
                f"{winfo.get('file')!r}; give it with --weights FILE"
            )
        if sha256_file(Path(weights)) != winfo.get("sha256"):
            raise ConfigError(
                f"--weights {weights}: not the file the bundle was exported from (sha256 differs)"
            )
        seed = 0
    else:
        if weights is not None:
            raise ConfigError(f"--weights: {bundle.path} was exported with random weights")
        seed = int(winfo.get("seed", 0))
    _loaded, cuts, _image, acts = _build(factory, weights, seed)
    names = [p.cut for p in bundle.partitions]
    shapes = [tuple(p.wire_shape) for p in bundle.partitions]
    got = [tuple(a.shape) for a in acts]
    if list(cuts.names) != names or got != shapes:
        raise ConfigError(
            f"{bundle.path}: the model rebuilt from {factory} cuts as {list(cuts.names)} "
            f"{got}, the bundle as {names} {shapes}; was the model's code changed since export?"
        )
    return cuts, acts


def _tflite_tails(bundle: Bundle, weights: str | None, tmp: Path, progress: bool) -> list[Path]:
    """Tail p (p = 0..P-1) as .tflite files in tmp."""
    P = bundle.last
    paths = [tmp / f"p{p}.tflite" for p in range(P)]
    full_head = bundle.partitions[P].head.get("tflite")
    todo = [p for p in range(P) if not (p == 0 and full_head)]
    if full_head:
        shutil.copyfile(bundle.file(full_head), paths[0])  # tail 0 = head P's program
    if todo:
        from carboncp.tooling.export import _export_tflite, _quiet

        cuts, acts = _rebuild(bundle, weights)
        for p in todo:
            t = time.perf_counter()
            example = acts[0] if p == 0 else acts[p].detach().clone()
            with _quiet(progress):
                _export_tflite(cuts.tail(p), example, paths[p])
            _say(
                progress,
                f"tail p={p} ({cuts.names[p]}) -> .tflite ({time.perf_counter() - t:.1f} s)",
            )
    return paths


def _verify(bundle: Bundle, tails: list[Path], seed: int) -> dict[int, float]:
    """Max |tflite tail - the bundle's .pte tail| per p on activations from the bundle's heads;
    raises VerificationError beyond the bundle's tolerance."""
    from carboncp.runtime.artifacts.runners import (
        ExecuTorchRunner,
        LiteRTRunner,
        _import_interpreter,
    )

    interpreter, _ = _import_interpreter()
    rng = np.random.default_rng(seed)
    images = [
        rng.integers(0, 256, bundle.input_shape, dtype=np.uint8) for _ in range(VERIFY_SAMPLES)
    ]
    verification = bundle.manifest.get("verification") or {}
    tol = float(verification.get("tolerance_max_abs", VERIFY_TOL))
    errors: dict[int, float] = {}
    worst = []
    fmts = bundle.manifest.get("formats", {}).get("head", [])
    heads = LiteRTRunner(bundle) if "tflite" in fmts else ExecuTorchRunner(bundle, part="head")
    with heads, ExecuTorchRunner(bundle, part="tail") as ref:
        for p, path in enumerate(tails):
            it = interpreter(model_path=str(path), num_threads=1)
            it.allocate_tensors()
            (i_in,), (i_out,) = it.get_input_details(), it.get_output_details()
            err = 0.0
            for im in images:
                x = im if p == 0 else heads.run(p, im)
                it.set_tensor(i_in["index"], x)
                it.invoke()
                y = np.array(it.get_tensor(i_out["index"]))
                if y.shape != tuple(bundle.output_shape):
                    raise VerificationError(
                        f"{path}: output shape {list(y.shape)}, the bundle's is "
                        f"{list(bundle.output_shape)}"
                    )
                err = max(err, float(np.abs(y - ref.run(p, x)).max()))
            errors[p] = err
            if not err <= tol:
                worst.append(f"p={p}: max abs {err:.3g} > {tol:.3g}")
    if worst:
        raise VerificationError(
            f"{bundle.path}: the .tflite tails differ from the bundle's .pte tails: "
            + "; ".join(worst)
        )
    return errors


def write_triton_repo(
    bundle_dir: str | Path,
    out_dir: str | Path,
    weights: str | None = None,
    num_threads: int = 0,
    progress: bool = True,
    seed: int = 0,
) -> Path:
    """Write the Triton model repository for the bundle at `bundle_dir` into `out_dir`.

    `weights`: the state_dict file the bundle was exported from, when it was (the manifest's
    sha256 must match). `num_threads`: interpreter threads per model (0 = every core).
    Returns `out_dir`.
    """
    bundle = Bundle.load(bundle_dir)
    out = Path(out_dir)
    _check_out(out)
    models = tail_models(bundle)
    t0 = time.perf_counter()
    _say(progress, f"{bundle.model_name}: {len(models)} Triton models -> {out}")
    with tempfile.TemporaryDirectory(prefix="carboncp-triton-") as tmp:
        tails = _tflite_tails(bundle, weights, Path(tmp), progress)
        errors = _verify(bundle, tails, seed)
        _say(
            progress,
            "verified against the bundle's .pte tails: max abs "
            + ", ".join(f"p{p} {e:.2g}" for p, e in errors.items()),
        )
        staging = Path(tempfile.mkdtemp(prefix=".triton-repo-", dir=out.absolute().parent))
        try:
            for m in models:
                version = staging / m.name / "1"
                version.mkdir(parents=True)
                (staging / m.name / "config.pbtxt").write_text(config_pbtxt(m, num_threads))
                (version / "model.py").write_text(MODEL_PY)
                shutil.copyfile(tails[m.p], version / TAIL_FILE)
            info = {
                "format": "carboncp-triton-repo",
                "bundle": str(Path(bundle_dir).absolute()),
                "model": bundle.model_name,
                "backend": "python (ai_edge_litert / tflite_runtime)",
                "models": {
                    m.name: {
                        "p": m.p,
                        "input": {"datatype": m.input.datatype, "shape": list(m.input.shape)},
                        "output": {"datatype": m.output.datatype, "shape": list(m.output.shape)},
                    }
                    for m in models
                },
                "verify_max_abs_vs_pte_tail": {f"p{p}": e for p, e in errors.items()},
            }
            (staging / MARKER).write_text(json.dumps(info, indent=2) + "\n")
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _say(progress, f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    return out
