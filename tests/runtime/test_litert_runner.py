"""LiteRT runner against a real bundle. Also runs in the tflite-runtime venv (no torch,
numpy<2): there CARBONCP_TEST_BUNDLE names a bundle exported by the main venv, and
CARBONCP_REQUIRE_TFLITE_RUNTIME=1 demands that the tflite_runtime fallback is what ran."""

from __future__ import annotations

import os

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.artifacts.runners import LiteRTRunner, make_runner
from carboncp.runtime.errors import BundleError


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


@pytest.fixture(scope="module")
def runner(bundle):
    r = LiteRTRunner(bundle)
    yield r
    r.close()


def _images(bundle: Bundle, n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, bundle.input_shape, dtype=np.uint8) for _ in range(n)]


def test_backend_is_named(runner):
    assert runner.backend in ("ai_edge_litert", "tflite_runtime")
    if os.environ.get("CARBONCP_REQUIRE_TFLITE_RUNTIME") == "1":
        assert runner.backend == "tflite_runtime"


def test_every_head_runs_on_xnnpack(bundle, runner):
    # Both interpreters show delegated partitions as DELEGATE nodes (a private API, the only
    # view of it). tflite-runtime 2.14 delegated nothing before tooling/tflite_fixups.py.
    for p in range(1, bundle.last + 1):
        interp = runner._load(p)[0]
        assert "DELEGATE" in [op["op_name"] for op in interp._get_ops_details()], p


def test_every_head_gives_the_manifest_shape_and_dtype(bundle, runner):
    (x,) = _images(bundle, 1)
    for part in bundle.partitions[1:]:
        y = runner.run(part.p, x)
        assert y.dtype == np.float32
        assert tuple(y.shape) == part.wire_shape
        assert np.isfinite(y).all()


def test_heads_are_consistent_and_input_dependent(bundle, runner):
    """The full-model head (P) is deterministic and responds to its input."""
    a, b = _images(bundle, 2)
    P = bundle.last
    ya1, ya2, yb = runner.run(P, a), runner.run(P, a.copy()), runner.run(P, b)
    np.testing.assert_array_equal(ya1, ya2)
    assert np.abs(ya1 - yb).max() > 0


def test_output_is_not_a_view_of_interpreter_memory(bundle, runner):
    a, b = _images(bundle, 2, seed=7)
    ya = runner.run(1, a)
    kept = ya.copy()
    runner.run(1, b)
    np.testing.assert_array_equal(ya, kept)


def test_wrong_dtype_shape_and_partition_are_clear_errors(bundle, runner):
    (x,) = _images(bundle, 1)
    with pytest.raises(ValueError, match="takes uint8"):
        runner.run(1, x.astype(np.float32))
    with pytest.raises(ValueError, match="takes shape"):
        runner.run(1, x[:, :, :-1])
    with pytest.raises(ValueError, match="out of range"):
        runner.run(bundle.last + 1, x)
    with pytest.raises(BundleError, match="no head"):
        runner.run(0, x)


def test_make_runner_litert_and_closed_runner(bundle):
    r = make_runner(bundle, "litert")
    assert isinstance(r, LiteRTRunner)
    (x,) = _images(bundle, 1)
    r.run(1, x)
    r.close()
    r.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        r.run(1, x)
    with pytest.raises(ValueError, match="unknown backend"):
        make_runner(bundle, "onnx")
    with pytest.raises(ValueError, match="heads only"):
        make_runner(bundle, "litert", part="tail")


def test_max_loaded_evicts_least_recently_used(bundle, runner):
    (x,) = _images(bundle, 1, seed=3)
    small = LiteRTRunner(bundle, max_loaded=2)
    P = bundle.last
    order = [1, 2, 1, P, 2, P, 1]
    for p in order:
        np.testing.assert_array_equal(small.run(p, x), runner.run(p, x))
        assert len(small.loaded) <= 2 and small.loaded[-1] == p
    assert small.loaded == [P, 1]
    small.close()
    with pytest.raises(ValueError, match="max_loaded"):
        LiteRTRunner(bundle, max_loaded=0)


def test_threads_default_to_every_core_and_give_the_same_output(bundle):
    x = _images(bundle, 1)[0]
    default = LiteRTRunner(bundle)
    single = LiteRTRunner(bundle, num_threads=1)
    try:
        assert default.num_threads == (os.cpu_count() or 1)
        assert single.num_threads == 1
        np.testing.assert_allclose(
            default.run(bundle.last, x), single.run(bundle.last, x), atol=1e-5
        )
    finally:
        default.close()
        single.close()
