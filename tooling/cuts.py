"""Cut points: where a model can be split so that exactly one tensor crosses the link.

A model becomes a chain of stages; partition p runs stages 1..p on the device (the head) and
stages p+1..P on the server (the tail). Zoo models name their natural stages themselves
(`cut_stages()`, e.g. ResNet-18: stem, layer1..layer4, avgpool+fc). Any other model is cut
automatically on its `torch.export` graph: a cut is valid after a node when that node's output
is the only tensor still needed later (parameters are constants on both sides), so a residual
block, whose skip tensor stays live across the block, is never cut inside. Candidate cuts are
kept where one top-level submodule ends and the next begins, which gives stage names users
recognise ("layer1"), and fall back to every valid node when the model has no such boundary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from carboncp.runtime.errors import ConfigError
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """uint8 image -> float32, (x/255 - mean)/std, folded into one affine op per channel.

    It runs inside every head (p >= 1) and inside the p = 0 tail, so the uint8 image is what
    the device holds and what crosses the link at p = 0 (docs/METHOD.md §1).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * s), persistent=False)
        self.register_buffer("shift", -m / s, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32) * self.scale + self.shift


class Chain(nn.Module):
    """Stages applied in order, each a named child (not a bare nn.Sequential(*mods):
    executorch 1.4.x mis-fused BatchNorm in those; named stages export correctly)."""

    def __init__(self, stages: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        for name, module in stages:
            self.add_module(_attr_name(name), module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def _attr_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


@dataclass
class Cuts:
    """names[p] for p = 0..P (names[0] == "input"); stages[k-1] maps activation k-1 to k."""

    names: list[str]
    stages: list[nn.Module]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def last(self) -> int:
        return len(self.stages)

    def head(self, p: int) -> nn.Module:
        """Device side of partition p (1..P): uint8 image -> activation p."""
        if not 1 <= p <= self.last:
            raise ValueError(f"heads exist for p = 1..{self.last}, not {p}")
        parts = [("normalize", Normalize(self.mean, self.std))]
        parts += [(self.names[k + 1], self.stages[k]) for k in range(p)]
        return Chain(parts).eval()

    def tail(self, p: int) -> nn.Module:
        """Server side of partition p (0..P-1): activation p (uint8 image at p = 0) -> output."""
        if not 0 <= p < self.last:
            raise ValueError(f"tails exist for p = 0..{self.last - 1}, not {p}")
        parts = [("normalize", Normalize(self.mean, self.std))] if p == 0 else []
        parts += [(self.names[k + 1], self.stages[k]) for k in range(p, self.last)]
        return Chain(parts).eval()

    def full(self) -> nn.Module:
        return self.head(self.last)


def find_cuts(model: nn.Module, example: torch.Tensor) -> Cuts:
    """Cut points of `model` for a float input like `example` (already normalised)."""
    model = model.eval()
    mean = tuple(getattr(model, "input_mean", IMAGENET_MEAN))
    std = tuple(getattr(model, "input_std", IMAGENET_STD))
    if hasattr(model, "cut_stages"):
        named = list(model.cut_stages())
        return Cuts(["input"] + [n for n, _ in named], [m for _, m in named], mean, std)
    names, stages = graph_cuts(model, example)
    return Cuts(names, stages, mean, std)


def _is_tensor_node(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _top_module(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    for qualname, _type in stack.values():
        if qualname:
            return str(qualname).split(".")[0]
    return None


def _group(node: torch.fx.Node) -> str:
    """The top-level submodule a node belongs to, or the node itself for top-level ops."""
    return _top_module(node) or node.name


def graph_cuts(model: nn.Module, example: torch.Tensor) -> tuple[list[str], list[nn.Module]]:
    """Split `model` at every valid cut of its exported graph; return names and stages."""
    try:
        with torch.no_grad():
            ep = torch.export.export(model, (example,))
    except Exception as exc:  # export raises many types; all mean "cannot trace this model"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{type(model).__name__}: torch.export failed on an input of shape "
            f"{list(example.shape)} ({first}); automatic cuts need an exportable model with "
            "exactly one tensor input"
        ) from exc
    gm = ep.module()
    graph = gm.graph
    out_node = next(n for n in graph.nodes if n.op == "output")
    # Nodes that compute something the output needs (guards and asserts have no users).
    order = [
        n
        for n in graph.nodes
        if n.op in ("placeholder", "call_function", "call_method") and n.users
    ]
    placeholders = [n for n in order if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ConfigError(
            f"{type(model).__name__}: automatic cuts need a model with exactly one tensor "
            f"input, this one has {len(placeholders)}"
        )
    index = {n: i for i, n in enumerate(order)}
    last_use = {}
    for n in order:
        # users outside `order` are the output (counts as "after everything") or guards (ignored)
        uses = [
            index[u] if u in index else len(order) for u in n.users if u in index or u is out_node
        ]
        last_use[n] = max(uses) if uses else -1
    # Sweep: live(i) = tensors defined at or before i and used after i.
    candidates: list[int] = []
    live: set[torch.fx.Node] = set()
    for i, n in enumerate(order):
        live.add(n)
        live = {m for m in live if last_use[m] > i}
        if (
            n.op != "placeholder"
            and live == {n}
            and _is_tensor_node(n)
            and out_node not in n.users
            and len(n.meta["val"].shape) >= 1
        ):
            candidates.append(i)
    boundary = [i for i in candidates if _group(order[i]) != _group(order[i + 1])]
    chosen = boundary or candidates
    if not chosen:
        raise ConfigError(
            f"{type(model).__name__}: no valid cut point: no place in the graph where exactly "
            "one tensor is live between head and tail (e.g. a skip connection spans the "
            "whole model); give the model named stages (a cut_stages() method) instead"
        )
    final = out_node.args[0]
    if isinstance(final, (tuple, list)):
        if len(final) != 1:
            raise ConfigError(f"{type(model).__name__}: automatic cuts need a single output")
        final = final[0]
    names = ["input"]
    for i in chosen:
        names.append(_group(order[i]) if boundary else order[i].name)
    names.append(_group(final) if boundary else "output")
    # de-duplicate names (a module may appear twice when reused)
    seen: dict[str, int] = {}
    for k, nm in enumerate(names):
        if nm in seen:
            seen[nm] += 1
            names[k] = f"{nm}_{seen[nm]}"
        else:
            seen[nm] = 0
    bounds = [placeholders[0], *(order[i] for i in chosen)]
    ends = [*(order[i] for i in chosen), final]
    stages = [
        _segment(gm, order, index, start, end) for start, end in zip(bounds, ends, strict=True)
    ]
    return names, stages


def _segment(
    gm: torch.fx.GraphModule,
    order: list[torch.fx.Node],
    index: dict[torch.fx.Node, int],
    start: torch.fx.Node,
    end: torch.fx.Node,
) -> torch.fx.GraphModule:
    """The nodes strictly after `start` up to `end`, as a module taking start's tensor."""
    g = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {start: g.placeholder("x")}

    def lookup(n: torch.fx.Node) -> torch.fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise ConfigError(f"internal: node {n.name} crosses a cut it should not")
            env[n] = g.get_attr(n.target)
        return env[n]

    for n in order[index[start] + 1 : index[end] + 1]:
        env[n] = g.node_copy(n, lookup)
    g.output(env[end])
    seg = torch.fx.GraphModule(gm, g)
    seg.graph.lint()
    return seg


def stage_dict(cuts: Cuts) -> OrderedDict[str, nn.Module]:
    return OrderedDict(zip(cuts.names[1:], cuts.stages, strict=True))
