"""The device loop's overhead, and the runtime's peak memory, for ResNet-18 run locally.

    python -m bench.loop [--bundle models/demo-resnet18-rpi4-gb-de-x6] [--n 60]

1. Overhead: the same images go through (a) the LiteRT full-model head called directly and
   (b) DeviceLoop.infer with the bundle's real TablePolicy (mode A) forced to run locally, a
   JSON-lines log, the cost model's record and modelled energy. Overhead = loop latency -
   head time inside the loop; reported as a % of the directly measured head time (medians,
   interleaved in one run). Target: <= 5 %.
2. Peak RSS of `carboncp run` on the LiteRT path (a separate process, policy table, local
   inputs, no server), from getrusage of the child. Target: <= 250 MB.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def overhead(bundle_path: Path, n: int) -> dict[str, float]:
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.artifacts.runners import make_runner
    from carboncp.runtime.decision.context import Decision
    from carboncp.runtime.decision.policy import TablePolicy
    from carboncp.runtime.device.loop import DeviceLoop, LoopConfig, StaticCarbon
    from carboncp.runtime.device.wiring import optional_cost_model as cost_model_of
    from carboncp.runtime.signals.load import LoadSampler

    bundle = Bundle.load(bundle_path)
    P = bundle.last
    inner = TablePolicy.from_bundle(bundle, mode="A")

    class Local:  # the real decision path runs; its choice is replaced by local execution
        def decide(self, seen):
            d = inner.decide(seen)
            return Decision(P, d.candidates, d.mode, d.cell, d.flags)

        def observe(self, decision, seen, realised):
            inner.observe(decision, seen, realised)

    head = make_runner(bundle, backend="litert")
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "log.jsonl", "w") as log:
        loop = DeviceLoop(
            bundle, Local(), head, carbon=StaticCarbon({"DE-LU": 300.0, "GB": 150.0}),
            config=LoopConfig(device_zone="DE-LU", server_zone="GB"),
            cost_model=cost_model_of(bundle), load=LoadSampler(), log=log,
        )  # fmt: skip
        rng = np.random.default_rng(0)
        xs = [rng.integers(0, 256, bundle.input_shape, dtype=np.uint8) for _ in range(8)]
        for x in xs[:3]:  # warm both paths
            head.run(P, x)
            loop.infer(x)
        direct, total, inside = [], [], []
        for i in range(n):
            x = xs[i % len(xs)]
            t = time.perf_counter()
            head.run(P, x)
            direct.append((time.perf_counter() - t) * 1000.0)
            rec = loop.infer(x)
            total.append(rec.latency_ms)
            inside.append(rec.phases_ms["head"])
    head.close()
    d, tot, ins = (float(np.median(v)) for v in (direct, total, inside))
    over = np.array(total) - np.array(inside)
    return {
        "head_direct_ms": d,
        "loop_total_ms": tot,
        "head_in_loop_ms": ins,
        "overhead_ms": float(np.median(over)),
        "overhead_pct_of_head": float(np.median(over)) / d * 100.0,
        "loop_minus_direct_pct": (tot - d) / d * 100.0,
    }


def peak_rss_mb(bundle_path: Path, count: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "carboncp.runtime.cli", "run", "--bundle", str(bundle_path),
           "--count", str(count), "--input", "random", "--quiet"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"carboncp run failed: {proc.stderr[-800:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        print(
            "note: an earlier child had a larger peak; the figure is an upper bound",
            file=sys.stderr,
        )
    torch_loaded = "torch" in proc.stderr.lower() and "import" in proc.stderr.lower()
    if torch_loaded:
        print("warning: the run's stderr mentions importing torch", file=sys.stderr)
    return after / 1024.0  # ru_maxrss is KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--bundle",
        default="models/demo-resnet18-rpi4-gb-de-x6",
        help="a built ResNet-18 bundle (carboncp demo builds one)",
    )
    ap.add_argument("--n", type=int, default=60, help="inferences measured")
    args = ap.parse_args()
    path = Path(args.bundle)
    if not (path / "manifest.json").is_file():
        raise SystemExit(f"{path}: no bundle; run 'carboncp demo' (or carboncp build) first")
    print(
        f"bench.loop on {path} ({args.n} inferences, LiteRT heads, OMP_NUM_THREADS=1)",
        file=sys.stderr,
    )
    o = overhead(path, args.n)
    print(f"head (full model, direct)   {o['head_direct_ms']:8.2f} ms  (baseline, same run)")
    print(f"loop.infer total            {o['loop_total_ms']:8.2f} ms")
    print(f"  head inside the loop      {o['head_in_loop_ms']:8.2f} ms")
    print(
        f"  overhead (total - head)   {o['overhead_ms']:8.3f} ms = {o['overhead_pct_of_head']:.2f} % of head time (target <= 5 %)"
    )
    print(f"loop total vs direct head   {o['loop_minus_direct_pct']:+.2f} %")
    rss = peak_rss_mb(path, 30)
    print(
        f"peak RSS of 'carboncp run' (LiteRT, table policy, 30 local inferences): {rss:.0f} MB (target <= 250 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
