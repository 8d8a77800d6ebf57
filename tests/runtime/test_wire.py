"""Wire format: raw bytes with explicit dtype/shape, checked against the bundle; no pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.link import wire


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


def test_p0_sends_the_uint8_image(bundle):
    spec = wire.wire_spec(bundle, 0, float16=True)  # float16 never applies to the image
    assert spec.dtype == "uint8" and spec.shape == bundle.input_shape
    assert spec.nbytes == bundle.partitions[0].wire_bytes
    x = np.random.default_rng(0).integers(0, 256, bundle.input_shape, dtype=np.uint8)
    data = wire.encode(x, spec)
    assert len(data) == spec.nbytes
    assert np.array_equal(wire.decode(data, spec), x)
    with pytest.raises(wire.WireFormatError, match="uint8"):
        wire.encode(x.astype(np.float32), spec)


def test_float16_round_trip_halves_bytes_and_comes_back_float32(bundle):
    p = 1
    spec32 = wire.wire_spec(bundle, p)
    spec16 = wire.wire_spec(bundle, p, float16=True)
    assert spec16.dtype == "float16" and spec16.nbytes * 2 == spec32.nbytes
    a = np.random.default_rng(1).normal(size=spec32.shape).astype(np.float32)
    back = wire.decode(wire.encode(a, spec16), spec16)
    assert back.dtype == np.float32
    assert np.allclose(back, a, rtol=1e-3, atol=1e-3)
    assert not np.array_equal(back, a)  # it really went through float16
    exact = wire.decode(wire.encode(a, spec32), spec32)
    assert np.array_equal(exact, a)


def test_float16_only_where_the_bundle_records_it(bundle, tiny_bundle_copy):
    m = json.loads((tiny_bundle_copy / "manifest.json").read_text())
    m["partitions"][1]["float16"] = None
    (tiny_bundle_copy / "manifest.json").write_text(json.dumps(m))
    b = Bundle.load(tiny_bundle_copy)
    assert wire.wire_spec(b, 1, float16=True).dtype == "float32"
    assert [s.dtype for s in wire.accepted_specs(b, 1)] == ["float32"]
    assert [s.dtype for s in wire.accepted_specs(bundle, 1)] == ["float32", "float16"]


@pytest.mark.parametrize("n", [0, 1, 3071, 3073])
def test_decode_refuses_wrong_sizes(bundle, n):
    spec = wire.wire_spec(bundle, 0)
    with pytest.raises(wire.WireFormatError, match="expected"):
        wire.decode(b"\0" * n, spec)


def test_encode_refuses_wrong_shape(bundle):
    spec = wire.wire_spec(bundle, 1)
    with pytest.raises(wire.WireFormatError, match="shape"):
        wire.encode(np.zeros((1, 2, 3), np.float32), spec)


def test_partition_P_sends_nothing(bundle):
    with pytest.raises(wire.WireFormatError, match="sends nothing"):
        wire.wire_spec(bundle, bundle.last)


def test_header_and_body_split(bundle):
    spec = wire.wire_spec(bundle, 1, float16=True)
    head = wire.request_header(spec)
    body = head + b"\1" * spec.nbytes
    j, b = wire.split_body(body, str(len(head)))
    parsed = wire.parse_json_header(j)
    got, size = wire.tensor_spec_of(parsed["inputs"][0], "inputs[0]")
    assert got == spec and size == spec.nbytes == len(b)
    for bad in ("x", "0", str(len(body) + 1), "-5"):
        with pytest.raises(wire.WireFormatError):
            wire.split_body(body, bad)


@pytest.mark.parametrize(
    "entry",
    [
        [],
        {"datatype": "FP64", "shape": [1]},
        {"datatype": "FP32", "shape": "1,2"},
        {"datatype": "FP32", "shape": [1, -2]},
        {"datatype": "FP32", "shape": [True]},
        {"datatype": "FP32", "shape": [1] * 9},
        {"datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": -1}},
        {"datatype": "FP32", "shape": [1], "parameters": []},
    ],
)
def test_tensor_entry_form_is_checked(entry):
    with pytest.raises(wire.WireFormatError):
        wire.tensor_spec_of(entry, "inputs[0]")


def test_json_header_refuses_non_objects_and_huge():
    for raw in (b"[1]", b"\xff\xfe", b"{", b"x" * (wire.MAX_HEADER_BYTES + 1)):
        with pytest.raises(wire.WireFormatError):
            wire.parse_json_header(raw)
