"""docs/scenarios/summarise.py: the verdicts docs/RESULTS.md reports (issue 9's targets, issue 3's
coverage targets and their significance), on hand-made metrics.json files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "scenarios" / "summarise.py"


@pytest.fixture(scope="module")
def summarise():
    spec = importlib.util.spec_from_file_location("summarise", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _metrics(tmp: Path, name: str, *, a=40.0, known=42.0, oracle=45.0, jreg=1.0, slo=0.01,
             coverage=None) -> Path:  # fmt: skip
    """A metrics.json whose savings against local-only (carbon 100 g) are the given %."""

    def pol(saving: float, **kw) -> dict:
        return {"carbon_g": 100.0 - saving, "slo_violation_rate": 0.0, **kw}

    m = {
        "alpha": 0.1,
        "n_test": 1000,
        "policies": {
            "local_only": pol(0.0),
            "carboncp_a": pol(
                a,
                j_regret_pct=jreg,
                regret_pct=jreg,
                coverage=0.9,
                out_of_support_rate=0.0,
                slo_violation_rate=slo,
            ),
            "carboncp_a_lower": pol(a - 10),
            "known_bandwidth": pol(known),
            "oracle": pol(oracle),
            "causal_best": pol(a + 0.5),
        },
        "coverage_vs_alpha": coverage or [],
    }
    d = tmp / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(m))
    return d


@pytest.mark.parametrize(
    ("kw", "verdict"),
    [
        ({}, "PASS"),
        ({"jreg": 5.1}, "FAIL (regret)"),
        ({"slo": 0.111}, "FAIL (SLO)"),
        ({"a": 36.9}, "FAIL (gap to known-B)"),  # 5.1 points under known-B, offloading pays
        ({"a": 0.0, "known": 4.0, "oracle": 4.9}, "PASS"),  # offloading does not pay: no gap rule
    ],
)
def test_row_verdicts(summarise, tmp_path, kw, verdict) -> None:
    line, ok = summarise.row(_metrics(tmp_path, "s", **kw))
    assert line.rstrip(" |").endswith(verdict) and ok == (verdict == "PASS")


def test_headline_verdicts(summarise, tmp_path) -> None:
    line, ok = summarise.row(_metrics(tmp_path, "h", a=57.2, known=60.6, oracle=60.6), True)
    assert "FAIL (< 58.8%)" in line and not ok
    line, ok = summarise.row(_metrics(tmp_path, "g", a=58.8, known=60.6, oracle=60.6), True)
    assert ok
    line, ok = summarise.row(_metrics(tmp_path, "j", a=58.75, known=60.6, oracle=60.6), True)
    assert "FAIL (< 58.8%)" in line and not ok
    line, _ = summarise.row(_metrics(tmp_path, "o", a=58.9, known=60.6, oracle=66.0), True)
    assert "< 90% of oracle" in line


def _cov(split, ci=None, aci=0.9):
    rows = []
    for a in (0.05, 0.1, 0.2):
        r = {"alpha": a, "split_cp": split.get(a, 1 - a), "aci": aci if a == 0.1 else 1 - a}
        if ci and a in ci:
            r["split_cp_ci95"] = ci[a]
        rows.append(r)
    return rows


def test_coverage_misses_are_named_with_their_significance(summarise, tmp_path, capsys) -> None:
    dirs = [
        _metrics(tmp_path, "ok", coverage=_cov({})),
        _metrics(tmp_path, "noise", coverage=_cov({0.2: 0.772}, {0.2: [0.755, 0.788]})),
        _metrics(tmp_path, "real", coverage=_cov({0.2: 0.75}, {0.2: [0.74, 0.77]})),
        _metrics(tmp_path, "aci", coverage=_cov({}, aci=0.87)),
    ]
    summarise.coverage_rows(dirs)
    text = capsys.readouterr().out
    out = {ln.split(" | ")[0].strip("| "): ln for ln in text.splitlines()}
    assert out["ok"].endswith("| PASS |")
    assert "split_cp at 0.2 (95% CI 0.755-0.788 holds the target: not significant)" in out["noise"]
    assert "split_cp at 0.2)" in out["real"] and "not significant" not in out["real"]
    assert "aci at 0.1" in out["aci"]
    assert text.rstrip().endswith("1 of 4 PASS")
