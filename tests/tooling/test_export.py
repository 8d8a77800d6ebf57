"""export_bundle: what the manifest records, and that verification catches a mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.requires import require

torch = require("torch", "the tooling extra exports models")

from carboncp.runtime.artifacts.bundle import Bundle  # noqa: E402
from carboncp.tooling.export import _verify, export_bundle  # noqa: E402

from tests.tiny_bundle import SPEC, tiny_net  # noqa: E402


def test_manifest_records_model_input_tools_and_errors(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    m = b.manifest
    assert m["model"]["factory"] == SPEC
    assert m["model"]["weights"]["kind"] == "random" and m["model"]["weights"]["seed"] == 0
    assert m["input"]["dtype"] == "uint8" and len(m["input"]["mean"]) == 3
    for tool in ("torch", "executorch", "litert-torch", "carboncp"):
        assert m["tools"][tool] not in ("", "absent")
    assert m["created"].endswith("+00:00")
    listed = set(m["files"])
    arts = {rel for p in b.partitions for rel in (*p.head.values(), *p.tail.values())}
    assert arts == listed
    tol = m["verification"]["tolerance_max_abs"]
    for part in b.partitions:
        expect = {"pte"} if part.p == 0 else {"pte", "tflite"}
        assert set(part.verify_max_abs) == expect
        assert max(part.verify_max_abs.values()) <= tol


def test_verification_detects_a_wrong_artifact(tiny_bundle_copy):
    """Feed the verifier a reference that differs from what the artifacts compute."""
    b = Bundle.load(tiny_bundle_copy)
    manifest = json.loads((tiny_bundle_copy / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, b.input_shape, dtype=np.uint8) for _ in range(2)]
    from carboncp.runtime.artifacts.runners import ExecuTorchRunner

    tail = ExecuTorchRunner(b, part="tail")
    refs = [tail.run(0, im) for im in images]
    assert _verify(tiny_bundle_copy, manifest, images, refs, ("pte", "tflite"), True) == []
    shifted = [r + np.float32(1e-2) for r in refs]
    worst = _verify(tiny_bundle_copy, manifest, images, shifted, ("pte", "tflite"), False)
    assert len(worst) == 1 + 2 * b.last  # every route: tail 0, heads 1..P in 2 formats
    assert all("max abs" in w for w in worst)


@pytest.mark.slow
def test_export_with_weights_file_and_tflite_heads_only(tmp_path):
    torch.manual_seed(42)
    weights = tmp_path / "tiny.pth"
    torch.save(tiny_net().state_dict(), weights)
    root = export_bundle(
        SPEC,
        tmp_path / "b",
        weights=str(weights),
        formats=("tflite",),
        float16=False,
        progress=False,
    )
    b = Bundle.load(root)
    w = b.manifest["model"]["weights"]
    assert w["kind"] == "file" and w["file"] == "tiny.pth" and len(w["sha256"]) == 64
    assert all(set(p.head) == {"tflite"} for p in b.partitions[1:])
    assert all(p.tail == {"pte": f"tails/p{p.p}.pte"} for p in b.partitions[:-1])
    assert all(p.float16 is None for p in b.partitions)
    # the exported model computes with the file's weights, not the seeded ones
    from carboncp.runtime.artifacts.runners import LiteRTRunner

    model = tiny_net()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    x = np.random.default_rng(3).integers(0, 256, b.input_shape, dtype=np.uint8)
    mean = torch.tensor(b.manifest["input"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(b.manifest["input"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model((torch.from_numpy(x).float() / 255 - mean) / std).numpy()
    np.testing.assert_allclose(LiteRTRunner(b).run(b.last, x), ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_parallel_export_writes_the_same_bytes(tiny_bundle, tmp_path):
    """Worker processes (the CLI default) rebuild the model from the parent's state_dict: the
    artifacts are byte-identical to the serial export's."""
    root = export_bundle(SPEC, tmp_path / "par", progress=False, workers=2)
    serial = Bundle.load(tiny_bundle).manifest["files"]
    parallel = Bundle.load(root).manifest["files"]
    assert {k: v["sha256"] for k, v in parallel.items()} == {
        k: v["sha256"] for k, v in serial.items()
    }


def _op_names(path) -> list[str]:
    from ai_edge_litert import schema_py_generated as S

    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    m = S.Model.GetRootAs(path.read_bytes(), 0)
    codes = [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]
    sg = m.Subgraphs(0)
    return [
        names[
            max(
                codes[op.OpcodeIndex()].BuiltinCode(),
                codes[op.OpcodeIndex()].DeprecatedBuiltinCode(),
            )
        ]
        for op in (sg.Operators(i) for i in range(sg.OperatorsLength()))
    ]


def test_tflite_heads_cast_the_uint8_image_before_transposing_it(tiny_bundle):
    # tflite-runtime 2.14 runs nothing on XNNPACK when a uint8 TRANSPOSE is in the graph
    # (tooling/tflite_fixups.py); the export swaps the pair, and a second pass finds nothing.
    from carboncp.tooling.tflite_fixups import cast_before_transpose

    b = Bundle.load(tiny_bundle)
    for p in range(1, b.last + 1):
        path = b.file(f"heads/p{p}.tflite")
        ops = _op_names(path)
        assert ops[:2] == ["CAST", "TRANSPOSE"], (p, ops[:4])
        data = path.read_bytes()
        assert cast_before_transpose(data) == (data, 0)
