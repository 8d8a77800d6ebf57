"""Post-conversion fix-ups of `.tflite` files, so that older interpreters run them fast.

litert-torch turns the head's uint8 NCHW image input into TRANSPOSE(uint8) -> CAST(float32).
tflite-runtime 2.14's XNNPACK delegate claims that uint8 TRANSPOSE, then cannot build it
("unsupported quantization type 0 for UINT8 tensor"), and on that failure the interpreter
restores the original plan: no node of the graph runs on XNNPACK (ResNet-18's full head
~95 ms instead of ~28 ms on the development host). ai-edge-litert's newer XNNPACK leaves
the node on the CPU and is not affected.

`cast_before_transpose` swaps the pair into CAST(uint8 -> float32) -> TRANSPOSE(float32):
cast and transpose commute exactly, so outputs are bit-identical, and the model's input and
signature stay uint8 [N, C, H, W]. It edits a few fields of the flatbuffer in place (tensor
indices, the intermediate tensor's type and shape, the order of the two operators), so the
weight buffers, their alignment, metadata and signatures are untouched. The export verifies
every artifact against the full model afterwards, as for any other file.
"""

from __future__ import annotations

import struct
from typing import Any

# Field slots (vtable offsets) of the TFLite schema tables, from schema.fbs.
_OP_INPUTS, _OP_OUTPUTS = 6, 8
_T_SHAPE, _T_TYPE, _T_SHAPE_SIGNATURE = 4, 6, 18
_SG_OPERATORS = 10


def _vector(tab: Any, slot: int) -> tuple[int | None, int]:
    """(absolute position, length) of a table's vector field; (None, 0) when absent."""
    o = tab.Offset(slot)
    return (tab.Vector(o), tab.VectorLen(o)) if o else (None, 0)


def _int32s(tab: Any, slot: int) -> tuple[int | None, list[int]]:
    pos, n = _vector(tab, slot)
    return pos, list(struct.unpack_from(f"<{n}i", tab.Bytes, pos)) if n else []


def cast_before_transpose(data: bytes) -> tuple[bytes, int]:
    """The model with every TRANSPOSE(uint8) -> CAST(float32) pair swapped; and how many."""
    from ai_edge_litert import schema_py_generated as S

    buf = bytearray(data)
    model = S.Model.GetRootAs(bytes(data), 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()))
    swapped = 0
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
        kind = [codes[op.OpcodeIndex()] for op in ops]
        graph_outputs = set(sg.OutputsAsNumpy().tolist()) if sg.OutputsLength() else set()
        for i, op in enumerate(ops):
            if kind[i] != S.BuiltinOperator.TRANSPOSE:
                continue
            in_pos, ins = _int32s(op._tab, _OP_INPUTS)
            out_pos, outs = _int32s(op._tab, _OP_OUTPUTS)
            if len(ins) != 2 or len(outs) != 1:
                continue
            (x, perm), (t,) = ins, outs
            X, T = sg.Tensors(x), sg.Tensors(t)
            if X.Type() != S.TensorType.UINT8 or t in graph_outputs:
                continue
            users = [j for j, o in enumerate(ops) if t in _int32s(o._tab, _OP_INPUTS)[1]]
            if len(users) != 1 or kind[users[0]] != S.BuiltinOperator.CAST:
                continue
            j = users[0]
            c_in_pos, c_ins = _int32s(ops[j]._tab, _OP_INPUTS)
            c_out_pos, c_outs = _int32s(ops[j]._tab, _OP_OUTPUTS)
            if len(c_ins) != 1 or len(c_outs) != 1:
                continue
            (f,) = c_outs
            if sg.Tensors(f).Type() != S.TensorType.FLOAT32 or X.ShapeLength() != T.ShapeLength():
                continue
            shape_pos, _ = _vector(T._tab, _T_SHAPE)
            sig_pos, sig_len = _vector(T._tab, _T_SHAPE_SIGNATURE)
            type_off = T._tab.Offset(_T_TYPE)
            if shape_pos is None or not type_off or sig_len not in (0, X.ShapeLength()):
                continue
            # The converter may share one vector between equal-shaped tensors: then it cannot
            # be rewritten for T alone.
            mine = {shape_pos, sig_pos} - {None}
            shared = any(
                mine & {_vector(sg.Tensors(k)._tab, _T_SHAPE)[0],
                        _vector(sg.Tensors(k)._tab, _T_SHAPE_SIGNATURE)[0]}
                for k in range(sg.TensorsLength())
                if k != t
            )  # fmt: skip
            if shared:
                continue
            x_shape = X.ShapeAsNumpy().tolist()
            # CAST: X -> T (now float32, NCHW); TRANSPOSE: (T, perm) -> F.
            struct.pack_into("<i", buf, c_in_pos, x)
            struct.pack_into("<i", buf, c_out_pos, t)
            struct.pack_into("<2i", buf, in_pos, t, perm)
            struct.pack_into("<i", buf, out_pos, f)
            struct.pack_into(f"<{len(x_shape)}i", buf, shape_pos, *x_shape)
            if sig_pos is not None:
                struct.pack_into(f"<{len(x_shape)}i", buf, sig_pos, *x_shape)
            struct.pack_into("<b", buf, T._tab.Pos + type_off, S.TensorType.FLOAT32)
            # Swap the two operators in the subgraph's operator vector (uoffsets are relative
            # to their own slot), so the CAST runs first.
            vec = sg._tab.Vector(sg._tab.Offset(_SG_OPERATORS))
            pi, pj = vec + 4 * i, vec + 4 * j
            ti = pi + struct.unpack_from("<I", buf, pi)[0]
            tj = pj + struct.unpack_from("<I", buf, pj)[0]
            struct.pack_into("<I", buf, pi, tj - pi)
            struct.pack_into("<I", buf, pj, ti - pj)
            swapped += 1
    return bytes(buf), swapped
