"""The one rule for optional test dependencies: skip where they are missing, FAIL under CI.

CI (`.ci/run`, with CI=true) installs every extra and every tool the suite needs (the dev
extra of pyproject.toml, mosquitto, g++, openssl), so there a missing one is a broken set-up,
not a reason to skip. Elsewhere (a device, a partial install) the test skips, naming what is
missing and why the test needs it. Every skip in the suite goes through this module.

    torch = require("torch", "the tooling extra exports the models")      # a module
    exe = require_tool("mosquitto", "a real broker", extra_dirs=("/usr/sbin",))
    unavailable("/dev/i2c-97 exists on this machine")                       # anything else
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

import pytest

_TRUE = ("true", "1")


def in_ci() -> bool:
    """CI is set to "true" or "1", in any case (GitHub, GitLab and .ci/run all set "true")."""
    return os.environ.get("CI", "").strip().lower() in _TRUE


def unavailable(why: str) -> NoReturn:
    """Skip the test (or the module, when called at import time); fail instead under CI."""
    if in_ci():
        pytest.fail(f"{why} (CI installs every test dependency: fix the CI set-up)", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def require(module: str, why: str) -> ModuleType:
    """Import `module`, or skip (fail under CI) naming it and why the test needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        unavailable(f"{module} is not importable ({exc}); needed because {why}")


def require_tool(name: str, why: str, extra_dirs: Sequence[str] = ()) -> str:
    """Path of executable `name` (PATH, then `extra_dirs`), or skip (fail under CI)."""
    candidates = [shutil.which(name), *(os.path.join(d, name) for d in extra_dirs)]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    unavailable(f"{name} is not installed (apt-get install -y {name}); needed because {why}")
