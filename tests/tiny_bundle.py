"""A tiny real model for tests: a CNN with a residual block, exported as a bundle in seconds.

`python -m tests.tiny_bundle OUT_DIR` writes the same bundle the `tiny_bundle` fixture uses
(the Makefile's tflite-runtime job runs its tests against it in a venv without torch).
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

SPEC = "tests.tiny_bundle:tiny_net"


class Residual(nn.Module):
    """conv-bn-relu-conv-bn plus the skip: a cut inside would need two live tensors."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class Classifier(nn.Module):
    def __init__(self, ch: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


class TinyNet(nn.Module):
    """Not an nn.Sequential: cut points come from the automatic graph analysis."""

    input_shape = (1, 3, 32, 32)

    def __init__(self, ch: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()
        )
        self.block = Residual(ch)
        self.classifier = Classifier(ch, classes)

    def forward(self, x):
        return self.classifier(self.block(self.stem(x)))


def tiny_net() -> nn.Module:
    return TinyNet()


def build(out_dir: str | Path, progress: bool = True, spec: str = SPEC) -> Path:
    from carboncp.tooling.export import export_bundle

    return export_bundle(spec, out_dir, progress=progress, seed=0)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.tiny_bundle OUT_DIR")
    print(build(sys.argv[1]))
