"""`carboncp` command line: a thin dispatcher over subcommand plugins.

Each subcommand is a module registered in the `carboncp.commands` entry-point group
(pyproject.toml). A command module is light to import (heavy imports go inside `run`) and
defines `HELP: str`, `add_arguments(parser)` and `run(args) -> int`. Expected faults
(`CarbonCPError`) print one clear line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points
from types import ModuleType

from carboncp.runtime import __version__
from carboncp.runtime.errors import CarbonCPError

# Which extra brings a command's dependencies, for the message when they are missing.
_EXTRA_FOR_PACKAGE = {
    "carboncp.tooling": "tooling",
    "carboncp.firmware_bridge": "runtime",
    "carboncp.runtime": "runtime",
}


def _commands() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="carboncp.commands")}


def _load(name: str, target: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        if (exc.name or "").startswith("carboncp"):
            raise CarbonCPError(
                f"'carboncp {name}': module {exc.name} is missing from this install"
            ) from exc
        extra = next((x for p, x in _EXTRA_FOR_PACKAGE.items() if target.startswith(p)), "all")
        raise CarbonCPError(
            f"'carboncp {name}' needs a package that is not installed ({exc.name or exc}); "
            f"install it with: pip install 'carboncp[{extra}]'"
        ) from exc


def build_parser(commands: dict[str, str], chosen: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carboncp",
        description="Carbon-aware DNN partitioning with conformal prediction for edge devices. "
        "Run 'carboncp COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"carboncp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(commands):
        if name == chosen:
            module = _load(name, commands[name])
            p = sub.add_parser(
                name,
                help=module.HELP,
                description=(module.__doc__ or module.HELP).strip(),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=_summary(name, commands[name]), add_help=False)
    return parser


def _summary(name: str, target: str) -> str:
    # Import only for the top-level help listing; a missing extra shows in the summary.
    try:
        return importlib.import_module(target).HELP
    except ImportError as exc:
        if (exc.name or "").startswith("carboncp"):
            return "(missing from this install)"
        return f"(needs {exc.name}: pip install 'carboncp[all]')"
    except Exception:
        return ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    chosen = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(commands, chosen if chosen in commands else None)
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except CarbonCPError as exc:
        print(f"carboncp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("carboncp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
