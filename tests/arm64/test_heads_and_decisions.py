"""On arm64 the heads and the decisions are amd64's: every head's output within 1e-5 of the
amd64 reference, and the same partition, set, cell and flags on every context for every policy.
The references come from tools/arm64/host.py (amd64, same inputs, same bundle)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.artifacts.runners import LiteRTRunner
from carboncp.runtime.decision.policy import TablePolicy

from tests.arm64.reference import POLICIES, run_decisions, run_heads

ATOL = 1e-5


def _backend_tag(backend: str) -> str:
    return "tflite" if backend == "tflite_runtime" else "litert"


def test_runs_on_arm64() -> None:
    assert platform.machine() == "aarch64"


def test_every_head_equals_amd64(share, record) -> None:
    ref = np.load(share / "ref" / "heads.npz")
    bundle = Bundle.load(share / "tiny-bundle")
    runner = LiteRTRunner(bundle)
    try:
        xs = list(ref["inputs"])
        got = run_heads(bundle, runner, xs)
        backend = runner.backend
    finally:
        runner.close()
    assert set(got) == {k for k in ref.files if k != "inputs"}
    diffs = {k: float(np.abs(got[k] - ref[k]).max()) for k in got}
    for k, d in diffs.items():
        assert got[k].shape == ref[k].shape, k
        assert d <= ATOL, (k, d)
    cpu = os.environ.get("QEMU_CPU", "native")
    record(
        f"heads-{_backend_tag(backend)}-{cpu}",
        {"backend": backend, "cpu": cpu, "heads": len(got), "inputs": len(xs),
         "max_abs_diff": max(diffs.values()), "per_head": diffs},
    )  # fmt: skip


def test_decisions_equal_amd64(share, record) -> None:
    ref = json.loads((share / "ref" / "decisions.json").read_text())
    ctxs = [(seen, realised) for seen, realised in ref["contexts"]]
    bundle = Bundle.load(share / "table-bundle")
    for name, kw in POLICIES.items():
        got = run_decisions(TablePolicy.from_bundle(bundle, **kw), ctxs)
        mismatch = [
            i for i, (a, b) in enumerate(zip(got, ref["decisions"][name], strict=True)) if a != b
        ]
        assert len(got) == len(ref["decisions"][name])
        assert mismatch == [], (name, mismatch[:5], [got[i] for i in mismatch[:5]])
    tag = "tflite" if _has("tflite-runtime") else "litert"
    record(f"decisions-{tag}", {"contexts": len(ctxs), "policies": len(POLICIES)})


def _has(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
