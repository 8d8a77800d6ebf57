"""What the offload client and the edge server agree on: model names and the probe route.

Shared here so that the device's client never imports the server.
"""

from __future__ import annotations

from carboncp.runtime.artifacts.bundle import Bundle

PROBE_PATH = "/v2/carboncp/probe"  # not part of the v2 protocol: the device's bandwidth probe
PROBE_MAX_BYTES = 256 * 1024


def model_name(bundle: Bundle, p: int) -> str:
    """The v2 model name of partition p's tail."""
    return f"{bundle.model_name}-tail-p{p}"
