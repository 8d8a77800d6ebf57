"""The tiny test model at 224 x 224: what `make test-triton` serves from Triton.

The tiny bundle's 32 x 32 input puts 3-8 KiB on the wire, where a loopback link estimate is
all noise (a few KiB leave in microseconds); at 224 x 224 the wire carries 147-392 KiB
(ResNet-18's range), so the estimate from the upload can be compared with `carboncp serve`'s.
Same layers, so it exports in seconds.

`python -m tests.triton_bundle OUT_DIR` writes the bundle.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests import tiny_bundle
from tests.tiny_bundle import TinyNet

SPEC = "tests.triton_bundle:wide_tiny_net"


class WideTinyNet(TinyNet):
    input_shape = (1, 3, 224, 224)


def wide_tiny_net() -> WideTinyNet:
    return WideTinyNet()


def build(out_dir: str | Path, progress: bool = True) -> Path:
    return tiny_bundle.build(out_dir, progress, spec=SPEC)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.triton_bundle OUT_DIR")
    print(build(sys.argv[1]))
