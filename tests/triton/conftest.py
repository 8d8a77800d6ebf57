"""tests/triton run only inside `make test-triton`, which builds the Triton venv and the model
repository and sets CARBONCP_TRITON_VENV / CARBONCP_TRITON_REPO. Anywhere else they are not
collected: they drive a server only that target provides, so there is nothing to skip or fail
(once collected, a missing binary or repository fails under CI: tests/support/requires.py)."""

from __future__ import annotations

import os

if not os.environ.get("CARBONCP_TRITON_VENV"):
    collect_ignore_glob = ["test_*.py"]
