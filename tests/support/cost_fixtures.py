"""Small synthetic profiles for cost-model, replay and policy tests (no bundle needed)."""

from __future__ import annotations

import numpy as np
from carboncp.runtime.decision.profile import Profile


def resnet18_like_profile(device_scale: float = 10.0) -> Profile:
    """ResNet-18-shaped profile: host latencies (docs/METHOD.md Appendix A) scaled for a slow device."""
    dm = np.array([0.0, 1.0, 2.5, 4.2, 6.1, 7.9, 8.2]) * device_scale
    return Profile(
        device_ms=dm,
        device_ms_p90=dm * 1.1,
        server_ms=np.array([8.2, 7.2, 5.7, 4.0, 2.1, 0.3, 0.0]) * 0.5,
        wire_bytes=[150528, 802816, 802816, 401408, 200704, 100352, 0],
        return_bytes=[4000, 4000, 4000, 4000, 4000, 4000, 0],
        p_active_mw=6400.0,
        p_idle_mw=2700.0,
        radio="wifi",
        battery_wh=37.0,
        server_p_marginal_mw=15000.0,
        device_load_u=[0.0, 0.5, 1.0],
        device_slowdown_g=[1.0, 1.4, 2.1],
        server_load_v=[0.0, 1.0],
        server_slowdown_g=[1.0, 1.5],
        device="synthetic-resnet18-like",
    )


def random_contexts(n: int, seed: int = 0, outage_rate: float = 0.05) -> np.ndarray:
    """(n, 7) contexts in CONTEXT_FIELDS order covering fast, slow and dead links."""
    rng = np.random.default_rng(seed)
    bw = rng.exponential(30.0, n) * (rng.random(n) > outage_rate)
    return np.column_stack(
        [
            bw,
            rng.uniform(2, 80, n),
            rng.random(n),
            rng.random(n),
            rng.uniform(5, 700, n),
            rng.uniform(5, 700, n),
            rng.uniform(0, 100, n),
        ]
    )
