"""Bundle consistency at load (issue 10, item 7): a manifest whose wire disagrees with itself
or with the artifacts is refused by `run`, `serve` and `inspect` with one line and exit 2,
before anything runs (no WireFormatError traceback, no `set_inputs() ... 0x10`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from carboncp.runtime.artifacts.bundle import Bundle, save_manifest
from carboncp.runtime.artifacts.consistency import check_consistency, pte_signature
from carboncp.runtime.errors import BundleError

from tests.support.edge_server import free_port


def _edit_wire(root: Path, p: int, shape: list[int], nbytes: int) -> None:
    m = json.loads((root / "manifest.json").read_text())
    m["partitions"][p]["wire"].update(shape=shape, bytes=nbytes)
    save_manifest(root, m)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carboncp.runtime.cli", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _one_line_refusal(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("carboncp: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]


def test_the_tiny_bundle_is_consistent(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    check_consistency(b)
    ins, outs = pte_signature(b.file(b.partitions[1].tail["pte"]))
    assert ins == [("float32", b.partitions[1].wire_shape)]
    assert outs == [("float32", b.output_shape)]


@pytest.mark.parametrize(
    "case, shape, nbytes, words",
    [
        ("bytes disagree with dtype x shape", [1, 8, 16, 17], 8192, ("partitions[1].wire", "8704")),
        ("wire disagrees with the artifacts", [1, 8, 16, 17], 8704, ("p=1", "disagree")),
    ],
)
def test_run_serve_and_inspect_refuse_an_inconsistent_wire(
    tiny_bundle_copy, case, shape, nbytes, words
):
    _edit_wire(tiny_bundle_copy, 1, shape, nbytes)
    with pytest.raises(BundleError):
        check_consistency(Bundle.load(tiny_bundle_copy))
    b = str(tiny_bundle_copy)
    _one_line_refusal(_cli("inspect", b), *words)
    _one_line_refusal(_cli("serve", b, "--port", str(free_port())), *words)
    _one_line_refusal(
        _cli("run", "--bundle", b, "--policy", "local", "--count", "1", "--quiet"), *words
    )


def test_a_tail_that_is_not_a_program_is_refused_by_name(tiny_bundle_copy):
    from carboncp.runtime.artifacts.bundle import register_file

    rel = "tails/p2.pte"
    (tiny_bundle_copy / rel).write_bytes(b"\0" * 64)
    m = json.loads((tiny_bundle_copy / "manifest.json").read_text())
    register_file(m, tiny_bundle_copy, rel)
    save_manifest(tiny_bundle_copy, m)
    with pytest.raises(BundleError, match=r"p2\.pte: not a readable \.pte model"):
        check_consistency(Bundle.load(tiny_bundle_copy))
