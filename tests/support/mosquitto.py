"""A real Mosquitto for tests, on a free loopback port (never 1883).

Use `start_mosquitto()` in a fixture of your test module (then `broker.cleanup()`), or
import the `mosquitto` fixture.
Without Mosquitto the tests skip naming it; under CI they fail instead (tests/support/requires.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from carboncp.tooling.broker import MosquittoBroker, free_port, start_broker

from tests.support.requires import require_tool

_SBIN = ("/usr/sbin", "/usr/local/sbin")


def mosquitto_exe() -> str | None:
    for p in (shutil.which("mosquitto"), *(f"{d}/mosquitto" for d in _SBIN)):
        if p and os.access(p, os.X_OK):
            return p
    return None


def require_mosquitto() -> str:
    exe = mosquitto_exe()
    if exe is None:
        return require_tool("mosquitto", "the MQTT tests start a real broker", _SBIN)
    return exe


def start_mosquitto(config_extra: str = "") -> MosquittoBroker:
    require_mosquitto()
    broker = start_broker(free_port(), prefer="mosquitto", config_extra=config_extra)
    assert isinstance(broker, MosquittoBroker)
    return broker


def readable_dir(path: Path) -> Path:
    """A folder Mosquitto can read files in: started as root it drops to user 'mosquitto'.

    As root the folder is made outside pytest's basetemp, whose top folder pytest (any
    concurrent session too) resets to mode 0700 at start-up, so chmod-ing the parents of `path`
    would not last; the folder is removed at exit."""
    if os.geteuid() != 0:
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(tempfile.mkdtemp(prefix="carboncp-mosquitto-files-"))
    base.chmod(0o755)
    atexit.register(shutil.rmtree, base, True)
    folder = base / path.name
    folder.mkdir(mode=0o755)
    return folder


def write_auth(folder: Path, users: dict[str, str], acl: str) -> str:
    """A password file (mosquitto_passwd -b) and an ACL file; returns the config lines."""
    folder = readable_dir(folder)
    passwd = folder / "passwd"
    passwd.touch()
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for user, pw in users.items():
        subprocess.run([tool, "-b", str(passwd), user, pw], check=True, capture_output=True)
    acl_file = folder / "acl"
    acl_file.write_text(acl)
    for f in (passwd, acl_file):
        f.chmod(0o644)
    return f"password_file {passwd}\nacl_file {acl_file}\n"


@pytest.fixture
def mosquitto() -> Iterator[MosquittoBroker]:
    broker = start_mosquitto()
    try:
        yield broker
    finally:
        broker.cleanup()
