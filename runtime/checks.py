"""Range checks of configuration numbers: one rule and one message for TOML keys (the
objective, `carboncp run` settings) and command-line flags (every command)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from carboncp.runtime.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def check_number(
    value: Any,
    key: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    none_ok: bool = False,
) -> Any:
    """`value` if it is a finite number (an integer when `integer`) within [lo, hi] (open ends
    where asked), else a ConfigError naming `key`. None passes when `none_ok`."""
    if value is None and none_ok:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    if integer and not (isinstance(value, int) or (math.isfinite(value) and value.is_integer())):
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    bad = not math.isfinite(value)
    if lo is not None:
        bad = bad or value < lo or (lo_open and value == lo)
    if hi is not None:
        bad = bad or value > hi or (hi_open and value == hi)
    if bad:
        raise ConfigError(
            f"{key} must be finite and {_range(lo, hi, lo_open, hi_open)}, got {value!r}"
        )
    return int(value) if integer else value


def _range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "a real number"


def check_choice(value: Any, key: str, options: Any) -> str:
    """`value` if it is one of the string `options` (a JSON list or table never is: no
    unhashable-type TypeError), else a ConfigError naming `key` and the options."""
    if not isinstance(value, str) or value not in options:
        raise ConfigError(f"{key} must be one of {sorted(options)}, got {value!r}")
    return value


def split_url(url: str, key: str, default_ports: dict[str, int], form: str) -> Any:
    """urlsplit(url) with its scheme in `default_ports`, a host, and a port in 1..65535 (the
    scheme's default when absent). A malformed URL (e.g. an unclosed IPv6 bracket, which
    urlsplit itself refuses) or port 0 is a ConfigError naming `key` and the `form` expected.
    Returns (parts, port)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{key} {url!r}: {exc}; expected {form}") from None
    if parts.scheme not in default_ports or not parts.hostname:
        raise ConfigError(f"{key} {url!r}: expected {form}")
    if port is None:
        port = default_ports[parts.scheme]
    elif port == 0:
        raise ConfigError(f"{key} {url!r}: port 0 is not a port to connect to; expected {form}")
    return parts, port


def read_toml_table(path: str | Path, table: str, missing: str) -> dict[str, Any]:
    """A TOML file's settings, written at the top level or under [table] (then nothing else).

    Raises:
        ConfigError: `missing` when there is no such file; invalid TOML; unreadable; another
            key beside [table].
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(missing) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if table in data and isinstance(data[table], dict):
        extra = [k for k in data if k != table]
        if extra:
            raise ConfigError(f"{path}: unknown key '{extra[0]}' beside [{table}]")
        data = data[table]
    return data
