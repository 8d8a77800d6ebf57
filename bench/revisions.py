"""Hot paths before and after a change: run benchmarks on a base revision and on this tree,
interleaved in one run, and print each figure side by side with the ratio.

    python -m bench.revisions --base REV [--head REV] --bundle DIR [--rounds 3] [decision loop]

The base revision is checked out into a temporary git worktree; its own `bench/` and package
(under a path shim, ahead of this tree's editable install) run in the same venv, so both
sides use the same interpreters and the same bundle. Rounds alternate base and head so that
a busy machine slows both alike; each figure is the median over rounds. A ratio above 1.0
means this tree is slower.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "tooling", "firmware_bridge", "models")
# Per benchmark: (figure name, regex capturing the number in its output).
FIGURES: dict[str, list[tuple[str, str]]] = {
    "decision": [
        (
            "table decision, mode A, median (µs)",
            r"table decision \(pure Python\): median\s+([\d.]+)",
        ),
        ("mode A after torch, cold caches, median (µs)", r"cold caches: median ([\d.]+)"),
        ("mode M, median (µs)", r"mode M, no live cost: median ([\d.]+)"),
    ],
    "loop": [
        ("loop overhead beyond the head (ms)", r"overhead \(total - head\)\s+([\d.]+) ms"),
        ("loop.infer total (ms)", r"loop\.infer total\s+([\d.]+) ms"),
        ("peak RSS of carboncp run (MB)", r"peak RSS .*?: (\d+) MB"),
    ],
}


def bench_args(name: str, bundle: str) -> list[str]:
    """The command-line arguments of benchmark `name` on `bundle`."""
    return [bundle] if name == "decision" else ["--bundle", bundle, "--n", "40"]


def checkout(rev: str, into: Path) -> Path:
    """A detached worktree of `rev` at `into`/tree, with a path shim exposing its packages as
    `carboncp.*`; returns the shim folder (to put first on PYTHONPATH)."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-f", str(into / "tree"), rev],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    shim = into / "shim" / "carboncp"
    shim.mkdir(parents=True)
    for pkg in PACKAGES:
        (shim / pkg).symlink_to(into / "tree" / pkg)
    return into / "shim"


def remove_worktree(tree: Path) -> None:
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True
    )


def run_once(name: str, bundle: str, cwd: Path, pythonpath: str | None) -> dict[str, float]:
    """One run of `python -m bench.NAME` in `cwd`; the figures FIGURES names, parsed."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *bench_args(name, bundle)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"bench.{name} failed in {cwd}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    figures = {}
    for label, rx in FIGURES[name]:
        m = re.search(rx, out.stdout)
        if m:
            figures[label] = float(m.group(1))
    return figures


def compare(
    names: list[str], bundle: str, base: str, rounds: int, head: str | None = None
) -> list[tuple[str, float, float]]:
    """(figure, base median, head median) for every figure of every benchmark; head is this
    working tree unless a revision is given."""
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="carboncp-base-") as tmp,
        tempfile.TemporaryDirectory(prefix="carboncp-head-") as tmp_head,
    ):
        shim = checkout(base, Path(tmp))
        head_cwd, head_shim = REPO, None
        if head is not None:
            head_shim = str(checkout(head, Path(tmp_head)))
            head_cwd = Path(tmp_head) / "tree"
        try:
            for name in names:
                runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
                for r in range(rounds):
                    print(f"[bench.revisions] {name}: round {r + 1}/{rounds}", file=sys.stderr)
                    runs["base"].append(run_once(name, bundle, Path(tmp) / "tree", str(shim)))
                    runs["head"].append(run_once(name, bundle, head_cwd, head_shim))
                for label, _ in FIGURES[name]:
                    b = [f[label] for f in runs["base"] if label in f]
                    h = [f[label] for f in runs["head"] if label in f]
                    if b and h:
                        rows.append((label, statistics.median(b), statistics.median(h)))
        finally:
            remove_worktree(Path(tmp) / "tree")
            if head is not None:
                remove_worktree(Path(tmp_head) / "tree")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benches", nargs="*", default=["decision", "loop"], choices=sorted(FIGURES))
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--head", default=None, help="git revision to measure (default: this tree)")
    ap.add_argument("--bundle", required=True, help="a built bundle with a table (carboncp build)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs per side (median)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if not (Path(args.bundle) / "manifest.json").is_file():
        ap.error(f"{args.bundle}: no bundle; build one with 'carboncp build'")
    bundle = str(Path(args.bundle).resolve())
    rows = compare(args.benches, bundle, args.base, args.rounds, args.head)
    width = max(len(r[0]) for r in rows) if rows else 10
    head = args.head[:10] if args.head else "this tree"
    print(f"{'figure':<{width}}  {'base ' + args.base[:10]:>16}  {head:>10}  ratio")
    for label, b, h in rows:
        print(f"{label:<{width}}  {b:16.3f}  {h:10.3f}  {h / b if b else float('nan'):5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
