"""`carboncp export` / `carboncp inspect` on bad input: a clear message naming what is wrong,
exit code 2, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.requires import require

require("torch", "carboncp export needs the tooling extra")


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "carboncp.runtime.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]


def test_unknown_model(tmp_path):
    proc = _cli("export", "--model", "resnet1000", "--out", str(tmp_path / "b"))
    _assert_clean_failure(proc, "resnet1000", "unknown model", "package.module:factory")
    assert not (tmp_path / "b").exists()


def test_unimportable_factory(tmp_path):
    proc = _cli("export", "--model", "no_such_pkg.nets:make", "--out", str(tmp_path / "b"))
    _assert_clean_failure(proc, "no_such_pkg")


def test_bad_weights_file(tmp_path):
    junk = tmp_path / "weights.pth"
    junk.write_text("not a state dict")
    proc = _cli(
        "export", "--model", "resnet18", "--weights", str(junk), "--out", str(tmp_path / "b")
    )
    _assert_clean_failure(proc, str(junk))
    missing = tmp_path / "missing.pth"
    proc = _cli("export", "--model", "resnet18", "--weights", str(missing))
    _assert_clean_failure(proc, str(missing), "no such file")


def test_unwritable_output_folder(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = _cli("export", "--model", SPEC, "--out", str(afile / "bundle"))
    _assert_clean_failure(proc, "--out", str(afile / "bundle"))
    proc = _cli("export", "--model", SPEC, "--out", str(afile))
    _assert_clean_failure(proc, "not a folder")


def test_refuses_to_clear_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = _cli("export", "--model", SPEC, "--out", str(tmp_path))
    _assert_clean_failure(proc, "holds no bundle")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_unknown_format(tmp_path):
    proc = _cli("export", "--model", SPEC, "--formats", "pte,onnx", "--out", str(tmp_path / "b"))
    _assert_clean_failure(proc, "onnx")


def test_inspect_not_a_bundle(tmp_path):
    _assert_clean_failure(_cli("inspect", str(tmp_path)), "missing manifest")
    _assert_clean_failure(_cli("inspect", str(tmp_path / "nope")), "no such bundle folder")


SPEC = "tests.tiny_bundle:tiny_net"
