"""What crosses the link: tensors as raw little-endian bytes with an explicit dtype and shape.

Partition p's wire tensor is the uint8 image at p = 0 and a float32 activation otherwise; a
float32 activation may travel as float16 (cast in numpy by the sender, cast back to float32
by the server) where the bundle records the error that causes. Every size is checked against
the bundle before a byte is interpreted. Nothing is pickled: `np.frombuffer` on a checked
length is the only way bytes become a tensor.

The framing is the KServe v2 / Open Inference Protocol binary tensor data extension: a JSON
header followed by the raw bytes, with `Inference-Header-Content-Length` giving the JSON's
length and `parameters.binary_data_size` each tensor's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle

# numpy dtype name <-> Open Inference Protocol datatype; only what a bundle can put on the wire.
V2_DATATYPE = {"uint8": "UINT8", "float16": "FP16", "float32": "FP32"}
NUMPY_DTYPE = {v: k for k, v in V2_DATATYPE.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
MAX_HEADER_BYTES = 64 * 1024  # a v2 request header for one tensor is a few hundred bytes


class WireFormatError(ValueError):
    """A tensor or request does not match what the bundle says may cross the link."""


@dataclass(frozen=True)
class WireSpec:
    """One tensor as it travels: numpy dtype name and shape (bytes follow from them)."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * math.prod(self.shape))

    @property
    def datatype(self) -> str:
        return V2_DATATYPE[self.dtype]


def wire_spec(bundle: Bundle, p: int, float16: bool = False) -> WireSpec:
    """What the device sends for partition p (p < P); float16 only where the bundle allows it."""
    part = _partition(bundle, p)
    if float16 and part.wire_dtype == "float32" and part.float16 is not None:
        return WireSpec("float16", part.wire_shape)
    return WireSpec(part.wire_dtype, part.wire_shape)


def accepted_specs(bundle: Bundle, p: int) -> tuple[WireSpec, ...]:
    """Every encoding the server accepts for partition p's tail (checked against the bundle)."""
    part = _partition(bundle, p)
    specs = [WireSpec(part.wire_dtype, part.wire_shape)]
    if part.wire_dtype == "float32" and part.float16 is not None:
        specs.append(WireSpec("float16", part.wire_shape))
    for s in specs:
        if s.dtype == part.wire_dtype and s.nbytes != part.wire_bytes:
            raise WireFormatError(
                f"bundle partition p={p}: wire.bytes {part.wire_bytes} does not match "
                f"{s.dtype}{list(s.shape)} = {s.nbytes} bytes"
            )
    return tuple(specs)


def output_spec(bundle: Bundle) -> WireSpec:
    """The model output as the server returns it: float32 of the bundle's output shape."""
    return WireSpec("float32", bundle.output_shape)


def encode(x: np.ndarray, spec: WireSpec) -> bytes:
    """The raw little-endian bytes of x cast to the spec's dtype; shape must match exactly."""
    if tuple(x.shape) != spec.shape:
        raise WireFormatError(f"tensor shape {list(x.shape)} is not the wire's {list(spec.shape)}")
    if spec.dtype == "uint8" and x.dtype != np.uint8:
        raise WireFormatError(f"the p = 0 wire carries the uint8 image, got {x.dtype}")
    out = np.ascontiguousarray(x, dtype=np.dtype(spec.dtype).newbyteorder("<"))
    return out.tobytes()


def decode(buf: bytes | memoryview, spec: WireSpec, as_float32: bool = True) -> np.ndarray:
    """Bytes -> array of the spec's shape; float16 is cast back to float32 (the tails' dtype)."""
    if len(buf) != spec.nbytes:
        raise WireFormatError(
            f"{len(buf)} bytes for {spec.dtype}{list(spec.shape)}, expected {spec.nbytes}"
        )
    arr = np.frombuffer(buf, dtype=np.dtype(spec.dtype).newbyteorder("<")).reshape(spec.shape)
    if as_float32 and spec.dtype == "float16":
        return arr.astype(np.float32)
    return arr.astype(arr.dtype.newbyteorder("="))  # a writable copy, native byte order


def request_header(
    spec: WireSpec, binary_output: bool = True, parameters: dict[str, Any] | None = None
) -> bytes:
    """The JSON part of an infer request for one binary input tensor."""
    head: dict[str, Any] = {
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": spec.datatype,
                "shape": list(spec.shape),
                "parameters": {"binary_data_size": spec.nbytes},
            }
        ],
        "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": binary_output}}],
    }
    if parameters:
        head["parameters"] = parameters
    return json.dumps(head, separators=(",", ":")).encode()


def parse_json_header(raw: bytes | memoryview, limit: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """A request/response JSON header as a dict, or WireFormatError saying what is wrong.
    `limit`: its largest size (the server raises it for JSON `data` inputs)."""
    if len(raw) > limit:
        raise WireFormatError(f"JSON header of {len(raw)} bytes exceeds {limit}")
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireFormatError(f"JSON header is not valid UTF-8 JSON ({exc})") from None
    except RecursionError:  # "[[[[...": nested deeper than the parser's stack
        raise WireFormatError("JSON header is nested too deeply") from None
    if not isinstance(obj, dict):
        raise WireFormatError("JSON header must be an object")
    return obj


def split_body(
    body: bytes | memoryview, header_length: str | None
) -> tuple[memoryview, memoryview]:
    """Split a v2 body into (json, binary) using the Inference-Header-Content-Length value."""
    view = memoryview(body)
    if header_length is None:
        return view, view[:0]
    try:
        n = int(header_length)
    except ValueError:
        raise WireFormatError(f"{HEADER_LENGTH} {header_length!r} is not an integer") from None
    if not 0 < n <= len(view):
        raise WireFormatError(f"{HEADER_LENGTH} {n} is outside the body's {len(view)} bytes")
    return view[:n], view[n:]


def tensor_spec_of(entry: Any, what: str) -> tuple[WireSpec, int | None]:
    """(spec, binary_data_size) of a request input / response output entry, checked for form."""
    if not isinstance(entry, dict):
        raise WireFormatError(f"{what} must be an object")
    datatype = entry.get("datatype")
    if datatype not in NUMPY_DTYPE:
        raise WireFormatError(f"{what}.datatype {datatype!r} is not one of {sorted(NUMPY_DTYPE)}")
    shape = entry.get("shape")
    if (
        not isinstance(shape, list)
        or not 0 < len(shape) <= 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in shape)
    ):
        raise WireFormatError(f"{what}.shape must be a list of 1..8 positive integers")
    params = entry.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise WireFormatError(f"{what}.parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise WireFormatError(f"{what}.parameters.binary_data_size must be a non-negative integer")
    return WireSpec(NUMPY_DTYPE[datatype], tuple(shape)), size


def _partition(bundle: Bundle, p: int):
    if not 0 <= p < bundle.last:
        raise WireFormatError(f"partition {p} sends nothing (valid: 0..{bundle.last - 1})")
    return bundle.partitions[p]
