"""Corrupt bundle sections (wrong types, shapes, dtypes, NaN, partition counts): every one is
a BundleError/ConfigError naming the file, and `carboncp inspect` exits 2 with one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from carboncp.runtime.artifacts.bundle import Bundle, register_file, save_manifest
from carboncp.runtime.cli import main as cli_main
from carboncp.runtime.decision.conformal import BinnedLogit
from carboncp.runtime.decision.costs import cost_model_of
from carboncp.runtime.decision.sections import check_sections
from carboncp.runtime.decision.table import Table
from carboncp.runtime.errors import BundleError, CarbonCPError

from tests.support.decision import make_bundle


def _sectioned(root: Path) -> Path:
    """make_bundle plus a small hand-made threshold table (no training needed)."""
    make_bundle(root)
    m = json.loads((root / "manifest.json").read_text())
    p1 = len(m["partitions"])
    n_cal = 5
    table = Table(
        edges=[[] for _ in range(7)],
        scores=np.zeros((1, p1), np.float16),
        latency_ms=np.full((1, p1), 10.0, np.float16),
        latency_offset_ms=[1.0] * p1,
        alpha=0.1,
        qhat=0.5,
        cal_scores=np.linspace(0, 1, n_cal).astype(np.float32),
        cal_bins=np.zeros((n_cal, 7), np.uint8),
        bandwidth_log_lower=-0.2,
        slo_ms=300.0,
        classifier=BinnedLogit([[] for _ in range(7)]).to_dict(),
    )
    for rel in table.save(root):
        register_file(m, root, rel)
    m["sections"]["table"] = "table/table.json"
    save_manifest(root, m)
    return root


def _edit_json(rel: str, change: Callable[[Any], Any]) -> Callable[[Path, dict], None]:
    def apply(root: Path, m: dict) -> None:
        d = json.loads((root / rel).read_text())
        change(d)
        (root / rel).write_text(json.dumps(d))
        register_file(m, root, rel)

    return apply


def _edit_npy(rel: str, arr: np.ndarray, shape_key: str | None = None) -> Callable:
    def apply(root: Path, m: dict) -> None:
        np.save(root / rel, arr, allow_pickle=False)
        register_file(m, root, rel)
        if shape_key:  # keep table.json consistent with the file, so only the shape is wrong
            _edit_json(
                "table/table.json",
                lambda d: d["files"][shape_key].__setitem__("shape", list(arr.shape)),
            )(root, m)

    return apply


def _manifest(change: Callable[[dict], Any]) -> Callable[[Path, dict], None]:
    return lambda root, m: change(m)


P1 = 7  # make_bundle's ResNet-18 profile: p = 0..6

CASES: dict[str, tuple[Callable[[Path, dict], None], str]] = {
    "table files is a list": (_edit_json("table/table.json", lambda d: d.update(files=[])), "table.json"),
    "table shape missing": (_edit_json("table/table.json", lambda d: d.pop("shape")), "table.json"),
    "table edges numbers": (_edit_json("table/table.json", lambda d: d.update(edges=[1] * 7)), "table.json"),
    "table edges too few": (_edit_json("table/table.json", lambda d: d.update(edges=[[]])), "table.json"),
    "table alpha null": (_edit_json("table/table.json", lambda d: d.update(alpha=None)), "table.json"),
    "table alpha out of range": (_edit_json("table/table.json", lambda d: d.update(alpha=3.0)), "table.json"),
    "table qhat NaN": (_edit_json("table/table.json", lambda d: d.update(qhat=float("nan"))), "table.json"),
    "table file spec a string": (_edit_json("table/table.json", lambda d: d["files"].update(scores="x")), "table.json"),
    "table offsets too short": (_edit_json("table/table.json", lambda d: d.update(latency_offset_ms=[1.0])), "table.json"),
    "table classifier empty": (_edit_json("table/table.json", lambda d: d.update(classifier={})), "table.json"),
    "scores 1-D": (_edit_npy("table/scores.npy", np.zeros(1, np.float16), "scores"), "table.json"),
    "scores wrong partition count": (_edit_npy("table/scores.npy", np.zeros((1, 2), np.float16), "scores"), "table"),
    "scores float64": (_edit_npy("table/scores.npy", np.zeros((1, P1))), "scores.npy"),
    "cal_bins 1-D": (_edit_npy("table/cal_bins.npy", np.zeros(5, np.uint8), "cal_bins"), "table.json"),
    "profile device_ms NaN": (_edit_json("profile.json", lambda d: d["device_ms"].__setitem__(1, float("nan"))), "profile.json"),
    "profile arrays nested": (_edit_json("profile.json", lambda d: d.update(device_ms=[[0.0]] * P1)), "profile.json"),
    "profile sources a list": (_edit_json("profile.json", lambda d: d.update(sources=[1, 2])), "profile.json"),
    "profile cuts a number": (_edit_json("profile.json", lambda d: d.update(cuts=5)), "profile.json"),
    "profile radio a number": (_edit_json("profile.json", lambda d: d.update(radio=3)), "profile.json"),
    "profile wrong partition count": (
        _edit_json("profile.json", lambda d: d.update({k: d[k][:3] for k in (
            "device_ms", "device_ms_p90", "server_ms", "wire_bytes", "return_bytes")})),
        "profile.json",
    ),
    "objective weight a string": (_edit_json("objective.json", lambda d: d.update(w_carbon="x")), "objective.json"),
    "objective radio a list": (_edit_json("objective.json", lambda d: d.update(radio=[1])), "objective.json"),
    "manifest sections a list": (_manifest(lambda m: m.update(sections=["x"])), "manifest.json"),
    "manifest files a list": (_manifest(lambda m: m.update(files=[])), "manifest.json"),
    "manifest head a string": (_manifest(lambda m: m["partitions"][1].update(head="x")), "manifest.json"),
    "manifest verify a string": (_manifest(lambda m: m["partitions"][1].update(verify="x")), "manifest.json"),
    "manifest wire shape text": (_manifest(lambda m: m["partitions"][1]["wire"].update(shape="ab")), "manifest.json"),
    "manifest input shape a number": (_manifest(lambda m: m["input"].update(shape=5)), "manifest.json"),
    "manifest tools a list": (_manifest(lambda m: m.update(tools=[1])), "manifest.json"),
    "manifest verification a list": (_manifest(lambda m: m.update(verification=[1])), "manifest.json"),
    "manifest weights a list": (_manifest(lambda m: m["model"].update(weights=[1])), "manifest.json"),
    "manifest float16 a string": (_manifest(lambda m: m["partitions"][1].update(float16="x")), "manifest.json"),
    "manifest float16 error text": (
        _manifest(lambda m: m["partitions"][1].update(float16={"max_abs_error": "a"})), "manifest.json"),
}  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return _sectioned(tmp_path_factory.mktemp("faults") / "good")


def _corrupt(good: Path, tmp_path: Path, case: str) -> Path:
    import shutil

    root = tmp_path / "b"
    shutil.copytree(good, root)
    m = json.loads((root / "manifest.json").read_text())
    CASES[case][0](root, m)
    save_manifest(root, m)
    return root


def test_the_uncorrupted_bundle_loads(good: Path, capsys) -> None:
    b = Bundle.load(good)
    check_sections(b)
    assert Table.from_bundle(b).n_partitions == b.last + 1 == P1
    assert b.last == cost_model_of(b).P
    assert cli_main(["inspect", str(good)]) == 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_corrupt_section_is_one_clear_line(good: Path, tmp_path: Path, capsys, case: str) -> None:
    root = _corrupt(good, tmp_path, case)
    with pytest.raises(CarbonCPError) as ei:
        check_sections(Bundle.load(root))
    assert str(root) in str(ei.value) and CASES[case][1] in str(ei.value)
    capsys.readouterr()
    assert cli_main(["inspect", str(root)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("carboncp: error: ") and str(root) in err


def test_table_of_another_partition_count_is_refused(good: Path, tmp_path: Path) -> None:
    root = _corrupt(good, tmp_path, "scores wrong partition count")
    with pytest.raises(BundleError, match=r"2 partitions.*rebuild"):
        Table.from_bundle(Bundle.load(root))


def test_policy_and_cost_model_read_the_objective_the_same_way(good: Path, tmp_path: Path) -> None:
    """One cost_model_of for run, evaluate, build and the table policy: a bundle without its
    objective section is the same BundleError for all of them."""
    import shutil

    from carboncp.runtime.decision.policy import TablePolicy

    root = tmp_path / "b"
    shutil.copytree(good, root)
    m = json.loads((root / "manifest.json").read_text())
    del m["sections"]["objective"]
    save_manifest(root, m)
    b = Bundle.load(root)
    for load in (lambda: cost_model_of(b), lambda: TablePolicy.from_bundle(b)):
        with pytest.raises(BundleError, match="no 'objective' section"):
            load()
    assert cost_model_of(b, objective_required=False).objective.w_carbon == 1.0


def test_inspect_shows_a_bad_descriptive_field_as_one_line(
    good: Path, tmp_path: Path, capsys
) -> None:
    """verification.tolerance_max_abs is only displayed (the runtime never reads it)."""
    import shutil

    root = tmp_path / "b"
    shutil.copytree(good, root)
    m = json.loads((root / "manifest.json").read_text())
    m["verification"] = {"samples": 8, "tolerance_max_abs": "x"}
    save_manifest(root, m)
    check_sections(Bundle.load(root))  # loads: nothing the device uses is wrong
    assert cli_main(["inspect", str(root)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "manifest.json" in err
