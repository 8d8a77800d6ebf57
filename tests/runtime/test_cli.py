"""The `carboncp` dispatcher: plugin commands, help, and clear errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from carboncp.runtime import cli
from carboncp.runtime.errors import CarbonCPError

EXPECTED = {
    "export",
    "inspect",
    "profile",
    "build",
    "evaluate",
    "demo",
    "run",
    "serve",
    "publish-carbon",
    "carbon-relay",
    "power-monitor",
}


def test_every_documented_command_is_registered() -> None:
    names = {ep.name for ep in entry_points(group="carboncp.commands")}
    assert names == EXPECTED


def test_top_level_help_lists_commands_with_their_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "carboncp.runtime.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in EXPECTED:
        assert name in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "carboncp.runtime.cli", "no-such-command"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_module_names_the_module() -> None:
    with pytest.raises(CarbonCPError, match=r"carboncp\.nope"):
        cli._load("x", "carboncp.nope")


def test_missing_third_party_dependency_names_the_extra() -> None:
    with pytest.raises(CarbonCPError, match=r"pip install 'carboncp\[all\]'"):
        cli._load("x", "surely_not_an_installed_module_xyz")


def test_expected_error_prints_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Boom:
        HELP = "boom"
        __doc__ = "Boom."

        @staticmethod
        def add_arguments(parser):
            pass

        @staticmethod
        def run(args):
            raise CarbonCPError("it went wrong; do this instead")

    monkeypatch.setattr(cli, "_commands", lambda: {"boom": "boom"})
    monkeypatch.setattr(cli, "_load", lambda name, target: Boom)
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "carboncp: error: it went wrong; do this instead"
