"""Bundle faults: each gives a BundleError naming the file and what to do (and the CLI prints it
without a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import MANIFEST, Bundle, register_file, save_manifest
from carboncp.runtime.artifacts.runners import LiteRTRunner
from carboncp.runtime.errors import BundleError


def _edit_manifest(root: Path, edit) -> Path:
    path = root / MANIFEST
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    return path


def test_tiny_bundle_loads_and_describes_itself(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    assert b.last == len(b.partitions) - 1 >= 2
    assert b.input_dtype == "uint8" and len(b.input_shape) == 4
    assert b.partitions[0].wire_dtype == "uint8"
    assert b.partitions[0].wire_bytes == int(np.prod(b.input_shape))
    for part in b.partitions[1:]:
        assert part.wire_bytes == 4 * int(np.prod(part.wire_shape))
        assert set(part.head) == {"pte", "tflite"}
    assert all(p.tail == {"pte": f"tails/p{p.p}.pte"} for p in b.partitions[:-1])
    assert b.partitions[-1].tail == {}
    assert b.section("profile") is None


def test_unknown_format_version(tiny_bundle_copy):
    path = _edit_manifest(tiny_bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format version 99") as ei:
        Bundle.load(tiny_bundle_copy)
    assert str(path) in str(ei.value) and "re-export" in str(ei.value)


def test_not_a_bundle_manifest(tiny_bundle_copy):
    _edit_manifest(tiny_bundle_copy, lambda m: m.update(format="something-else"))
    with pytest.raises(BundleError, match="not a CarbonCP bundle"):
        Bundle.load(tiny_bundle_copy)


def test_missing_file(tiny_bundle_copy):
    victim = tiny_bundle_copy / "heads" / "p1.tflite"
    victim.unlink()
    with pytest.raises(BundleError, match="missing") as ei:
        Bundle.load(tiny_bundle_copy)
    assert str(victim) in str(ei.value)


def test_sha256_mismatch_same_size(tiny_bundle_copy):
    victim = tiny_bundle_copy / "tails" / "p0.pte"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch") as ei:
        Bundle.load(tiny_bundle_copy)
    assert str(victim) in str(ei.value)


def test_truncated_artifact(tiny_bundle_copy):
    victim = tiny_bundle_copy / "heads" / "p2.pte"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="truncated") as ei:
        Bundle.load(tiny_bundle_copy)
    assert str(victim) in str(ei.value)


def test_truncated_artifact_unverified_fails_clearly_in_the_runner(tiny_bundle_copy):
    """Even with verification skipped, a broken .tflite is a BundleError, not a crash."""
    victim = tiny_bundle_copy / "heads" / "p1.tflite"
    victim.write_bytes(victim.read_bytes()[:100])
    b = Bundle.load(tiny_bundle_copy, verify=False)
    r = LiteRTRunner(b)
    x = np.zeros(b.input_shape, dtype=np.uint8)
    with pytest.raises(BundleError) as ei:
        r.run(1, x)
    assert str(victim) in str(ei.value)
    r.run(2, x)  # the other heads still work


@pytest.mark.parametrize("text", ["{", "", "[1, 2]", "\xff\xfe"])
def test_malformed_manifest(tiny_bundle_copy, text):
    path = tiny_bundle_copy / MANIFEST
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(BundleError) as ei:
        Bundle.load(tiny_bundle_copy)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda m: m["input"].pop("dtype"), "input.dtype"),
        (lambda m: m.pop("files"), "manifest.files"),
        (lambda m: m["model"].pop("name"), "model.name"),
        (lambda m: m["partitions"][1].pop("wire"), "partitions[1].wire"),
        (lambda m: m["partitions"][2]["wire"].pop("shape"), "partitions[2].wire.shape"),
        (lambda m: m.pop("format_version"), "format_version"),
    ],
)
def test_missing_key_is_named(tiny_bundle_copy, edit, key):
    path = _edit_manifest(tiny_bundle_copy, edit)
    with pytest.raises(BundleError, match="missing key") as ei:
        Bundle.load(tiny_bundle_copy)
    assert key in str(ei.value) and str(path) in str(ei.value)


def test_partitions_out_of_order_and_bad_wire_dtype(tiny_bundle_copy):
    _edit_manifest(tiny_bundle_copy, lambda m: m["partitions"].reverse())
    with pytest.raises(BundleError, match="in order"):
        Bundle.load(tiny_bundle_copy)
    _edit_manifest(tiny_bundle_copy, lambda m: m["partitions"].reverse())
    _edit_manifest(tiny_bundle_copy, lambda m: m["partitions"][1]["wire"].update(dtype="int4"))
    with pytest.raises(BundleError, match="int4"):
        Bundle.load(tiny_bundle_copy)


def test_artifact_not_listed_in_files(tiny_bundle_copy):
    _edit_manifest(tiny_bundle_copy, lambda m: m["files"].pop("heads/p1.pte"))
    with pytest.raises(BundleError, match=r"heads/p1\.pte"):
        Bundle.load(tiny_bundle_copy)


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(BundleError, match="no such bundle folder"):
        Bundle.load(tmp_path / "nope")
    with pytest.raises(BundleError, match="missing manifest"):
        Bundle.load(tmp_path)


def test_sections_are_registered_and_verified(tiny_bundle_copy):
    root = tiny_bundle_copy
    b = Bundle.load(root)
    (root / "profile.json").write_text(json.dumps({"heads_ms": [1.0, 2.0]}))
    register_file(b.manifest, root, "profile.json")
    b.manifest["sections"]["profile"] = "profile.json"
    save_manifest(root, b.manifest)
    assert Bundle.load(root).section("profile") == {"heads_ms": [1.0, 2.0]}
    (root / "profile.json").write_text(json.dumps({"heads_ms": [9.0, 2.0]}))
    with pytest.raises(BundleError, match=r"profile\.json"):
        Bundle.load(root)


def test_cli_inspect_bundle_fault_has_no_traceback(tiny_bundle_copy):
    (tiny_bundle_copy / "heads" / "p1.pte").write_bytes(b"garbage")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "carboncp.runtime.cli", "inspect", str(tiny_bundle_copy)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "p1.pte" in proc.stderr and "truncated" in proc.stderr


def test_cli_inspect_prints_the_partition_table(tiny_bundle):
    proc = subprocess.run(
        [sys.executable, "-m", "carboncp.runtime.cli", "inspect", str(tiny_bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    b = Bundle.load(tiny_bundle)
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == [p.cut for p in b.partitions]
    assert [int(r[4].replace(",", "")) for r in rows] == [p.wire_bytes for p in b.partitions]
    assert "sections none" in proc.stdout
