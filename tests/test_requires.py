"""The one skip-or-fail rule (tests/support/requires.py), and that the suite uses it everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _pytest.outcomes import Failed, Skipped

from tests.support.requires import in_ci, require, require_tool, unavailable

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    ("value", "ci"),
    [("true", True), ("TRUE", True), ("True", True), ("1", True), (" true ", True),
     ("", False), ("false", False), ("0", False), ("yes-please", False)],
)  # fmt: skip
def test_ci_is_read_case_insensitively(monkeypatch, value: str, ci: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci
    with pytest.raises(Failed if ci else Skipped, match="no_such_module_xyz"):
        require("no_such_module_xyz", "a test")
    with pytest.raises(Failed if ci else Skipped, match="no-such-tool-xyz"):
        require_tool("no-such-tool-xyz", "a test")
    with pytest.raises(Failed if ci else Skipped, match="why"):
        unavailable("why")


def test_present_module_and_tool_are_returned(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require("json", "a test").dumps([]) == "[]"
    assert Path(require_tool("sh", "a test", ("/bin",))).name == "sh"


def test_no_test_skips_or_reads_ci_on_its_own() -> None:
    """Every skip goes through requires.py, so CI can never skip silently."""
    pattern = re.compile(
        r"pytest\.skip\(|importorskip\(|environ\.get\(\s*[\"']CI[\"']|mark\.skipif"
    )
    offenders = [
        f"{p.relative_to(TESTS)}:{i}"
        for p in TESTS.rglob("*.py")
        if p.name not in ("requires.py", "test_requires.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
