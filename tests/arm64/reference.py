"""What both sides of `make test-arm64` compute the same way: amd64 (tools/arm64/host.py, the
references) and the arm64 chroot (tests/arm64/, the comparison). numpy and the runtime only:
the chroot has no torch."""

from __future__ import annotations

from typing import Any

import numpy as np
from carboncp.runtime.decision.context import Context

# Policies over the hand table (tests/support/hand_table.py): every mode, and every online
# recalibration that carries state from one decision to the next (ACI's α_t, weighted CP's
# refits every 100 observations).
POLICIES: dict[str, dict[str, Any]] = {
    "A-aci": {"mode": "A"},
    "A-weighted": {"mode": "A", "online": "weighted"},
    "M-split": {"mode": "M", "online": "split"},
    "R-aci": {"mode": "R", "seed": 7},
}
N_CONTEXTS = 400


def head_inputs(bundle: Any, n: int = 3) -> list[np.ndarray]:
    """n seeded random images plus the two extremes (all 0, all 255)."""
    rng = np.random.default_rng(12345)
    xs = [rng.integers(0, 256, bundle.input_shape, dtype=np.uint8) for _ in range(n)]
    return [*xs, np.zeros(bundle.input_shape, np.uint8), np.full(bundle.input_shape, 255, np.uint8)]


def run_heads(bundle: Any, runner: Any, xs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """{"p<p>": outputs of head p stacked over xs} for every head."""
    return {
        f"p{part.p}": np.stack([runner.run(part.p, x) for x in xs])
        for part in bundle.partitions[1:]
    }


def contexts(n: int = N_CONTEXTS) -> list[tuple[list[float], list[float]]]:
    """n (seen, realised) context rows spanning every table cell: links from 0.05 to 300 Mbit/s
    (the realised rate off the seen one by a log-normal factor), carbon either side of the hand
    table's 300 g/kWh edge, any load and battery."""
    rng = np.random.default_rng(2024)
    out = []
    for _ in range(n):
        bw = float(np.exp(rng.uniform(np.log(0.05), np.log(300.0))))
        seen = [
            bw,
            float(rng.uniform(1.0, 200.0)),
            float(rng.uniform(0.0, 1.0)),
            float(rng.uniform(0.0, 1.0)),
            float(rng.uniform(10.0, 1000.0)),
            float(rng.uniform(10.0, 1000.0)),
            float(rng.uniform(5.0, 100.0)),
        ]
        realised = [bw * float(np.exp(rng.normal(0.0, 0.3))), *seen[1:]]
        out.append((seen, realised))
    return out


def run_decisions(policy: Any, ctxs: list[tuple[list[float], list[float]]]) -> list[list[Any]]:
    """[partition, candidates, cell, flags] per context, deciding then observing in order, so
    the online state (ACI, weighted CP, mode A's residual window) carries through."""
    out = []
    for seen_row, realised_row in ctxs:
        seen, realised = Context(*seen_row), Context(*realised_row)
        d = policy.decide(seen)
        policy.observe(d, seen, realised)
        out.append([d.partition, list(d.candidates), d.cell, list(d.flags)])
    return out
