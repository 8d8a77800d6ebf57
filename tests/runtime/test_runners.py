"""End to end with the real exporters: every head with both runners, every tail, compared with
the torch model the bundle was exported from."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.requires import require

# Skip where the extras are absent, but never in CI (CI=true installs them): fail there.
for _mod, _extra in (("torch", "tooling"), ("executorch", "executorch")):
    require(_mod, f"the runners are compared with torch (the {_extra} extra)")

from carboncp.runtime.artifacts.bundle import Bundle  # noqa: E402
from carboncp.runtime.artifacts.runners import ExecuTorchRunner, LiteRTRunner, make_runner  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


@pytest.fixture(scope="module")
def reference(bundle):
    """The eager torch chain (normalise + stages) rebuilt from the model spec and seed."""
    import torch
    from carboncp.models.zoo import load_model
    from carboncp.tooling.cuts import Normalize, find_cuts

    m = bundle.manifest["model"]
    loaded = load_model(m["factory"], seed=m["weights"]["seed"])
    shape = bundle.input_shape
    cuts = find_cuts(loaded.model, torch.rand(shape))
    norm = Normalize(cuts.mean, cuts.std)

    def acts(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            a = norm(torch.from_numpy(x))
            out = [x]
            for stage in cuts.stages:
                a = stage(a)
                out.append(a.numpy())
        return out

    return acts


def _images(bundle: Bundle, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, bundle.input_shape, dtype=np.uint8) for _ in range(n)]


def test_bundle_has_at_least_three_partitions_and_verified_errors(bundle):
    assert bundle.last >= 2
    for part in bundle.partitions:
        assert part.verify_max_abs, f"p={part.p} has no verification record"
        assert all(e <= TOL for e in part.verify_max_abs.values())


def test_every_head_with_both_runners_and_every_tail(bundle, reference):
    lite = LiteRTRunner(bundle)
    et_head = ExecuTorchRunner(bundle, part="head")
    et_tail = ExecuTorchRunner(bundle, part="tail")
    P = bundle.last
    for x in _images(bundle):
        acts = reference(x)
        full = acts[-1]
        for p in range(P + 1):
            if p >= 1:
                for runner in (lite, et_head):
                    a = runner.run(p, x)
                    np.testing.assert_allclose(a, acts[p], atol=TOL, rtol=0)
                    if p < P:
                        y = et_tail.run(p, a)
                        np.testing.assert_allclose(y, full, atol=TOL, rtol=0)
            else:
                y = et_tail.run(0, x)
                np.testing.assert_allclose(y, full, atol=TOL, rtol=0)
    for r in (lite, et_head, et_tail):
        r.close()


def test_tail_input_checks(bundle):
    tail = make_runner(bundle, "executorch", part="tail")
    shape = bundle.partitions[1].wire_shape
    a16 = np.zeros(shape, dtype=np.float16)
    with pytest.raises(ValueError, match="cast float16"):
        tail.run(1, a16)
    with pytest.raises(ValueError, match="takes shape"):
        tail.run(1, np.zeros((1, *shape), dtype=np.float32))
    from carboncp.runtime.errors import BundleError

    with pytest.raises(BundleError, match="no tail"):
        tail.run(bundle.last, np.zeros(bundle.output_shape, dtype=np.float32))
    tail.close()


def test_float16_wire_record(bundle):
    for part in bundle.partitions:
        if 0 < part.p < bundle.last:
            f16 = part.float16
            assert f16 is not None and f16["bytes"] * 2 == part.wire_bytes
            assert 0 <= f16["max_abs_error"] < 1e-2
            assert 0.0 <= f16["top1_agreement"] <= 1.0
        else:
            assert part.float16 is None
