"""One exception family for CarbonCP. Each error also derives from the built-in that fits,
so callers can catch either `CarbonCPError` or the usual `ValueError`/`OSError`."""

from __future__ import annotations


class CarbonCPError(Exception):
    """Base of every error CarbonCP raises on purpose (expected faults: no traceback in the CLI)."""


class BundleError(CarbonCPError, ValueError):
    """A bundle is missing, malformed, of an unknown format version, or fails verification."""


class ConfigError(CarbonCPError, ValueError):
    """A configuration key or CLI argument is invalid; the message names the key."""


class BackendMissingError(CarbonCPError, ImportError):
    """An optional backend (interpreter, sensor driver, broker) is not installed or not present."""


class TraceError(CarbonCPError, ValueError):
    """A carbon or bandwidth trace file cannot be used as it is."""


class SignalError(CarbonCPError, ValueError):
    """An external signal (MQTT payload, sensor reading) failed validation."""


class PowerSourceError(CarbonCPError, OSError):
    """A power source cannot be opened or read."""


class OffloadError(CarbonCPError, OSError):
    """An offload to the edge server failed (unreachable, timed out, refused, 5xx)."""
