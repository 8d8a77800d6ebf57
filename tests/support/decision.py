"""Helpers for the decision-engine tests: a hand-made ResNet-18 profile (no export needed)
and small replays on the shipped trace slices."""

from __future__ import annotations

import numpy as np
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

HOUR_S = 3600


def resnet18_profile(device_scale: float = 1.0) -> Profile:
    """ResNet-18 on a Pi-4-class device: activation bytes from docs/METHOD.md Appendix A (uint8 image at
    p = 0, float16 activations), head latencies shaped like the stage costs, Pi 4 power."""
    device_ms = np.array([0.0, 9.0, 22.0, 38.0, 54.0, 70.0, 72.0]) * device_scale
    return Profile(
        device_ms=device_ms,
        device_ms_p90=device_ms * 1.1,
        server_ms=np.array([8.2, 7.5, 6.2, 4.6, 3.0, 1.4, 0.0]),
        wire_bytes=np.array([150528, 401408, 401408, 200704, 100352, 50176, 0], dtype=float),
        return_bytes=np.array([4000.0] * 6 + [0.0]),
        p_active_mw=6400.0,
        p_idle_mw=2700.0,
        radio="wifi",
        battery_wh=37.0,
        server_p_marginal_mw=15000.0,
        device_load_u=np.array([0.0, 0.5, 1.0]),
        device_slowdown_g=np.array([1.0, 1.4, 2.2]),
        device="test-rpi4",
    )


# The weights that were the default before the carbon-first objective (issue 9): latency and
# battery traded against carbon at every charge level. Tests whose scenarios were chosen
# under them (e.g. a non-degenerate conformal threshold) keep them explicitly.
TRADEOFF = {"w_latency": 0.2, "w_battery": 0.2, "battery_protect_below_pct": None}


def cost_model(
    slo_ms: float = 300.0, device_scale: float = 1.0, tradeoff: bool = False
) -> CostModel:
    kw = TRADEOFF if tradeoff else {}
    return CostModel(resnet18_profile(device_scale), Objective(slo_ms=slo_ms, **kw))  # type: ignore[arg-type]


def small_replay(
    cm: CostModel,
    device_zone: str = "DE-LU",
    server_zone: str = "GB",
    bandwidth: str = "norway_bus_1",
    days: float = 14,
    events_per_hour: int = 12,
    seed: int = 0,
    bandwidth_scale: float = 1.0,
):
    dev = load_carbon_csv(shipped_carbon_path(device_zone))
    srv = load_carbon_csv(shipped_carbon_path(server_zone))
    bw = load_bandwidth_trace(shipped_bandwidth_path(bandwidth))
    if bandwidth_scale != 1.0:
        bw = type(bw)(bw.name, bw.t_s, bw.mbps * bandwidth_scale, bw.source)
    start = max(dev.start_s, srv.start_s)
    return build_replay(
        dev, srv, bw, cm, events_per_hour=events_per_hour, start_s=start,
        end_s=start + days * 24 * HOUR_S, seed=seed,
    )  # fmt: skip


def make_bundle(root, profile: Profile | None = None, objective: Objective | None = None):
    """A minimal bundle folder (manifest, 'profile' and 'objective' sections; no artifacts):
    enough for the decision engine, without exporting a model."""
    import json
    from pathlib import Path

    from carboncp.runtime.artifacts.bundle import (
        FORMAT,
        FORMAT_VERSION,
        register_file,
        save_manifest,
    )

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    profile = profile or resnet18_profile()
    objective = objective or Objective()
    last = len(profile.wire_bytes) - 1

    def wire_of(p: int, b: float) -> dict:
        """A wire whose bytes are its dtype x shape (checked at load); p = P sends nothing."""
        if p == 0:
            return {"dtype": "uint8", "shape": [1, 3, 224, 224], "bytes": int(b)}
        shape = [1000] if p == last else [int(b) // 2]
        return {"dtype": "float16" if p < last else "float32", "shape": shape, "bytes": int(b)}

    parts = [
        {"p": p, "cut": f"cut{p}", "wire": wire_of(p, b)} for p, b in enumerate(profile.wire_bytes)
    ]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": "resnet18-hand"},
        "input": {"shape": [1, 3, 224, 224], "dtype": "uint8"},
        "output": {"shape": [1, 1000], "dtype": "float32"},
        "partitions": parts,
        "files": {},
        "sections": {"profile": "profile.json", "objective": "objective.json"},
    }
    for name, d in (("profile.json", profile.to_dict()), ("objective.json", objective.to_dict())):
        (root / name).write_text(json.dumps(d))
        register_file(manifest, root, name)
    save_manifest(root, manifest)
    return root


def scaled_bandwidth_file(path, name: str = "norway_bus_1", scale: float = 30.0):
    """A shipped 3G trace with every rate multiplied (a fast link for tests; documented)."""
    bw = load_bandwidth_trace(shipped_bandwidth_path(name))
    lines = [f"{t:.3f}\t{r * scale:.4f}" for t, r in zip(bw.t_s, bw.mbps, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


_CACHE: dict = {}


def trained(
    device_zone: str = "DE-LU",
    server_zone: str = "GB",
    bandwidth_scale: float = 10.0,
    days: float = 21,
    objective: str = "ce",
    epochs: int = 8,
    tradeoff: bool = False,
):
    """(cost model, replay, Q_θ, uncalibrated table) on the shipped slices; cached per session.
    `tradeoff`: the pre-carbon-first weights (`TRADEOFF`) instead of the default objective."""
    from carboncp.tooling.qnet import train_q
    from carboncp.tooling.table_build import build_table, split_indices

    key = (device_zone, server_zone, bandwidth_scale, days, objective, epochs, tradeoff)
    if key not in _CACHE:
        cm = cost_model(tradeoff=tradeoff)
        rp = small_replay(cm, device_zone, server_zone, days=days, bandwidth_scale=bandwidth_scale)
        q = train_q(rp, cm.profile, objective, max_epochs=epochs, progress=False)
        table = build_table(q.q, cm, rp.x_seen[split_indices(rp, "train")], slo_ms=cm.slo)
        _CACHE[key] = (cm, rp, q, table)
    return _CACHE[key]
