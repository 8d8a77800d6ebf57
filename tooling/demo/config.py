"""What a demo run is asked to do (DemoConfig), and its progress lines on stderr."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOUR_S = 3600
# The folder names the scenario its table was trained for (device GB, server DE-LU, the link
# x 6, the carbon-first objective): a bundle built for another one (the DE-LU -> GB, x15
# demo, or the GB -> DE-LU x6 one under the latency/battery trade-off objective, of earlier
# versions) is not silently reused.
DEFAULT_BUNDLE = "models/demo-resnet18-rpi4-gb-de-x6-carbon-first"


@dataclass
class DemoConfig:
    out_dir: Path = Path("demo-out")
    bundle: Path = Path(DEFAULT_BUNDLE)
    model: str = "resnet18"
    device_profile: str | Path = "rpi4"
    device_zone: str = "GB"
    server_zone: str = "DE-LU"
    bandwidth: str = "norway_bus_1"
    scale: float | None = 6.0  # None: chosen by plan_scenario with the bundle's cost model
    steps: int = 144
    bandwidth_passes: int = 3  # times the (looped) bandwidth trace is walked over the window
    hours: int = 336
    policies: tuple[str, ...] = ("A", "local", "server")
    seed: int = 0
    rebuild: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def say(msg: str, cfg: DemoConfig) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)
