"""A named stage: children applied in order. Zoo models expose their cut points as a list of
these (`cut_stages()`), sharing the model's own submodules, so a head is exactly the model's
first stages and a user's torchvision weights apply unchanged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Stage(nn.Module):
    def __init__(self, parts: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        for name, module in parts:
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


class Flatten1(nn.Module):
    """torch.flatten(x, 1), as a module so that it can sit inside a Stage."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)
