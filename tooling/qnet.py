"""Q_θ, the implicit predictor of docs/METHOD.md §5: a small MLP scoring every partition.

Q_θ(x̂, p) takes the normalised decision-time context x̂ and a descriptor of partition p
(log wire bytes, head and tail latency, one-hot p) and returns an energy; lower is better.
Two objectives: "ce" (cross-entropy of softmax(−Q) against the oracle label) and
"regression" (Q regresses the realised J of every partition, fallbacks included).

Training is seeded and deterministic (one thread, deterministic kernels), stops early on a
chronological validation split, and prints progress to stderr. The trained weights are
plain arrays (`QModel.arrays`), stored in a bundle as .npy files and evaluated in numpy
(`QModel.q`) when the table is compiled; `QModel.torch_module()` rebuilds the torch module
(the decision benchmark times it).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OBJECTIVES = ("ce", "regression")

# Fixed, physical normalisation of the context (not training statistics): an unseen zone
# with twice the carbon intensity stays in a sensible input range instead of far out.
_LOG_B_FLOOR_MBPS = 0.05


def context_features(x: np.ndarray) -> np.ndarray:
    """(N, 7) context in CONTEXT_FIELDS order -> (N, 7) network inputs."""
    x = np.asarray(x, dtype=np.float64)
    b = np.log10(np.maximum(x[:, 0], _LOG_B_FLOOR_MBPS)) / 2.0
    return np.stack(
        [
            b,
            x[:, 1] / 100.0,
            x[:, 2],
            x[:, 3],
            x[:, 4] / 500.0,
            x[:, 5] / 500.0,
            x[:, 6] / 100.0,
        ],
        axis=1,
    ).astype(np.float32)


def partition_descriptors(
    wire_bytes: list[float], device_ms: list[float], server_ms: list[float]
) -> np.ndarray:
    """(P+1, 3 + P+1): log10 wire bytes, τ_d/1000, τ_s/1000 and one-hot p."""
    n = len(wire_bytes)
    d = np.zeros((n, 3 + n), dtype=np.float32)
    d[:, 0] = np.log10(np.asarray(wire_bytes, dtype=np.float64) + 1.0) / 6.0
    d[:, 1] = np.asarray(device_ms, dtype=np.float64) / 1000.0
    d[:, 2] = np.asarray(server_ms, dtype=np.float64) / 1000.0
    d[:, 3:] = np.eye(n, dtype=np.float32)
    return d


def descriptors_from_profile(profile: Any) -> np.ndarray:
    """Partition descriptors from a Profile (per-partition wire_bytes, device_ms, server_ms)."""
    return partition_descriptors(
        list(profile.wire_bytes), list(profile.device_ms), list(profile.server_ms)
    )


@dataclass
class QModel:
    """A trained Q_θ as plain arrays: layers [(W, b), ...] with ReLU between them."""

    objective: str
    descriptors: np.ndarray  # (P+1, D)
    layers: list[tuple[np.ndarray, np.ndarray]]
    target_scale: float = 1.0
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_partitions(self) -> int:
        return int(self.descriptors.shape[0])

    def q(self, x: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Q_θ(x̂, p) for every row and partition, (N, P+1), evaluated in numpy."""
        feats = context_features(np.atleast_2d(x))
        out = np.empty((feats.shape[0], self.n_partitions), dtype=np.float64)
        for i in range(0, feats.shape[0], batch):
            out[i : i + batch] = self._forward(feats[i : i + batch])
        return out

    def _forward(self, feats: np.ndarray) -> np.ndarray:
        n, k = feats.shape[0], self.n_partitions
        h = np.concatenate(
            [np.repeat(feats, k, axis=0), np.tile(self.descriptors, (n, 1))], axis=1
        ).astype(np.float32)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h.reshape(n, k).astype(np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Point prediction ŷ(x̂) = argmin_p Q_θ(x̂, p)."""
        return np.argmin(self.q(x), axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"descriptors": self.descriptors.astype(np.float32)}
        for i, (w, b) in enumerate(self.layers):
            out[f"w{i}"] = w.astype(np.float32)
            out[f"b{i}"] = b.astype(np.float32)
        return out

    def meta(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "n_layers": len(self.layers),
            "target_scale": self.target_scale,
            "features": "carboncp.tooling.qnet.context_features v1",
            "report": self.report,
        }

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> QModel:
        layers = [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(int(meta["n_layers"]))]
        return cls(
            objective=str(meta["objective"]),
            descriptors=arrays["descriptors"],
            layers=layers,
            target_scale=float(meta.get("target_scale", 1.0)),
            report=dict(meta.get("report", {})),
        )

    def torch_module(self) -> Any:
        """The same network as a torch module (for the benchmark and for checks)."""
        import torch

        mods: list[Any] = []
        for i, (w, b) in enumerate(self.layers):
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)))
                lin.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32)))
            mods.append(lin)
            if i < len(self.layers) - 1:
                mods.append(torch.nn.ReLU())
        return torch.nn.Sequential(*mods).eval()


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fit_q(
    x_seen: np.ndarray,
    labels: np.ndarray,
    realised_j: np.ndarray,
    descriptors: np.ndarray,
    objective: str = "ce",
    *,
    seed: int = 0,
    hidden: int = 64,
    max_epochs: int = 60,
    patience: int = 6,
    batch: int = 256,
    lr: float = 3e-3,
    val_fraction: float = 0.2,
    progress: bool = True,
) -> QModel:
    """Train Q_θ on chronologically ordered events; the last `val_fraction` validates."""
    import torch

    n = len(x_seen)
    _check_training_input(objective, n)
    with _deterministic_torch(seed):
        feats = torch.from_numpy(context_features(x_seen))
        desc = torch.from_numpy(np.asarray(descriptors, dtype=np.float32))
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        j = np.asarray(realised_j, dtype=np.float64)
        # Regression target in units of a typical J (the median local-only J), clipped so
        # that a handful of extreme fallbacks cannot dominate the squared error.
        scale = float(np.median(j[:, -1])) or 1.0
        jt = torch.from_numpy(np.clip(j / scale, 0.0, 50.0).astype(np.float32))
        n_val = max(1, round(n * val_fraction))
        tr, va = np.arange(n - n_val), np.arange(n - n_val, n)
        net = _make_net(feats.shape[1] + desc.shape[1], hidden)

        def loss_of(idx: Any) -> Any:
            f = feats[idx]
            m, k = f.shape[0], desc.shape[0]
            q = net(torch.cat([f.repeat_interleave(k, 0), desc.repeat(m, 1)], dim=1)).view(m, k)
            if objective == "ce":
                return torch.nn.functional.cross_entropy(-q, y[idx])
            return torch.mean((q - jt[idx]) ** 2)

        t0 = time.monotonic()
        best, epoch = _train(
            net, loss_of, tr, va, objective, seed, max_epochs, patience, batch, lr, progress
        )
        lins = [m for m in net if isinstance(m, torch.nn.Linear)]
        layers = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in lins]
    report = {
        "epochs": epoch,
        "best_val_loss": best,
        "n_train": len(tr),
        "n_val": int(n_val),
        "seconds": round(time.monotonic() - t0, 2),
        "seed": seed,
    }
    if progress:
        _progress(f"  Q_θ[{objective}] done: {epoch} epochs, best val loss {best:.4f}")
    return QModel(objective, np.asarray(descriptors, dtype=np.float32), layers, scale, report)


def _check_training_input(objective: str, n: int) -> None:
    """ConfigError for an unknown objective or too few events."""
    from carboncp.runtime.errors import ConfigError

    if objective not in OBJECTIVES:
        raise ConfigError(f"Q objective {objective!r} is not one of {OBJECTIVES}")
    if n < 10:
        raise ConfigError(f"only {n} training events; Q_θ needs at least 10 (lengthen the replay)")


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels, one thread; torch's previous settings restored after."""
    import torch

    torch.manual_seed(seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)


def _make_net(n_in: int, hidden: int) -> Any:
    """The MLP: n_in -> hidden -> hidden -> 1, ReLU between (initialised from torch's RNG)."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )


def _train(
    net: Any,
    loss_of: Callable[[Any], Any],
    tr: np.ndarray,
    va: np.ndarray,
    objective: str,
    seed: int,
    max_epochs: int,
    patience: int,
    batch: int,
    lr: float,
    progress: bool,
) -> tuple[float, int]:
    """Adam on shuffled mini-batches of `tr` until the loss on `va` stops improving for
    `patience` epochs; leaves `net` at its best epoch. (best val loss, epochs run)."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, bad, epoch = math.inf, None, 0, 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        perm = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(perm), batch):
            opt.zero_grad()
            loss = loss_of(perm[i : i + batch])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = float(loss_of(torch.from_numpy(va)))
        if val < best - 1e-5:
            best, bad = val, 0
            best_state = {kk: v.detach().clone() for kk, v in net.state_dict().items()}
        else:
            bad += 1
        if progress and (epoch == 1 or epoch % 5 == 0 or bad > patience):
            _progress(f"  Q_θ[{objective}] epoch {epoch:3d}: val loss {val:.4f} (best {best:.4f})")
        if bad > patience:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    return best, epoch


def train_q(
    replay: Any, profile: Any, objective: str = "ce", seed: int = 0, **kwargs: Any
) -> QModel:
    """Train Q_θ on a replay's 'train' split (its last 20% validates, chronologically)."""
    idx = np.asarray(replay.splits["train"])
    return fit_q(
        replay.x_seen[idx],
        replay.label[idx],
        replay.costs.objective[idx],
        descriptors_from_profile(profile),
        objective,
        seed=seed,
        **kwargs,
    )
