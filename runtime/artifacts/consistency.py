"""Bundle consistency at load: what the manifest says crosses the link is what the artifacts
produce and take.

`check_consistency(bundle)` is called by `carboncp run`, `serve` and `inspect` before anything
runs. Per partition p it checks that
  - the wire's bytes equal dtype size x shape (p < P; at p = 0 the wire is the input image);
  - every head (`.tflite`, `.pte`) takes the input image and outputs the wire tensor of p;
  - every tail (`.pte`) takes the wire tensor of p and outputs the model output,
so head output = wire = tail input. A mismatch is one BundleError naming the file, the
partition and both signatures (the CLI prints it as one line and exits 2), instead of a
WireFormatError traceback in `serve` or an interpreter's `set_inputs() ... 0x10` later.

The artifacts' signatures are read from their FlatBuffers (ExecuTorch's program.fbs, TFLite's
schema.fbs) with a small bounds-checked reader over a memory map: no interpreter is loaded, so
the check is fast, needs neither torch nor LiteRT, and a corrupt file cannot crash the process
(ExecuTorch aborts in native code on some corrupt programs).
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

import numpy as np
from carboncp.runtime.artifacts.bundle import MANIFEST, Bundle
from carboncp.runtime.errors import BundleError

_REBUILD = "rebuild it with 'carboncp export' (or 'carboncp build')"
Signature = tuple[str, tuple[int, ...]]  # (numpy dtype name, shape)

# ExecuTorch ScalarType (schema/scalar_type.fbs) and TFLite TensorType (schema.fbs) codes.
_ET_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16",
              6: "float32", 7: "float64", 11: "bool"}  # fmt: skip
_TFL_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool",
               7: "int16", 9: "int8", 10: "float64"}  # fmt: skip
_ET_TENSOR = 5  # KernelTypes union: NONE = 0, Null = 1, Int, Bool, Double, Tensor = 5


class _FlatBuffer:
    """Just enough of the FlatBuffers wire format to walk tables, vectors and unions."""

    def __init__(self, buf: mmap.mmap | bytes):
        self.buf = buf
        self.n = len(buf)

    def _u(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if not 0 <= pos <= self.n - size:
            raise ValueError(f"offset {pos} outside the file")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def root(self) -> int:
        return self._u("<I", 0)

    def _field(self, table: int, index: int) -> int | None:
        vtable = table - self._u("<i", table)
        vsize = self._u("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return None
        off = self._u("<H", vtable + slot)
        return table + off if off else None

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self._field(table, index)
        return default if pos is None else self._u(fmt, pos)

    def ref(self, table: int, index: int) -> int | None:
        """Position of the table / vector / string a field points to."""
        pos = self._field(table, index)
        return None if pos is None else pos + self._u("<I", pos)

    def vector(self, table: int, index: int, fmt: str | None = None) -> list[int]:
        """A vector's elements: scalars of `fmt`, or table positions when fmt is None."""
        pos = self.ref(table, index)
        if pos is None:
            return []
        count = self._u("<I", pos)
        if count > 1 << 20:
            raise ValueError(f"vector of {count} elements")
        if fmt is not None:
            size = struct.calcsize(fmt)
            return [self._u(fmt, pos + 4 + i * size) for i in range(count)]
        return [pos + 4 + 4 * i + self._u("<I", pos + 4 + 4 * i) for i in range(count)]

    def string(self, table: int, index: int) -> str:
        pos = self.ref(table, index)
        if pos is None:
            return ""
        length = self._u("<I", pos)
        if pos + 4 + length > self.n:
            raise ValueError("string outside the file")
        return bytes(self.buf[pos + 4 : pos + 4 + length]).decode("utf-8", "replace")


def _open(path: Path, ident: bytes) -> tuple[_FlatBuffer, mmap.mmap]:
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    got = bytes(mm[4:8])
    if got != ident:
        mm.close()
        raise ValueError(f"file identifier {got!r} is not {ident!r}")
    return _FlatBuffer(mm), mm


def pte_signature(path: Path) -> tuple[list[Signature], list[Signature]]:
    """(inputs, outputs) of an ExecuTorch program's 'forward' method, from its FlatBuffer."""
    fb, mm = _open(path, b"ET12")
    try:
        plans = fb.vector(fb.root(), 1)  # Program.execution_plan
        if not plans:
            raise ValueError("no execution plan")
        plan = next((q for q in plans if fb.string(q, 0) == "forward"), plans[0])
        values = fb.vector(plan, 2)  # ExecutionPlan.values: [EValue]

        def tensor(i: int) -> Signature:
            if not 0 <= i < len(values):
                raise ValueError(f"value index {i} out of range")
            if fb.scalar(values[i], 0, "<B") != _ET_TENSOR:  # EValue.val_type
                raise ValueError(f"value {i} is not a tensor")
            t = fb.ref(values[i], 1)
            if t is None:
                raise ValueError(f"value {i} has no tensor")
            code = fb.scalar(t, 0, "<b")  # Tensor.scalar_type
            return _ET_DTYPES.get(code, f"scalar_type {code}"), tuple(fb.vector(t, 2, "<i"))

        return [tensor(i) for i in fb.vector(plan, 3, "<i")], [
            tensor(i) for i in fb.vector(plan, 4, "<i")
        ]
    finally:
        mm.close()


def tflite_signature(path: Path) -> tuple[list[Signature], list[Signature]]:
    """(inputs, outputs) of a TFLite model's first subgraph, from its FlatBuffer."""
    fb, mm = _open(path, b"TFL3")
    try:
        graphs = fb.vector(fb.root(), 2)  # Model.subgraphs
        if not graphs:
            raise ValueError("no subgraph")
        tensors = fb.vector(graphs[0], 0)  # SubGraph.tensors

        def tensor(i: int) -> Signature:
            if not 0 <= i < len(tensors):
                raise ValueError(f"tensor index {i} out of range")
            code = fb.scalar(tensors[i], 1, "<b")  # Tensor.type (default FLOAT32 = 0)
            return _TFL_DTYPES.get(code, f"type {code}"), tuple(fb.vector(tensors[i], 0, "<i"))

        return [tensor(i) for i in fb.vector(graphs[0], 1, "<i")], [
            tensor(i) for i in fb.vector(graphs[0], 2, "<i")
        ]
    finally:
        mm.close()


_READERS = {"pte": pte_signature, "tflite": tflite_signature}


def _fmt(sig: Signature) -> str:
    return f"{sig[0]}{list(sig[1])}"


def check_wire(bundle: Bundle) -> None:
    """The manifest's own arithmetic for every partition that sends something (p < P): the
    wire's bytes = dtype size x shape, and the p = 0 wire is the input image."""
    mpath = bundle.path / MANIFEST
    for part in bundle.partitions[: bundle.last]:
        where = f"{mpath}: partitions[{part.p}].wire"
        n = int(np.dtype(part.wire_dtype).itemsize * math.prod(part.wire_shape))
        if any(d <= 0 for d in part.wire_shape) or n != part.wire_bytes:
            raise BundleError(
                f"{where}: bytes {part.wire_bytes} does not match {part.wire_dtype}"
                f"{list(part.wire_shape)} = {n} bytes; {_REBUILD}"
            )
        image: Signature = (bundle.input_dtype, bundle.input_shape)
        if part.p == 0 and (part.wire_dtype, part.wire_shape) != image:
            raise BundleError(
                f"{where}: {_fmt((part.wire_dtype, part.wire_shape))} is not the input image "
                f"{_fmt(image)}; {_REBUILD}"
            )


def _same(got: Signature, want: Signature) -> bool:
    """Equal signatures; an activation the manifest sends as float16 is float32 in the model
    (the server casts it back before the tail)."""
    if got[1] != want[1]:
        return False
    return got[0] == want[0] or {got[0], want[0]} == {"float32", "float16"}


def check_consistency(bundle: Bundle) -> None:
    """check_wire, then every head's and tail's signature against the wire of its partition.

    Raises:
        BundleError: one line naming the file, the partition and what disagrees.
    """
    check_wire(bundle)
    image: Signature = (bundle.input_dtype, bundle.input_shape)
    output: Signature = ("float32", bundle.output_shape)
    for part in bundle.partitions:
        wire: Signature = (part.wire_dtype, part.wire_shape)
        expect = {
            "head": (image, output if part.p == bundle.last else wire),
            "tail": (image if part.p == 0 else wire, output),
        }
        for kind, arts in (("head", part.head), ("tail", part.tail)):
            for fmt, rel in sorted(arts.items()):
                reader = _READERS.get(fmt)
                if reader is None:
                    continue
                path = bundle.file(rel)
                try:
                    ins, outs = reader(path)
                except (OSError, ValueError, struct.error) as exc:
                    raise BundleError(
                        f"{path}: not a readable .{fmt} model ({exc}); {_REBUILD}"
                    ) from None
                want_in, want_out = expect[kind]
                if len(ins) != 1 or len(outs) != 1:
                    raise BundleError(
                        f"{path}: p={part.p} {kind} has {len(ins)} inputs and {len(outs)} "
                        f"outputs, expected 1 and 1; {_REBUILD}"
                    )
                for side, got, want in (("takes", ins[0], want_in), ("outputs", outs[0], want_out)):
                    if not _same(got, want):
                        link = "the wire of the manifest" if want == wire else "the manifest"
                        raise BundleError(
                            f"{path}: p={part.p} {kind} {side} {_fmt(got)} but {link} says "
                            f"{_fmt(want)}; the manifest and the artifacts disagree: {_REBUILD}"
                        )
