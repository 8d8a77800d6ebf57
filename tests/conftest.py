"""Shared fixtures.

`tiny_bundle` (session): the Path of a real bundle exported from tests/tiny_bundle.py (a small
CNN with a residual block; partitions p = 0..3; uint8 input [1, 3, 32, 32]; heads .pte and
.tflite, tails .pte). Load it with `carboncp.runtime.artifacts.bundle.Bundle.load(tiny_bundle)`.
It is SHARED and must be treated as read-only: a test that changes files or the manifest uses
`tiny_bundle_copy` (a fresh copy in tmp_path) instead.

Exporting takes ~25 s, so the bundle is cached under .cache/ keyed by a hash of the code that
produces it; set CARBONCP_TEST_BUNDLE=DIR to use an existing bundle (the tflite-runtime venv
does, since it has no torch to export with). Nothing here imports torch at module level.

`broker` (module): a real Mosquitto broker on a free loopback port, for the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SOURCES = (
    "tests/tiny_bundle.py",
    "tooling/export.py",
    "tooling/tflite_fixups.py",
    "tooling/cuts.py",
    "models/zoo.py",
    "runtime/artifacts/bundle.py",
)


def _cache_key() -> str:
    h = hashlib.sha256()
    for rel in _SOURCES:
        p = REPO / rel
        h.update(rel.encode())
        h.update(p.read_bytes() if p.exists() else b"")
    try:
        from importlib.metadata import version

        for pkg in ("torch", "executorch", "litert-torch"):
            h.update(version(pkg).encode())
    except Exception:
        pass
    return h.hexdigest()[:16]


def _usable(path: Path) -> bool:
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.errors import BundleError

    try:
        Bundle.load(path)
    except BundleError:
        return False
    return True


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    given = os.environ.get("CARBONCP_TEST_BUNDLE")
    if given:
        path = Path(given)
        if not path.is_absolute():
            path = REPO / path
        if not (path / "manifest.json").is_file():
            pytest.fail(
                f"CARBONCP_TEST_BUNDLE={given}: no bundle there (run python -m tests.tiny_bundle DIR)"
            )
        return path
    cache = REPO / ".cache" / f"tiny-bundle-{_cache_key()}"
    if (cache / "manifest.json").is_file() and _usable(cache):
        return cache
    from tests.tiny_bundle import build

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".tiny-bundle-"))
    build(tmp / "bundle", progress=True)
    with contextlib.suppress(OSError):  # atomic; another session may have won the race
        os.rename(tmp / "bundle", cache)
    shutil.rmtree(tmp, ignore_errors=True)
    if not _usable(cache):
        pytest.fail(f"{cache}: cached tiny bundle is not loadable; delete it and rerun")
    return cache


@pytest.fixture
def tiny_bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may modify."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.fixture(scope="module")
def broker():
    from tests.support.mosquitto import start_mosquitto

    b = start_mosquitto()
    yield b
    b.cleanup()
