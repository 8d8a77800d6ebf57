"""Cost-model and replay speed, measured side by side in one run.

    python -m bench.costs

Prints: the pure-Python `CostModel.row_objective` (mode A's live cost, one context, 7
partitions) against `CostModel.evaluate` on a single row (numpy), with their ratio; the
vectorised cost of many rows; and `build_replay` over the shipped 8-week slices (20,160
events). Targets: row_objective a few µs and well below one numpy call; the replay of 20k
events well under a second or two.
"""

from __future__ import annotations

import sys
import time
import timeit

import numpy as np


def _best_us(fn, number: int) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> int:
    from carboncp.runtime.decision.costs import CostModel
    from carboncp.runtime.decision.objective import Objective
    from carboncp.runtime.decision.profile import Profile
    from carboncp.runtime.signals.traces import (
        load_bandwidth_trace,
        load_carbon_csv,
        shipped_bandwidth_path,
        shipped_carbon_path,
    )
    from carboncp.tooling.contexts import build_replay

    dm = np.array([0.0, 1.0, 2.5, 4.2, 6.1, 7.9, 8.2]) * 15.0
    prof = Profile(
        device_ms=dm,
        device_ms_p90=dm * 1.1,
        server_ms=np.array([8.2, 7.2, 5.7, 4.0, 2.1, 0.3, 0.0]),
        wire_bytes=[150528, 802816, 802816, 401408, 200704, 100352, 0],
        return_bytes=[4000] * 6 + [0],
        p_active_mw=6400.0,
        p_idle_mw=2700.0,
        radio="wifi",
        battery_wh=37.0,
        server_p_marginal_mw=15000.0,
        device_load_u=[0.0, 0.5, 1.0],
        device_slowdown_g=[1.0, 1.3, 1.9],
    )
    cm = CostModel(prof, Objective())
    x = np.array([[25.0, 20.0, 0.3, 0.4, 350.0, 120.0, 60.0]])
    ctx = tuple(float(v) for v in x[0])
    row = _best_us(lambda: cm.row_objective(ctx, 25.0), 20000)
    one = _best_us(lambda: cm.evaluate(x), 2000)
    xs = np.repeat(x, 10000, axis=0)
    many = _best_us(lambda: cm.evaluate(xs), 5) / 10000
    print(f"row_objective (pure Python, 7 partitions): {row:8.2f} µs")
    print(f"evaluate, one row (numpy):                  {one:8.2f} µs  ({one / row:.1f}x slower)")
    print(f"evaluate, per row of 10,000:                {many:8.3f} µs")

    dev = load_carbon_csv(shipped_carbon_path("DE-LU"))
    srv = load_carbon_csv(shipped_carbon_path("GB"))
    bw = load_bandwidth_trace(shipped_bandwidth_path("norway_bus_1"))
    t0 = time.perf_counter()
    rp = build_replay(dev, srv, bw, cm, events_per_hour=15)
    dt = time.perf_counter() - t0
    print(f"build_replay: {len(rp)} events in {dt:.3f} s ({dt / len(rp) * 1e6:.1f} µs/event)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
