"""tests/arm64 run only inside `make test-arm64`'s emulated Debian 12 arm64 root
(tools/arm64/run.sh sets CARBONCP_ARM64_SHARE to the folder holding the amd64 references and
the host's server and broker). Anywhere else they are not collected: they compare against
files and processes that only that run provides, so there is nothing to skip or fail."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARE_ENV = "CARBONCP_ARM64_SHARE"

if not os.environ.get(SHARE_ENV):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def share() -> Path:
    return Path(os.environ[SHARE_ENV])


@pytest.fixture(scope="session")
def record(share: Path):
    """record(name, dict): a result the run's closing line reports (SHARE/results/NAME.json)."""

    def write(name: str, data: dict) -> None:
        res = share / "results"
        res.mkdir(exist_ok=True)
        (res / f"{name}.json").write_text(json.dumps(data))

    return write
