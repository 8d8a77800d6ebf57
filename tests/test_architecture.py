"""The project's structure rules, checked: layer contracts, short functions, a project that
stands alone (no citation of a file outside it)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "tooling", "firmware_bridge", "models")
MAX_FUNCTION_LINES = 120
# A citation of the planning documents that live outside the project (a clone has none).
OUTSIDE = re.compile(r"(?<!docs/)\b(METHOD\.md|CONVENTIONS\.md)")
# The code never reads outside the clone (docs/RESULTS.md's reproduction commands may name the
# full-year planning traces as inputs: they are benchmarks, not the product).
OUTSIDE_PATH = re.compile(r"\.\./shared\b")


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]


def test_layer_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]'")
    out = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'file:line name (N lines)' for every function in `path` longer than `limit` lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > limit:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_over_120_lines() -> None:
    offenders = [f for p in _sources() for f in long_functions(p)]
    assert not offenders, "split these into named steps:\n" + "\n".join(offenders)


def test_long_function_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    f = REPO / "tests" / f"_tmp_long_{tmp_path.name}.py"
    try:
        f.write_text(f"def long():\n{body}\n", encoding="utf-8")
        assert long_functions(f) and "long (121 lines)" in long_functions(f)[0]
    finally:
        f.unlink()


def test_code_and_docs_cite_only_files_inside_the_project() -> None:
    files = _sources() + sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
    files += sorted((REPO / "tests").rglob("*.py"))
    code = set(_sources())
    hits = []
    for p in files:
        if p == Path(__file__).resolve():
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line) or (p in code and OUTSIDE_PATH.search(line)):
                hits.append(f"{p.relative_to(REPO)}:{i}: {line.strip()[:100]}")
    assert not hits, "cite docs/METHOD.md (or another in-project file) instead:\n" + "\n".join(hits)


def test_one_version_string() -> None:
    from importlib.metadata import version

    from carboncp.runtime import __version__

    assert version("carboncp") == __version__
    out = subprocess.run(
        [sys.executable, "-m", "carboncp.runtime.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == f"carboncp {__version__}"
