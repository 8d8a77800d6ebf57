"""Export a model as a CarbonCP bundle: every head as .pte (XNNPACK) and .tflite, every tail as
.pte, verified against the full model and written with a manifest (docs/BUNDLE.md).

Verification runs the artifacts through the runtime's own runners (what the device and the
server will run), on seeded random uint8 images, and records per partition and format the
largest absolute difference from the torch model's output, plus the error and top-1 agreement
when the activation crosses the link as float16.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    WIRE_DTYPES,
    Bundle,
    register_file,
    save_manifest,
)
from carboncp.runtime.errors import CarbonCPError, ConfigError
from carboncp.tooling.tflite_fixups import cast_before_transpose

FORMATS = ("pte", "tflite")
VERIFY_SAMPLES = 8
VERIFY_TOL = 1e-4  # max abs, scaled by max(1, |output|) so large logits do not fail on rounding


class VerificationError(CarbonCPError):
    """An exported artifact does not reproduce the full model."""


def _tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "executorch", "litert-torch", "ai-edge-litert", "carboncp"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.t0 = time.perf_counter()

    def say(self, msg: str) -> None:
        if self.enabled:
            print(f"carboncp export: {msg}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.done += 1
        self.say(
            f"[{self.done}/{self.total}] {what} ({time.perf_counter() - t:.1f} s, "
            f"{time.perf_counter() - self.t0:.0f} s total)"
        )


@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """Exporters print their own chatter to stdout; keep stdout clean (it may be piped)."""
    with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
        yield


def _export_pte(module: Any, example: Any, path: Path) -> None:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        ep = torch.export.export(module, (example,))
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(prog.buffer)


def _export_tflite(module: Any, example: Any, path: Path) -> None:
    import litert_torch
    from litert_torch import _config

    _config.config.show_progress = False  # its rich console output would drown ours
    edge = litert_torch.convert(module, (example,))
    edge.export(str(path))
    # tflite-runtime 2.14 would run none of the graph on XNNPACK (tooling/tflite_fixups.py).
    data, swapped = cast_before_transpose(path.read_bytes())
    if swapped:
        path.write_bytes(data)


_OURS = {MANIFEST, "heads", "tails"}


def _check_out(out_dir: Path) -> None:
    """Fail early (before minutes of export) on an --out that cannot become a bundle."""
    if out_dir.is_dir():
        try:
            entries = {e.name for e in out_dir.iterdir()}
        except OSError as exc:
            raise ConfigError(f"--out {out_dir}: cannot list it ({exc.strerror or exc})") from exc
        if entries and not entries & _OURS:
            # never clear heads/ and tails/ inside a folder that is not a bundle
            raise ConfigError(
                f"--out {out_dir}: folder exists, is not empty and holds no bundle; choose an "
                "empty or new folder"
            )
    elif out_dir.exists():
        raise ConfigError(f"--out {out_dir}: exists and is not a folder")
    else:
        parent = out_dir.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(
                f"--out {out_dir}: cannot create it ({parent} is not a writable folder); "
                "choose a writable folder"
            )


def _prepare_out(out_dir: Path) -> None:
    _check_out(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("heads", "tails"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
            (out_dir / sub).mkdir()
        (out_dir / MANIFEST).unlink(missing_ok=True)  # never leave a manifest over new files
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"--out {out_dir}: cannot write the bundle there ({exc.strerror or exc}); "
            "choose a writable folder"
        ) from exc


def export_bundle(
    model_spec: str,
    out_dir: str | os.PathLike[str] | None = None,
    weights: str | None = None,
    formats: Sequence[str] = FORMATS,
    float16: bool = True,
    progress: bool = True,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Export `model_spec` ('resnet18', 'mobilenet_v2' or 'package.module:factory') to a bundle.

    Returns the bundle folder (default `models/<name>/` under the current directory).
    `workers` > 1 exports artifacts in that many worker processes (each rebuilds the model
    from a state_dict file the parent writes, so all see the same weights).
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"--formats: {bad or 'empty'} not among {list(FORMATS)}")
    import torch

    if out_dir is not None:
        _check_out(Path(out_dir))
    loaded, cuts, image, acts = _build(model_spec, weights, seed)
    model = loaded.model
    shape = tuple(image.shape)
    root = Path(out_dir) if out_dir is not None else Path("models") / loaded.name
    _prepare_out(root)
    gen = torch.Generator().manual_seed(seed + 2)
    P = cuts.last
    jobs = _plan(P, formats)
    prog = _Progress(len(jobs) + 1, progress)
    prog.say(f"{loaded.name}: {P + 1} partitions ({', '.join(cuts.names)}) -> {root}")
    full = cuts.full()
    out_shape = tuple(acts[-1].shape)

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": loaded.name,
            "factory": loaded.factory,
            "weights": loaded.weights,
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        "input": {
            "shape": list(shape),
            "dtype": "uint8",
            "layout": "NCHW",
            "normalise": "(x / 255 - mean) / std, per channel, inside the artifacts",
            "mean": list(cuts.mean),
            "std": list(cuts.std),
        },
        "output": {"shape": list(out_shape), "dtype": "float32"},
        "formats": {"head": list(formats), "tail": ["pte"]},
        "partitions": [],
        "tools": _tool_versions(),
        "files": {},
        "sections": {},
    }
    for p in range(P + 1):
        dtype = "uint8" if p == 0 else "float32"
        wshape = list(acts[p].shape)
        manifest["partitions"].append(
            {
                "p": p,
                "cut": cuts.names[p],
                "wire": {
                    "dtype": dtype,
                    "shape": wshape,
                    "bytes": int(np.prod(wshape)) * WIRE_DTYPES[dtype],
                    "crosses_link": p < P,
                },
                "head": {},
                "tail": {},
                "verify": {},
                "float16": None,
            }
        )

    with _quiet(progress):
        _run_jobs(jobs, root, cuts, image, acts, prog, workers, (model_spec, model, seed))
    for kind, p, fmt in jobs:
        rel = f"{kind}s/p{p}.{fmt}"
        if kind == "head":
            manifest["partitions"][p]["head"][fmt] = rel
        else:
            manifest["partitions"][p]["tail"]["pte"] = rel
    if "pte" in formats:  # tail 0 (uint8 image -> output) is the same program as head P
        shutil.copyfile(root / f"heads/p{P}.pte", root / "tails/p0.pte")
        manifest["partitions"][0]["tail"]["pte"] = "tails/p0.pte"
    for part in manifest["partitions"]:
        for rel in (*part["head"].values(), *part["tail"].values()):
            register_file(manifest, root, rel)
    save_manifest(root, manifest)

    with prog.step(f"verify {VERIFY_SAMPLES} random images per partition and format"):
        images = torch.randint(0, 256, (VERIFY_SAMPLES, *shape), dtype=torch.uint8, generator=gen)
        with torch.no_grad():
            refs = [full(im).numpy() for im in images]
        worst = _verify(root, manifest, [im.numpy() for im in images], refs, formats, float16)
    save_manifest(root, manifest)
    if worst:
        raise VerificationError(
            f"{root / MANIFEST}: exported artifacts differ from the model: {'; '.join(worst)}"
        )
    prog.say(f"wrote {root / MANIFEST} in {time.perf_counter() - prog.t0:.0f} s")
    return root


def _build(spec: str, weights: str | None, seed: int) -> tuple[Any, Any, Any, list[Any]]:
    """Model, cuts, a seeded example image, and the eager activations a_0..a_P for it."""
    import torch
    from carboncp.models.zoo import load_model
    from carboncp.tooling.cuts import Normalize, find_cuts

    loaded = load_model(spec, weights=weights, seed=seed)
    shape = tuple(int(s) for s in getattr(loaded.model, "input_shape", (1, 3, 224, 224)))
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    cuts = find_cuts(loaded.model, image.to(torch.float32) / 255.0)
    with torch.no_grad():
        acts = [image]
        x = Normalize(cuts.mean, cuts.std)(image)
        for stage in cuts.stages:
            x = stage(x)
            acts.append(x)
    return loaded, cuts, image, acts


Job = tuple[str, int, str]  # (kind "head"|"tail", p, format)


def _plan(P: int, formats: Sequence[str]) -> list[Job]:
    """Artifacts to export, largest first (better packing across workers). Tails are always
    .pte: the edge server runs them with ExecuTorch and they verify every head format. Tail 0
    is head P's program and is copied from it when .pte heads are exported."""
    jobs: list[Job] = [("head", p, fmt) for p in range(P, 0, -1) for fmt in formats]
    first_tail = 1 if "pte" in formats else 0
    jobs += [("tail", p, "pte") for p in range(first_tail, P)]
    return sorted(jobs, key=lambda j: -(j[1] if j[0] == "head" else P - j[1]))


def _export_one(job: Job, root: Path, cuts: Any, image: Any, acts: list[Any]) -> None:
    kind, p, fmt = job
    path = root / f"{kind}s/p{p}.{fmt}"
    if kind == "head":
        (_export_pte if fmt == "pte" else _export_tflite)(cuts.head(p), image, path)
    else:
        example = image if p == 0 else acts[p].detach().clone()
        _export_pte(cuts.tail(p), example, path)


def _describe(job: Job, cuts: Any) -> str:
    kind, p, fmt = job
    return f"{kind} p={p} ({cuts.names[p]}) -> {kind}s/p{p}.{fmt}"


_WORKER: dict[str, Any] = {}


def _worker_init(spec: str, state_path: str, seed: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER["built"] = _build(spec, state_path, seed)


def _worker_job(job: Job, root: str) -> float:
    t = time.perf_counter()
    _loaded, cuts, image, acts = _WORKER["built"]
    with contextlib.redirect_stdout(io.StringIO()):
        _export_one(job, Path(root), cuts, image, acts)
    return time.perf_counter() - t


def _run_jobs(
    jobs: list[Job],
    root: Path,
    cuts: Any,
    image: Any,
    acts: list[Any],
    prog: _Progress,
    workers: int,
    source: tuple[str, Any, int],
) -> None:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            with prog.step(_describe(job, cuts)):
                _export_one(job, root, cuts, image, acts)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    spec, model, seed = source
    with tempfile.TemporaryDirectory(prefix="carboncp-export-") as tmp:
        state = Path(tmp) / "state_dict.pt"
        torch.save(model.state_dict(), state)  # workers load it with weights_only=True
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),  # fork after torch/OpenMP start is unsafe
            initializer=_worker_init,
            initargs=(spec, str(state), seed),
        ) as pool:
            futures = {pool.submit(_worker_job, job, str(root)): job for job in jobs}
            try:
                for fut in as_completed(futures):
                    secs = fut.result()
                    with prog.step(_describe(futures[fut], cuts) + f" [worker {secs:.1f} s]"):
                        pass
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def _verify(
    root: Path,
    manifest: dict[str, Any],
    images: list[np.ndarray],
    refs: list[np.ndarray],
    formats: Sequence[str],
    float16: bool,
) -> list[str]:
    from carboncp.runtime.artifacts.runners import ExecuTorchRunner, LiteRTRunner

    bundle = Bundle.load(root)
    P = bundle.last
    heads: dict[str, Any] = {}
    if "pte" in formats:
        heads["pte"] = ExecuTorchRunner(bundle, part="head")
    if "tflite" in formats:
        heads["tflite"] = LiteRTRunner(bundle)
    tails = ExecuTorchRunner(bundle, part="tail")
    scale = max(1.0, max(float(np.abs(r).max()) for r in refs))
    tol = VERIFY_TOL * scale
    manifest["verification"] = {
        "samples": len(images),
        "inputs": "uniform random uint8 images (seeded)",
        "tolerance_max_abs": tol,
        "reference": "torch eager full model (float32)",
    }
    worst: list[str] = []
    for p in range(P + 1):
        entry = manifest["partitions"][p]
        routes: dict[str, Any] = {}
        if p == 0:
            routes["pte"] = lambda im, _p=p: tails.run(_p, im)
        else:
            for fmt, runner in heads.items():
                if p == P:
                    routes[fmt] = lambda im, r=runner, _p=p: r.run(_p, im)
                else:
                    routes[fmt] = lambda im, r=runner, _p=p: tails.run(_p, r.run(_p, im))
        for fmt, route in routes.items():
            err = max(
                float(np.abs(route(im) - ref).max()) for im, ref in zip(images, refs, strict=True)
            )
            entry["verify"][fmt] = err
            if not err <= tol:
                worst.append(f"p={p} {fmt}: max abs {err:.3g} > {tol:.3g}")
        if float16 and 0 < p < P:
            head = heads.get("pte") or heads["tflite"]
            errs, agree = [], []
            for im, ref in zip(images, refs, strict=True):
                a = head.run(p, im)
                with np.errstate(over="ignore"):
                    a16 = a.astype(np.float16)
                if not np.isfinite(a16).all():
                    errs.append(float("inf"))
                    agree.append(False)
                    continue
                y = tails.run(p, a16.astype(np.float32))
                errs.append(float(np.abs(y - ref).max()))
                agree.append(bool(np.argmax(y) == np.argmax(ref)))
            finite = all(np.isfinite(errs))
            entry["float16"] = {
                "bytes": entry["wire"]["bytes"] // 2,
                "max_abs_error": max(errs) if finite else None,
                "top1_agreement": float(np.mean(agree)),
                "overflow": not finite,
            }
    for r in (*heads.values(), tails):
        r.close()
    return worst
