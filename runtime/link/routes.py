"""What the offload client and the edge server agree on: model names and the probe route.

Shared here so that the device's client never imports the server.
"""

from __future__ import annotations

from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.link import wire

PROBE_PATH = "/v2/carboncp/probe"  # not part of the v2 protocol: the device's bandwidth probe
PROBE_MAX_BYTES = 256 * 1024
FP16_SUFFIX = "-fp16"


def model_name(bundle: Bundle, p: int, float16: bool = False) -> str:
    """The v2 model name of partition p's tail: `{model}-tail-p{p}`, which takes the bundle's
    wire dtype, or with `float16` where the bundle allows float16 for p, `{model}-tail-p{p}-fp16`,
    which takes FP16: one datatype per model, as Triton and KServe require."""
    name = f"{bundle.model_name}-tail-p{p}"
    if float16 and wire.wire_spec(bundle, p, float16=True).dtype == "float16":
        return name + FP16_SUFFIX
    return name
