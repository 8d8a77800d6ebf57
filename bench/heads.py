"""Head latency per partition and format against torch eager, and the memory of a runtime
process on the LiteRT path.

    python -m bench.heads models/resnet18 [--repeat 30] [--threads 1] [--plot heads.png]

For every partition p = 1..P it times the head as torch eager (the model the bundle was
exported from, rebuilt from the manifest's factory and seed: latency does not depend on the
weights), as ExecuTorch .pte and as LiteRT .tflite, interleaving the three in every round so
that load from other processes hits them alike, and prints the medians and the ratio to
eager. Then it starts a separate process that imports only carboncp.runtime (torch blocked),
runs every LiteRT head, and reports its peak RSS (VmHWM from /proc/self/status, since
ru_maxrss on Linux carries over the parent's peak across fork+exec; ru_maxrss elsewhere).
Targets (issue 2): heads <= 0.6x torch eager; LiteRT runtime process <= 200 MB RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

RATIO_TARGET = 0.6
RSS_TARGET_MB = 200.0

RSS_CHILD = textwrap.dedent(
    """
    import resource, sys, json
    for name in ("torch", "executorch", "carboncp.tooling"):
        sys.modules[name] = None  # the device has neither
    import numpy as np
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.artifacts.runners import LiteRTRunner
    bundle = Bundle.load(sys.argv[1])
    max_loaded = int(sys.argv[3]) or None
    runner = LiteRTRunner(bundle, num_threads=int(sys.argv[2]), max_loaded=max_loaded)
    x = np.random.default_rng(0).integers(0, 256, bundle.input_shape, dtype=np.uint8)
    for p in range(1, bundle.last + 1):
        for _ in range(3):
            runner.run(p, x)
    # ru_maxrss survives exec on Linux (a child of a big parent reports the parent's peak);
    # VmHWM belongs to this process's own address space, so prefer it.
    kb, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                kb, how = int(line.split()[1]), "VmHWM"
    except OSError:
        pass
    print(json.dumps({"max_rss_mb": kb / 1024.0, "how": how, "backend": runner.backend,
                      "max_loaded": max_loaded}))
    """
)


def _eager_heads(bundle, threads: int):
    import torch
    from carboncp.models.zoo import load_model
    from carboncp.tooling.cuts import find_cuts

    torch.set_num_threads(threads)
    m = bundle.manifest["model"]
    seed = int(m.get("weights", {}).get("seed", 0))
    model = load_model(m["factory"], seed=seed).model
    cuts = find_cuts(model, torch.rand(bundle.input_shape))
    heads = {p: cuts.head(p) for p in range(1, bundle.last + 1)}

    def run(p: int, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return heads[p](torch.from_numpy(x)).numpy()

    return run


BLOCK = 5
PAUSE_S = 0.3


def measure(bundle, repeat: int, warmup: int, threads: int) -> list[dict]:
    from carboncp.runtime.artifacts.runners import ExecuTorchRunner, LiteRTRunner

    eager = _eager_heads(bundle, threads)
    fns = {"eager": eager}
    fmts = set(bundle.manifest.get("formats", {}).get("head", ["pte", "tflite"]))
    if "pte" in fmts:
        fns["pte"] = ExecuTorchRunner(bundle, part="head", num_threads=threads).run
    if "tflite" in fmts:
        fns["tflite"] = LiteRTRunner(bundle, num_threads=threads).run
    x = np.random.default_rng(0).integers(0, 256, bundle.input_shape, dtype=np.uint8)
    rows = []
    for p in range(1, bundle.last + 1):
        for f in fns.values():
            for _ in range(warmup):
                f(p, x)
        times: dict[str, list[float]] = {k: [] for k in fns}
        names = list(fns)
        # Blocks of BLOCK runs per backend, the order rotated every round so that load from
        # other processes hits all alike; a pause between blocks lets the previous backend's
        # idle worker threads (torch's OpenMP pool spins after each call) go to sleep, or
        # they steal a core from the next backend when threads > 1.
        for r in range(-(-repeat // BLOCK)):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                time.sleep(PAUSE_S)
                for _ in range(min(BLOCK, repeat - r * BLOCK)):
                    t = time.perf_counter()
                    fns[k](p, x)
                    times[k].append((time.perf_counter() - t) * 1e3)
        med = {k: float(np.median(v)) for k, v in times.items()}
        row = {"p": p, "cut": bundle.partitions[p].cut, "eager_ms": med["eager"]}
        for k in fns:
            if k != "eager":
                row[f"{k}_ms"] = med[k]
                row[f"{k}_ratio"] = med[k] / med["eager"]
        # best-of-N too: on a shared machine it is the less noisy estimate of intrinsic speed
        row.update({f"{k}_min_ms": float(np.min(v)) for k, v in times.items()})
        rows.append(row)
        print(
            f"  p={p} {row['cut']:<24} eager {med['eager']:8.2f} ms  "
            + "  ".join(
                f"{k} {med[k]:8.2f} ms ({med[k] / med['eager']:.2f}x)" for k in fns if k != "eager"
            ),
            file=sys.stderr,
            flush=True,
        )
    return rows


def litert_rss(path: Path, threads: int, max_loaded: int | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(path), str(threads), str(max_loaded or 0)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"LiteRT RSS child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ps = np.array([r["p"] for r in rows])
    keys = [k for k in ("eager", "pte", "tflite") if f"{k}_ms" in rows[0]]
    w = 0.8 / len(keys)
    for i, k in enumerate(keys):
        ax.bar(ps + (i - (len(keys) - 1) / 2) * w, [r[f"{k}_ms"] for r in rows], w, label=k)
    ax.set_xticks(ps, [f"{r['p']}\n{r['cut']}" for r in rows], fontsize=8)
    ax.set_ylabel("median head latency (ms)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--repeat", type=int, default=30, help="timed runs per head and format")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="threads for every backend (default 1)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--plot", type=Path, help="also write a PNG bar chart")
    args = ap.parse_args(argv)

    from carboncp.runtime.artifacts.bundle import Bundle

    bundle = Bundle.load(args.bundle)
    print(
        f"bench.heads: {bundle.model_name}, {args.repeat} runs per head, {args.threads} thread(s)",
        file=sys.stderr,
    )
    rows = measure(bundle, args.repeat, args.warmup, args.threads)
    rss_all = litert_rss(bundle.path, args.threads, None)
    rss_one = litert_rss(bundle.path, args.threads, 1)

    print(f"\n{bundle.model_name}: median head latency (ms), ratio to torch eager in the same run")
    print(f"{'p':>2}  {'cut':<24} {'eager':>8} {'pte':>8} {'ratio':>6} {'tflite':>8} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['p']:>2}  {r['cut']:<24} {r['eager_ms']:8.2f} "
            f"{r.get('pte_ms', float('nan')):8.2f} {r.get('pte_ratio', float('nan')):6.2f} "
            f"{r.get('tflite_ms', float('nan')):8.2f} {r.get('tflite_ratio', float('nan')):6.2f}"
        )
    full = rows[-1]
    best = "  ".join(
        f"{k} {full[f'{k}_min_ms'] / full['eager_min_ms']:.2f}x"
        for k in ("pte", "tflite")
        if f"{k}_min_ms" in full
    )
    print(f"full model, best of {args.repeat} instead of median: {best}")
    verdicts = []
    for k in ("pte", "tflite"):
        if f"{k}_ratio" in full:
            ok = full[f"{k}_ratio"] <= RATIO_TARGET
            verdicts.append(
                f"full model {k}: {full[f'{k}_ratio']:.2f}x eager (target <= {RATIO_TARGET}x) {'OK' if ok else 'MISSED'}"
            )
    for rss, how in (
        (rss_one, "max_loaded=1, `carboncp run`'s default max_loaded_heads"),
        (rss_all, "every head kept loaded, max_loaded_heads = 0"),
    ):
        ok = rss["max_rss_mb"] <= RSS_TARGET_MB
        verdicts.append(
            f"LiteRT runtime process ({rss['backend']}, no torch, runs every head, {how}): "
            f"peak RSS ({rss['how']}) {rss['max_rss_mb']:.0f} MB (target <= "
            f"{RSS_TARGET_MB:.0f} MB) {'OK' if ok else 'MISSED'}"
        )
    print("\n" + "\n".join(verdicts))
    result = {"model": bundle.model_name, "threads": args.threads, "repeat": args.repeat,
              "heads": rows, "litert_process": {"all_loaded": rss_all, "max_loaded_1": rss_one}}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot, f"{bundle.model_name}: head latency, {args.threads} thread(s)")
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
