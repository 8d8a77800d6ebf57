"""Q_θ: reproducible training, both objectives, numpy/torch agreement, storage."""

from __future__ import annotations

import numpy as np
import pytest
from carboncp.runtime.errors import ConfigError
from carboncp.tooling.qnet import QModel, fit_q, partition_descriptors

from tests.support.decision import trained


def _toy(n: int = 600, seed: int = 0):
    """Partition 0 is best when bandwidth is high, partition 2 otherwise (plus noise)."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.uniform(0.5, 200, n),
            np.full(n, 20.0),
            rng.uniform(0, 1, n),
            rng.uniform(0, 1, n),
            rng.uniform(50, 600, n),
            rng.uniform(50, 600, n),
            rng.uniform(10, 100, n),
        ]
    )
    j = np.column_stack([100 / x[:, 0], np.full(n, 3.0), np.full(n, 2.0)]) + rng.normal(
        0, 0.1, (n, 3)
    )
    return x, np.argmin(j, axis=1), j


DESC = partition_descriptors([150528, 100352, 0], [0.0, 40.0, 70.0], [8.0, 3.0, 0.0])


@pytest.mark.parametrize("objective", ["ce", "regression"])
def test_training_is_seeded_and_learns(objective: str) -> None:
    x, y, j = _toy()
    a = fit_q(x, y, j, DESC, objective, seed=3, max_epochs=20, batch=32, progress=False)
    b = fit_q(x, y, j, DESC, objective, seed=3, max_epochs=20, batch=32, progress=False)
    for (wa, ba), (wb, bb) in zip(a.layers, b.layers, strict=True):
        assert np.array_equal(wa, wb) and np.array_equal(ba, bb)
    xt, yt, _ = _toy(400, seed=1)
    acc = np.mean(a.predict(xt) == yt)
    assert acc > max(np.mean(yt == k) for k in range(3)) + 0.05  # beats the majority class
    assert a.report["epochs"] >= 1 and a.report["n_val"] > 0


def test_numpy_forward_matches_torch_and_roundtrips() -> None:
    import torch
    from carboncp.tooling.qnet import context_features

    x, y, j = _toy(200)
    q = fit_q(x, y, j, DESC, "ce", max_epochs=2, progress=False)
    clone = QModel.from_arrays(q.meta(), q.arrays())
    assert np.allclose(clone.q(x), q.q(x))
    feats = torch.from_numpy(context_features(x[:5]))
    inp = torch.cat([feats.repeat_interleave(3, 0), torch.from_numpy(DESC).repeat(5, 1)], 1)
    with torch.no_grad():
        ref = q.torch_module()(inp).view(5, 3).numpy()
    assert np.allclose(ref, q.q(x[:5]), atol=1e-4)


def test_bad_objective_and_tiny_data_are_config_errors() -> None:
    x, y, j = _toy(50)
    with pytest.raises(ConfigError, match="objective"):
        fit_q(x, y, j, DESC, "hinge", progress=False)
    with pytest.raises(ConfigError, match="training events"):
        fit_q(x[:5], y[:5], j[:5], DESC, "ce", progress=False)


def test_q_on_a_real_replay_beats_always_local() -> None:
    cm, rp, q, _ = trained()
    te = rp.splits["test"]
    acc = np.mean(q.predict(rp.x_seen[te]) == rp.label[te])
    assert acc > max(np.mean(rp.label[te] == k) for k in (0, cm.P))
