"""A real Mosquitto for tests, on a free loopback port (never 1883).

Use `start_mosquitto()` in a fixture of your test module (then `broker.cleanup()`), or
import the `mosquitto` fixture.
Without Mosquitto the tests skip naming it; under CI they fail instead (tests/support/requires.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
    """Mosquitto started as root drops to user 'mosquitto': let it read files under `path`."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        p = path
        while p != p.parent:
            if p.stat().st_mode & 0o005 != 0o005:
                p.chmod(p.stat().st_mode | 0o005)
            p = p.parent
    return path


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
