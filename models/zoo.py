"""The model zoo: names -> factories, plus users' own models as 'package.module:factory'.

Weights come from a local state_dict file (torch.save of a state_dict, e.g. a torchvision
.pth the user already has; loaded with weights_only=True, so nothing is unpickled beyond
tensors) or are randomly initialised with a fixed seed: splitting does not change outputs,
so latency, energy and carbon work needs no trained weights.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from carboncp.runtime.errors import ConfigError
from torch import nn

ZOO: dict[str, str] = {
    "resnet18": "carboncp.models.resnet:resnet18",
    "mobilenet_v2": "carboncp.models.mobilenet:mobilenet_v2",
}


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    factory: str
    weights: dict[str, Any] = field(default_factory=dict)


def _resolve(spec: str) -> tuple[str, Callable[[], nn.Module]]:
    target = ZOO.get(spec, spec)
    if ":" not in target:
        raise ConfigError(
            f"--model {spec!r}: unknown model; choose one of {sorted(ZOO)} or give your own "
            "as 'package.module:factory'"
        )
    mod_name, _, attr = target.partition(":")
    if spec not in ZOO and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the user's own modules import
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"--model {spec!r}: cannot import module {mod_name!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--model {spec!r}: module {mod_name!r} has no callable {attr!r}")
    return target, factory


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict saved with torch.save; anything else is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "not weights"
        raise ConfigError(
            f"--weights {path}: not a readable state_dict file saved with torch.save "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--weights {path}: expected a dict of tensors (a state_dict)")
    return state


def calibrate_batchnorm(model: nn.Module, seed: int, batches: int = 4, batch: int = 8) -> str:
    """Set BatchNorm running statistics from seeded random images (random weights only).

    With freshly initialised statistics (mean 0, var 1) an untrained network's activations
    shrink or blow up layer by layer (MobileNetV2's logits come out near 1e-9), which makes the
    recorded float16 error and top-1 agreement meaningless. Statistics measured on random
    inputs keep every stage near unit scale, as in a trained network.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return "none"
    shape = tuple(getattr(model, "input_shape", (1, 3, 224, 224)))[1:]
    gen = torch.Generator().manual_seed(seed + 1)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn((batch, *shape), generator=gen))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()
    return f"running stats from {batches}x{batch} seeded N(0,1) images"


def load_model(spec: str, weights: str | Path | None = None, seed: int = 0) -> LoadedModel:
    """Build `spec` (zoo name or 'package.module:factory') in eval mode, with weights or seeded."""
    target, factory = _resolve(spec)
    torch.manual_seed(seed)
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--model {spec!r}: factory returned {type(model).__name__}, not a module"
        )
    name = spec if spec in ZOO else target.partition(":")[2]
    info: dict[str, Any] = {"kind": "random", "seed": seed}
    if weights is None:
        info["batchnorm"] = calibrate_batchnorm(model, seed)
    if weights is not None:
        state = load_state_dict_file(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = "; ".join(str(exc).splitlines()[1:3]).strip()
            raise ConfigError(
                f"--weights {weights}: does not fit model {name!r} ({first or exc})"
            ) from exc
        info = {"kind": "file", "file": Path(weights).name, "sha256": _sha256(Path(weights))}
    return LoadedModel(model.eval(), name, target, info)
