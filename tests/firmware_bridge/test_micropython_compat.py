"""Static guard: the firmware files use only what MicroPython (rp2 port) offers.

No MicroPython interpreter is installed here (Debian ships none for x86), so this checks
the source for the CPython-only features the firmware must avoid."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware_bridge" / "firmware"
DEVICE_FILES = ["main.py", "bridge_wire.py", "ina219.py"]
ALLOWED_IMPORTS = {"struct", "sys", "os", "time", "machine", "micropython", "select"}
LOCAL = {"bridge_wire", "ina219"}


@pytest.mark.parametrize("name", DEVICE_FILES)
def test_firmware_file_is_micropython_friendly(name):
    tree = ast.parse((FIRMWARE / name).read_text())
    problems = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.JoinedStr):
            problems.append(f"{where} f-string")
        if isinstance(node, ast.AnnAssign) or (
            isinstance(node, ast.FunctionDef)
            and (node.returns or any(a.annotation for a in node.args.args))
        ):
            problems.append(f"{where} annotation")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in ALLOWED_IMPORTS | LOCAL:
                    problems.append(f"{where} import {alias.name}")
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module not in ALLOWED_IMPORTS:
                problems.append(f"{where} from {node.module} import")
            if node.level and any(a.name not in LOCAL for a in node.names):
                problems.append(f"{where} relative import of non-firmware module")
        is_from_bytes = (
            isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_bytes"
        )
        if is_from_bytes and node.keywords:  # MicroPython takes positional args only
            problems.append(f"{where} keyword args to from_bytes")
        if isinstance(node, ast.Match | ast.AsyncFunctionDef):
            problems.append(f"{where} {type(node).__name__}")
    assert not problems, problems


def test_device_files_import_each_other_flat_on_the_device():
    # on the Pico the files sit side by side in /, so main.py must import them by bare name
    src = (FIRMWARE / "main.py").read_text()
    assert "import bridge_wire as wire" in src and "import ina219" in src
    assert 'sys.implementation.name == "micropython"' in src
