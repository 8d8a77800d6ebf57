"""Device-side decision time vs evaluating Q_θ with torch, in one run; and the table's size.

    python -m bench.decision [BUNDLE]        (default models/resnet18, built by carboncp build)

The device path is `TablePolicy.decide` in mode A with the SLO guard and ACI (cell lookup,
conformal set, guard, mode A's expected live cost over the bandwidth quantiles). Mode A's
worst case, every partition in the set, is timed too, with the expected-J rule and with the
old single-quantile rule (`bandwidth_rule="lower"`). As on the device,
`observe` feeds each decision's realised context back (ACI moves the threshold); it runs
outside the timed region. The baseline runs Q_θ in torch for the same decision (features ->
MLP over every partition -> argmin), one context at a time as the device would, interleaved
with the table's decisions. A twin of the mode-A policy is also timed right after each torch
call (caches cold, as after an inference): a harder case, printed next to the main figure.
Contexts are the seen (decision) and true (realised) contexts of a replay on the traces the
bundle was built on. Targets: median <= 20 µs and >= 10x faster; table <= 1 MB (ResNet-18).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np


def _stats(ns: list[int]) -> tuple[float, float]:
    a = np.asarray(ns, dtype=np.float64) / 1000.0
    return float(np.median(a)), float(np.percentile(a, 99))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.decision.context import Context
    from carboncp.runtime.decision.policy import TablePolicy
    from carboncp.runtime.errors import CarbonCPError
    from carboncp.tooling.build import default_traces
    from carboncp.tooling.evaluate import cost_model_of, make_replay
    from carboncp.tooling.qnet import context_features
    from carboncp.tooling.table_build import load_qnet

    path = Path(argv[0] if argv else "models/resnet18")
    try:
        bundle = Bundle.load(path)
        pol = TablePolicy.from_bundle(bundle, mode="A")
        qm = load_qnet(bundle)
    except CarbonCPError as exc:
        print(f"bench.decision: {exc} (build one: carboncp build --model resnet18 --out {path})")
        return 2
    if qm is None:
        print(f"bench.decision: {path} has no 'qnet' section; rebuild it with carboncp build")
        return 2
    import torch

    torch.set_num_threads(1)
    cm = cost_model_of(bundle)
    # Contexts from the traces the bundle was built on (where they are still readable), else
    # the shipped slices: the set sizes, and so mode A's work, depend on the scenario.
    built = pol.table.meta.get("build", {})
    traces = [built.get(k) for k in ("device_carbon", "server_carbon", "bandwidth")]
    if all(isinstance(t, str) and Path(t).is_file() for t in traces):
        rp = make_replay(cm, *traces, days=7)
    elif all(isinstance(t, (str, list)) for t in traces):
        # A mixture (the default build): a week of each component, 2000+ events in all.
        from carboncp.tooling.mixture import components, make_mixture_replay

        paths = [[t] if isinstance(t, str) else t for t in traces]
        if not all(Path(p).is_file() for ps in paths for p in ps):
            paths = [[str(t)] for t in default_traces()]
        comps = components(*paths, built.get("bandwidth_scales"))
        n = max(10, -(-2000 // len(comps)))
        rp = make_mixture_replay(cm, comps, days=7, events_per_component=n)
    else:
        rp = make_replay(cm, *default_traces(), days=7)
    rows = [tuple(r) for r in rp.x_seen[:2000].tolist()]
    ctxs = [Context(*r) for r in rows]
    realised = [Context(*r) for r in rp.x_true[:2000].tolist()]
    net = qm.torch_module()
    desc = torch.from_numpy(qm.descriptors)
    k = desc.shape[0]

    def q_decide(row: tuple[float, ...]) -> int:
        f = torch.from_numpy(context_features(np.asarray([row])))
        with torch.no_grad():
            q = net(torch.cat([f.expand(k, -1), desc], dim=1)).view(-1)
        return int(torch.argmin(q))

    pol_m = TablePolicy.from_bundle(bundle, mode="M")
    # A twin of pol (same state, same decisions) timed right after torch's work.
    pol_cold = TablePolicy.from_bundle(bundle, mode="A")
    for c, r in zip(ctxs[:200], realised[:200], strict=True):  # warm-up every path
        for p in (pol, pol_cold, pol_m):
            p.observe(p.decide(c), c, r)
        q_decide(context_to_row(c))
    t_table, t_torch, t_cold, t_m = [], [], [], []
    clock = time.perf_counter_ns
    for _ in range(3):
        for c, row, r in zip(ctxs, rows, realised, strict=True):
            # As on the device, a decision follows the previous one's observe() (here untimed,
            # at the end of the loop); the twin decides right after torch (cold caches).
            t0 = clock()
            d = pol.decide(c)
            t1 = clock()
            q_decide(row)
            t2 = clock()
            d_cold = pol_cold.decide(c)
            t3 = clock()
            d_m = pol_m.decide(c)
            t4 = clock()
            t_table.append(t1 - t0)
            t_torch.append(t2 - t1)
            t_cold.append(t3 - t2)
            t_m.append(t4 - t3)
            pol.observe(d, c, r)  # the device's feedback: ACI moves the threshold
            pol_cold.observe(d_cold, c, r)
            pol_m.observe(d_m, c, r)
    med_t, p99_t = _stats(t_table)
    med_q, p99_q = _stats(t_torch)
    files = [rel for rel in bundle.manifest["files"] if rel.startswith("table/")]
    on_disk = sum((bundle.path / rel).stat().st_size for rel in files)
    print(
        f"bundle: {path} ({bundle.model_name}, P+1 = {pol.p1} partitions, {pol.table.scores.shape[0]} cells)"
    )
    print(
        f"decisions timed: {len(t_table)} (mode A, SLO guard, ACI updated after each; 7 days of "
        f"{' / '.join(_names(t) for t in traces)})"
    )
    print(
        f"table decision (pure Python): median {med_t:7.2f} µs   p99 {p99_t:7.2f} µs   target median <= 20 µs"
    )
    print(f"Q_θ in torch (same decision):  median {med_q:7.2f} µs   p99 {p99_q:7.2f} µs")
    print(f"ratio torch / table (median): {med_q / med_t:6.1f}x   target >= 10x")
    med_c, p99_c = _stats(t_cold)
    print(
        f"(mode A right after torch's work, cold caches: median {med_c:.2f} µs, "
        f"p99 {p99_c:.2f} µs, ratio {med_q / med_c:.1f}x)"
    )
    med_m, p99_m = _stats(t_m)
    print(
        f"(mode M, no live cost: median {med_m:.2f} µs, p99 {p99_m:.2f} µs, "
        f"ratio {med_q / med_m:.1f}x)"
    )
    for rule in ("expected", "lower"):
        med_f, p99_f = _full_set((bundle,), ctxs, realised, rule)
        print(
            f"(mode A pricing the full set, q̂ = inf, bandwidth_rule {rule!r}: median "
            f"{med_f:.2f} µs, p99 {p99_f:.2f} µs, ratio {med_q / med_f:.1f}x)"
        )
    med_g, p99_g = _probe_gate(pol, ctxs)
    print(
        f"(the probe gate, only when a probe is due: median {med_g:.2f} µs, p99 {p99_g:.2f} µs, "
        f"{med_g / med_t:.0f}x a decision; docs/METHOD.md §2.1)"
    )
    print(
        f"table size: {on_disk} bytes on disk ({len(files)} files), arrays {pol.table.n_bytes()} bytes   target <= 1,000,000"
    )
    return 0


def _probe_gate(pol: object, ctxs: list) -> tuple[float, float]:
    """The probe gate's work when a probe is due (the device loop's `_probe_gate`): the
    value of measuring the link (VOI over mode A's residual quantiles) and the probe's cost,
    on the policy's current belief about the link."""
    from carboncp.runtime.decision.probe_value import probe_value
    from carboncp.runtime.link.offload import PROBE_BYTES

    res = pol.residuals  # type: ignore[attr-defined]
    cost = pol.cost  # type: ignore[attr-defined]
    ns = []
    clock = time.perf_counter_ns
    for c in ctxs:
        row = context_to_row(c)
        t0 = clock()
        probe_value(cost, row, res.factors, res.lower_factor, PROBE_BYTES, 20.0)
        ns.append(clock() - t0)
    return _stats(ns)


def _names(t: object) -> str:
    """A trace path's file name, or a mixture's component count."""
    if isinstance(t, (list, tuple)):
        return f"{len(t)} traces"
    return Path(str(t)).name


def _full_set(
    pol_args: tuple, ctxs: list, realised: list, rule: str = "expected"
) -> tuple[float, float]:
    """Mode A with every partition in every set (split CP at q̂ = inf): its worst case,
    pricing all P+1 partitions at every bandwidth quantile per decision ("expected"), or
    at the single pessimistic rate (rule "lower", mode A before issue 9)."""
    import math

    from carboncp.runtime.decision.policy import TablePolicy

    pol = TablePolicy.from_bundle(*pol_args, mode="A", online="split", bandwidth_rule=rule)
    pol.qhat = math.inf
    for c, r in zip(ctxs[:200], realised[:200], strict=True):
        pol.observe(pol.decide(c), c, r)
    ns = []
    clock = time.perf_counter_ns
    for c, r in zip(ctxs, realised, strict=True):
        t0 = clock()
        d = pol.decide(c)
        ns.append(clock() - t0)
        pol.observe(d, c, r)
    return _stats(ns)


def context_to_row(c: object) -> tuple[float, ...]:
    from carboncp.runtime.decision.context import context_to_row as f

    return f(c)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
