"""Head (and tail) runners behind one interface: `run(p, ndarray) -> ndarray`.

`LiteRTRunner` runs the `.tflite` heads with `ai_edge_litert` (or `tflite_runtime` on boards
where only that is installed) and never imports torch. `ExecuTorchRunner` runs `.pte` heads or
tails with `executorch.runtime`; ExecuTorch's Python API takes torch tensors, so it imports
torch, lazily, inside the runner. Programs load on first use of a partition and stay cached.
Inputs are checked against the bundle's manifest before they reach an interpreter, so a wrong
dtype or shape is a clear error instead of a crash in native code.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.errors import BackendMissingError, BundleError

PARTS = ("head", "tail")


@runtime_checkable
class Runner(Protocol):
    """Runs partition p's head (or tail) on one input and returns its output."""

    def run(self, p: int, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def expected_input(bundle: Bundle, p: int, part: str) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) the artifact of partition p takes.

    Heads always take the device's image. Tail p takes what crosses the link at p: the image
    for p = 0, else the float32 activation (float16 on the wire is cast back before the tail).

    Parameters:
        bundle: the loaded bundle.
        p: the partition, 0..P (not range-checked here).
        part: "head" or "tail" (anything but "head" is treated as "tail").

    Returns:
        (dtype name, shape) as the manifest states them.
    """
    if part == "head" or p == 0:
        return bundle.input_dtype, bundle.input_shape
    return "float32", bundle.partitions[p].wire_shape


def _artifact(bundle: Bundle, p: int, part: str, fmt: str) -> str:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    if not isinstance(p, (int, np.integer)) or isinstance(p, bool):
        raise ValueError(f"partition index must be an int, not {type(p).__name__}")
    if not 0 <= p <= bundle.last:
        raise ValueError(f"partition {p} is out of range 0..{bundle.last} for {bundle.path}")
    arts = bundle.partitions[p].head if part == "head" else bundle.partitions[p].tail
    rel = arts.get(fmt)
    if rel is None:
        what = {"head": "p = 0 has no head (the device sends the image)"}.get(part, "")
        if part == "tail" and p == bundle.last:
            what = f"p = P = {p} has no tail (everything runs on the device)"
        have = sorted(arts) or "none"
        raise BundleError(
            f"{bundle.path / 'manifest.json'}: partition {p} has no {part} in format {fmt!r} "
            f"(formats present: {have}). {what}".strip()
        )
    return rel


def check_input(bundle: Bundle, p: int, part: str, x: Any) -> np.ndarray:
    """Validate x against the manifest; return it as a C-contiguous array.

    Parameters:
        bundle: the loaded bundle.
        p: the partition whose artifact will run x.
        part: "head" or "tail".
        x: the input.

    Returns:
        x (a C-contiguous copy only when it was not contiguous).

    Raises:
        ValueError: x is not a numpy array, or its dtype or shape differs from
            `expected_input(bundle, p, part)`.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{part} {p} of {bundle.model_name}: input must be a numpy array")
    dtype, shape = expected_input(bundle, p, part)
    if x.dtype != np.dtype(dtype):
        hint = " (cast float16 activations back to float32 first)" if x.dtype == np.float16 else ""
        raise ValueError(
            f"{part} {p} of {bundle.model_name} takes {dtype}, got {x.dtype}{hint}; "
            f"see {bundle.path / 'manifest.json'}"
        )
    if tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"{part} {p} of {bundle.model_name} takes shape {list(shape)}, got "
            f"{list(x.shape)}; see {bundle.path / 'manifest.json'}"
        )
    return np.ascontiguousarray(x)


def _import_interpreter() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError:
        raise BackendMissingError(
            "the LiteRT runner needs a TFLite interpreter: install 'ai-edge-litert' "
            "(pip install ai-edge-litert, or carboncp[runtime]) or, where only that exists "
            "(e.g. numpy<2 boards), 'tflite-runtime' (pip install tflite-runtime)"
        ) from None


class LiteRTRunner:
    """Runs `.tflite` heads; `backend` says which interpreter package is in use.

    Every loaded head holds its mapped model file plus XNNPACK's packed copy of the weights
    (ResNet-18's full head: ~150 MB of RSS; all six heads: ~335 MB). `max_loaded` keeps at
    most that many heads loaded, evicting the least recently used; reloading one costs a
    model load and weight packing (tens of ms), so use 1 or 2 on memory-tight devices.
    Thread-safe; usable as a context manager (closes on exit).

    Parameters:
        bundle: the loaded bundle whose `.tflite` heads to run.
        num_threads: interpreter threads per head; None uses every core (os.cpu_count()).
        max_loaded: keep at most this many heads loaded (>= 1), or None for no limit.

    Raises:
        ValueError: max_loaded < 1.
        BackendMissingError: neither ai_edge_litert nor tflite_runtime is installed.
    """

    def __init__(
        self, bundle: Bundle, num_threads: int | None = None, max_loaded: int | None = None
    ) -> None:
        if max_loaded is not None and max_loaded < 1:
            raise ValueError(f"max_loaded must be >= 1 or None, not {max_loaded}")
        self.bundle = bundle
        self.part = "head"
        # None means every core: both interpreters would otherwise run on one thread
        # (ai_edge_litert turns None into 1), leaving a Pi 4's other three cores idle.
        self.num_threads = num_threads if num_threads is not None else (os.cpu_count() or 1)
        self.max_loaded = max_loaded
        self._interpreter_cls, self.backend = _import_interpreter()
        self._cache: OrderedDict[int, tuple[Any, int, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def _load(self, p: int) -> tuple[Any, int, int]:
        with self._lock:
            if self._closed:
                raise RuntimeError("LiteRTRunner is closed")
            if p not in self._cache:
                rel = _artifact(self.bundle, p, "head", "tflite")
                path = str(self.bundle.file(rel))
                if self.max_loaded is not None:  # evict first: peak memory = max_loaded heads
                    while len(self._cache) >= self.max_loaded:
                        self._cache.popitem(last=False)  # least recently used
                try:
                    interp = self._interpreter_cls(model_path=path, num_threads=self.num_threads)
                    interp.allocate_tensors()
                except (ValueError, RuntimeError) as exc:
                    raise BundleError(
                        f"{path}: {self.backend} cannot load this model ({exc}); re-export "
                        f"the bundle or update {self.backend}"
                    ) from exc
                ins, outs = interp.get_input_details(), interp.get_output_details()
                if len(ins) != 1 or len(outs) != 1:
                    raise BundleError(f"{path}: expected 1 input and 1 output tensor")
                dtype, shape = expected_input(self.bundle, p, "head")
                if np.dtype(ins[0]["dtype"]) != np.dtype(dtype) or tuple(ins[0]["shape"]) != tuple(
                    shape
                ):
                    raise BundleError(
                        f"{path}: model input is {np.dtype(ins[0]['dtype'])} "
                        f"{list(ins[0]['shape'])} but the manifest says {dtype} {list(shape)}"
                    )
                self._cache[p] = (interp, ins[0]["index"], outs[0]["index"])
            self._cache.move_to_end(p)
            return self._cache[p]

    @property
    def loaded(self) -> list[int]:
        """Partitions whose head is loaded, least recently used first."""
        return list(self._cache)

    def run(self, p: int, x: np.ndarray) -> np.ndarray:
        """Run partition p's head on x (loading it on first use).

        Parameters:
            p: the partition, 1..P (p = 0 has no head: the device sends the image).
            x: the input image, of the manifest's dtype and shape (`expected_input`).

        Returns:
            A copy of the head's output (the activation to send at p).

        Raises:
            ValueError: p is not an int in 0..P, or x has the wrong type, dtype or shape.
            BundleError: p has no .tflite head, or the model does not load or does not match
                the manifest.
            RuntimeError: the runner is closed.
        """
        interp, i_in, i_out = self._load(p)
        x = check_input(self.bundle, p, "head", x)
        with self._lock:  # an interpreter is not re-entrant
            interp.set_tensor(i_in, x)
            interp.invoke()
            return np.array(interp.get_tensor(i_out), copy=True)

    def close(self) -> None:
        """Drop every loaded head; later `run` calls raise RuntimeError. Idempotent."""
        with self._lock:
            self._cache.clear()
            self._closed = True

    def __enter__(self) -> LiteRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"LiteRTRunner({self.bundle.path}, backend={self.backend}, "
            f"loaded={list(self._cache)}, closed={self._closed})"
        )


class ExecuTorchRunner:
    """Runs `.pte` heads (device) or tails (edge server) with `executorch.runtime`.

    Programs stay loaded once used. Thread-safe; usable as a context manager (closes on exit).

    Parameters:
        bundle: the loaded bundle whose `.pte` artifacts to run.
        part: "head" or "tail".
        num_threads: XNNPACK threads; process-wide (it sets every runner's pool). None leaves
            the pool as it is.

    Raises:
        ValueError: part is not "head" or "tail".
        BackendMissingError: torch or executorch is not installed.
    """

    def __init__(self, bundle: Bundle, part: str = "head", num_threads: int | None = None) -> None:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, not {part!r}")
        self.bundle = bundle
        self.part = part
        self.backend = "executorch"
        # torch's OpenMP pool fights XNNPACK's threads (docs/METHOD.md Appendix A); must precede torch import.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise BackendMissingError(
                f"the ExecuTorch runner needs torch and executorch ({exc.name or exc} is "
                "missing): pip install 'carboncp[executorch]'"
            ) from None
        self._torch = torch
        self._runtime = Runtime.get()
        if num_threads is not None:
            # XNNPACK's pool is process-wide in the pybindings: this sets it for every runner.
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(int(num_threads))
        self._cache: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _load(self, p: int) -> Any:
        with self._lock:
            if self._closed:
                raise RuntimeError("ExecuTorchRunner is closed")
            if p not in self._cache:
                rel = _artifact(self.bundle, p, self.part, "pte")
                path = self.bundle.file(rel)
                try:
                    program = self._runtime.load_program(path)
                    method = program.load_method("forward")
                except (RuntimeError, ValueError) as exc:
                    raise BundleError(
                        f"{path}: ExecuTorch cannot load this program ({exc}); re-export the "
                        "bundle with a matching executorch version"
                    ) from exc
                if method is None:
                    raise BundleError(f"{path}: program has no 'forward' method")
                self._cache[p] = method
            return self._cache[p]

    def run(self, p: int, x: np.ndarray) -> np.ndarray:
        """Run partition p's head or tail on x (loading its program on first use).

        Parameters:
            p: the partition: 1..P for a head, 0..P-1 for a tail.
            x: the input of the manifest's dtype and shape (`expected_input`): a tail takes
                the float32 activation (the image at p = 0).

        Returns:
            A copy of the program's first output (the activation, or a tail's logits).

        Raises:
            ValueError: p is not an int in 0..P, or x has the wrong type, dtype or shape.
            BundleError: p has no .pte for this part, or the program does not load or has no
                'forward' method.
            RuntimeError: the runner is closed.
        """
        method = self._load(p)
        x = check_input(self.bundle, p, self.part, x)
        with self._lock:
            out = method.execute([self._torch.from_numpy(x)])
        return out[0].detach().numpy().copy()

    def close(self) -> None:
        """Drop every loaded program; later `run` calls raise RuntimeError. Idempotent."""
        with self._lock:
            self._cache.clear()
            self._closed = True

    def __enter__(self) -> ExecuTorchRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ExecuTorchRunner({self.bundle.path}, part={self.part}, "
            f"loaded={sorted(self._cache)}, closed={self._closed})"
        )


BACKENDS = ("litert", "executorch")


def make_runner(
    bundle: Bundle, backend: str = "litert", part: str = "head", **options: Any
) -> Runner:
    """A runner for `backend` ("litert" for .tflite heads, "executorch" for .pte heads/tails).

    `options` go to the runner (num_threads; max_loaded for LiteRT).

    Parameters:
        bundle: the loaded bundle.
        backend: "litert" or "executorch".
        part: "head" or "tail" (tails need "executorch").
        **options: keyword arguments of `LiteRTRunner` or `ExecuTorchRunner`.

    Returns:
        A `Runner`; close it (or use it as a context manager) when done.

    Raises:
        ValueError: unknown backend, a tail asked of LiteRT, an invalid part, or
            max_loaded < 1.
        TypeError: an option the runner does not take.
        BackendMissingError: the backend's package is not installed.
    """
    if backend == "litert":
        if part != "head":
            raise ValueError("the LiteRT runner runs heads only; tails are .pte (executorch)")
        return LiteRTRunner(bundle, **options)
    if backend == "executorch":
        return ExecuTorchRunner(bundle, part=part, **options)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
