"""Carbon and bandwidth trace loaders: shipped data, semantics, and every bad-input rule."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from carboncp.runtime.errors import TraceError
from carboncp.runtime.signals.traces import (
    DATA_DIR,
    TraceRepairWarning,
    load_bandwidth_trace,
    load_carbon_csv,
    shipped_bandwidth_names,
    shipped_bandwidth_path,
    shipped_carbon_path,
    shipped_carbon_zones,
)

HEADER = (
    "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
    "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,"
    "Data Source,Data Estimated,Data Estimation Method"
)


def _row(stamp: str, direct: str, lca: str = "100.0", zone: str = "FR") -> str:
    return f"{stamp},France,France,{zone},{direct},{lca},80,20,rte-france.com,false,"


def _csv(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return p


def _hours(n: int, values: list[float] | None = None) -> list[str]:
    base = np.datetime64("2024-03-01T00:00:00")
    vals = values if values is not None else [50.0 + 10 * i for i in range(n)]
    return [
        _row(str(base + np.timedelta64(i, "h")).replace("T", " "), f"{vals[i]}") for i in range(n)
    ]


# -- shipped data ------------------------------------------------------------------------------


def test_shipped_carbon_slices_are_eight_hourly_weeks() -> None:
    assert shipped_carbon_zones() == ["DE-LU", "GB", "US-CAL-CISO"]
    starts = set()
    for zone in shipped_carbon_zones():
        tr = load_carbon_csv(shipped_carbon_path(zone))
        assert len(tr) == 8 * 7 * 24
        assert np.all(np.diff(tr.t_s) == 3600)
        assert tr.t_s.dtype == np.int64 and tr.gco2_per_kwh.dtype == np.float64
        assert tr.kind == "average" and not tr.repairs
        assert tr.gco2_per_kwh.max() > 2 * tr.gco2_per_kwh.min()  # strong swings
        starts.add(tr.start_s)
    assert len(starts) == 1  # same window: device and server zones line up


def test_shipped_bandwidth_is_the_six_mit_traces_only() -> None:
    names = shipped_bandwidth_names()
    assert len(names) == 6
    assert not any("ucc5g" in n for n in names)  # GPL traces must not be copied in
    assert not list(DATA_DIR.rglob("ucc5g*"))
    for n in names:
        tr = load_bandwidth_trace(shipped_bandwidth_path(n))
        assert tr.duration_s > 100 and np.all(tr.mbps >= 0)
    readme = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    assert "Data: Electricity Maps (electricitymaps.com)" in readme
    assert "ODbL 1.0" in readme and "MIT" in readme


def test_unknown_shipped_names_list_the_valid_ones() -> None:
    with pytest.raises(TraceError, match="GB"):
        shipped_carbon_path("XX")
    with pytest.raises(TraceError, match="norway_bus_1"):
        shipped_bandwidth_path("nope")
    with pytest.raises(TraceError):
        shipped_bandwidth_path("README.md")


# -- carbon: semantics -------------------------------------------------------------------------


def test_any_zone_step_hold_clamp_and_slice(tmp_path: Path) -> None:
    tr = load_carbon_csv(_csv(tmp_path, _hours(5)))
    assert tr.zone == "FR"
    t0 = int(np.datetime64("2024-03-01T00:00:00", "s").astype(np.int64))
    assert tr.at(t0) == 50.0
    assert tr.at(t0 + 3599) == 50.0
    assert tr.at(t0 + 3600) == 60.0
    assert tr.at(t0 - 10_000) == 50.0  # clamped before the start
    assert tr.at(t0 + 10 * 3600) == 90.0  # clamped after the end
    np.testing.assert_array_equal(tr.at_array(np.array([t0 + 1800, t0 + 7300])), [50.0, 70.0])
    sl = tr.slice(t0 + 3600, t0 + 3 * 3600)
    np.testing.assert_array_equal(sl.gco2_per_kwh, [60.0, 70.0])
    with pytest.raises(TraceError, match="no hours"):
        tr.slice(t0 + 100 * 3600, t0 + 200 * 3600)


def test_newer_export_header_and_bom(tmp_path: Path) -> None:
    newer = (
        "\ufeffDatetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
        "Carbon intensity gCO₂eq/kWh (Life cycle),Carbon-free energy percentage (CFE%),"
        "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method"
    )
    p = _csv(tmp_path, _hours(3), header=newer)
    tr = load_carbon_csv(p)
    assert tr.zone == "FR" and tr.gco2_per_kwh.tolist() == [50.0, 60.0, 70.0]
    assert load_carbon_csv(p, column="lca").gco2_per_kwh.tolist() == [100.0] * 3


def test_lca_and_ascii_column_names(tmp_path: Path) -> None:
    rows = _hours(3)
    assert load_carbon_csv(_csv(tmp_path, rows), column="lca").gco2_per_kwh.tolist() == [100.0] * 3
    ascii_header = HEADER.replace("₂", "2")
    tr = load_carbon_csv(_csv(tmp_path, rows, header=ascii_header, name="a.csv"))
    assert tr.gco2_per_kwh.tolist() == [50.0, 60.0, 70.0]


# -- carbon: bad input -------------------------------------------------------------------------


def test_missing_file_empty_header_only_and_binary(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_carbon_csv(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TraceError, match="empty"):
        load_carbon_csv(tmp_path / "empty.csv")
    with pytest.raises(TraceError, match="header only"):
        load_carbon_csv(_csv(tmp_path, []))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(TraceError, match="UTF-8"):
        load_carbon_csv(tmp_path / "bin.csv")
    with pytest.raises(TraceError):
        load_carbon_csv(tmp_path)  # a folder is unreadable as a file


def test_missing_columns_name_what_is_there(tmp_path: Path) -> None:
    header = HEADER.replace("Carbon Intensity gCO₂eq/kWh (direct)", "Something else")
    with pytest.raises(TraceError, match=r"no carbon-intensity column.*Something else"):
        load_carbon_csv(_csv(tmp_path, _hours(3), header=header))
    header = HEADER.replace("Datetime (UTC)", "When")
    with pytest.raises(TraceError, match=r"Datetime \(UTC\)"):
        load_carbon_csv(_csv(tmp_path, _hours(3), header=header, name="b.csv"))
    with pytest.raises(TraceError, match="'nope'"):
        load_carbon_csv(_csv(tmp_path, _hours(3), name="c.csv"), column="nope")


@pytest.mark.parametrize(
    "header,row",
    [
        ("point_time,value,ba,frequency", "2024-03-01T00:00:00+00:00,950.0,CAISO_NORTH,300"),
        ("timestamp,MOER,version", "2024-03-01 00:00:00,1020.5,3.2"),
        ("Datetime (UTC),moer_lbs_per_mwh", "2024-03-01 00:00:00,1020.5"),
    ],
)
def test_watttime_marginal_file_is_refused(tmp_path: Path, header: str, row: str) -> None:
    p = _csv(tmp_path, [row, row.replace("00:00:00", "01:00:00")], header=header)
    with pytest.raises(TraceError, match=r"marginal.*lbs CO2/MWh") as err:
        load_carbon_csv(p)
    assert str(p) in str(err.value)


def test_unsorted_rows_are_sorted_with_a_warning(tmp_path: Path) -> None:
    rows = _hours(6)
    shuffled = [rows[i] for i in (3, 0, 5, 1, 4, 2)]
    with pytest.warns(TraceRepairWarning, match="sorted"):
        tr = load_carbon_csv(_csv(tmp_path, shuffled))
    assert tr.gco2_per_kwh.tolist() == [50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
    assert any("sorted" in r for r in tr.repairs)


def test_exact_duplicates_dropped_conflicting_refused(tmp_path: Path) -> None:
    rows = _hours(4)
    with pytest.warns(TraceRepairWarning, match="duplicate"):
        tr = load_carbon_csv(_csv(tmp_path, [*rows[:3], rows[2], rows[3]]))
    assert tr.gco2_per_kwh.tolist() == [50.0, 60.0, 70.0, 80.0]
    clash = rows[2].replace(",70.0,", ",71.0,")
    with pytest.raises(TraceError, match=r"rows 4 and 5 .*same hour"):
        load_carbon_csv(_csv(tmp_path, [*rows[:3], clash, rows[3]], name="b.csv"))


def test_short_gap_interpolated_long_gap_refused(tmp_path: Path) -> None:
    rows = _hours(10)
    with pytest.warns(TraceRepairWarning, match="interpolation"):
        tr = load_carbon_csv(_csv(tmp_path, rows[:2] + rows[5:]))  # hours 2,3,4 missing
    assert len(tr) == 10
    np.testing.assert_allclose(tr.gco2_per_kwh, 50.0 + 10 * np.arange(10))
    with pytest.raises(TraceError, match="4 hours missing from 2024-03-01T02:00:00"):
        load_carbon_csv(_csv(tmp_path, rows[:2] + rows[6:], name="b.csv"))


def test_nan_and_empty_values_are_missing_hours(tmp_path: Path) -> None:
    rows = _hours(8)
    rows[3] = rows[3].replace(",80.0,", ",,")
    rows[4] = rows[4].replace(",90.0,", ",NaN,")
    with pytest.warns(TraceRepairWarning):
        tr = load_carbon_csv(_csv(tmp_path, rows))
    np.testing.assert_allclose(tr.gco2_per_kwh[3:5], [80.0, 90.0])
    for i in range(2, 6):
        rows[i] = rows[i].replace(f",{50.0 + 10 * i},", ",nan,")
    with pytest.raises(TraceError, match="hours missing"):
        load_carbon_csv(_csv(tmp_path, rows, name="b.csv"))
    first_nan = _hours(3)
    first_nan[0] = first_nan[0].replace(",50.0,", ",,")
    with pytest.raises(TraceError, match="first hour"):
        load_carbon_csv(_csv(tmp_path, first_nan, name="c.csv"))


def test_negative_and_non_numeric_values_refused_with_row(tmp_path: Path) -> None:
    rows = _hours(4)
    rows[2] = rows[2].replace(",70.0,", ",-3.5,")
    with pytest.raises(TraceError, match=r"row 4.*-3.5"):
        load_carbon_csv(_csv(tmp_path, rows))
    rows = _hours(4)
    rows[1] = rows[1].replace(",60.0,", ",abc,")
    with pytest.raises(TraceError, match=r"row 3.*'abc'"):
        load_carbon_csv(_csv(tmp_path, rows, name="b.csv"))


def test_bad_timestamps_refused(tmp_path: Path) -> None:
    rows = _hours(3)
    rows[1] = rows[1].replace("2024-03-01 01:00:00", "yesterday")
    with pytest.raises(TraceError, match=r"row 3.*'yesterday'"):
        load_carbon_csv(_csv(tmp_path, rows))
    rows = _hours(3)
    rows[2] = rows[2].replace("02:00:00", "02:30:00")
    with pytest.raises(TraceError, match=r"row 4.*start of an hour"):
        load_carbon_csv(_csv(tmp_path, rows, name="b.csv"))
    rows = _hours(3)
    rows[1] = rows[1] + ",extra"
    with pytest.raises(TraceError, match="row 3 has 12 fields"):
        load_carbon_csv(_csv(tmp_path, rows, name="c.csv"))


# -- bandwidth ---------------------------------------------------------------------------------


def _bw(tmp_path: Path, text: str, name: str = "trace") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_bandwidth_interval_end_semantics_and_looping(tmp_path: Path) -> None:
    tr = load_bandwidth_trace(_bw(tmp_path, "0.0\t1.0\n1.0\t2.0\n3.0\t0\n4.0 8.0\n"))
    assert tr.duration_s == 4.0 and tr.name == "trace"
    assert tr.at(0.5) == 2.0  # the row at t=1 covers (0, 1]
    assert tr.at(1.0) == 2.0
    assert tr.at(1.5) == 0.0  # an outage is a real zero
    assert tr.at(3.5) == 8.0
    assert tr.at(4.5) == tr.at(0.5)  # looped modulo the duration
    assert tr.at(8.0 + 1.5) == 0.0
    t = np.linspace(0, 20, 101)
    np.testing.assert_array_equal(tr.at_array(t), [tr.at(v) for v in t])


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty"),
        ("# only a comment\n\n", "empty"),
        ("0 1.0\n", "only one row"),
        ("0 1.0 3\n1 2\n", "line 1 has 3 fields"),
        ("0 1.0\n1 fast\n", r"line 2.*'fast'"),
        ("0 1.0\nx 2\n", r"line 2: time 'x'"),
        ("0 1.0\n1 -2\n", r"line 2.*-2 Mbit/s"),
        ("0 1.0\n1 inf\n", r"line 2.*inf"),
        ("0 1.0\n2 2\n1 3\n", r"line 3: time 1.0 does not increase"),
        ("0 1.0\n1 2\n1 5\n", r"line 3: time 1.0 does not increase"),
        ("-1 1.0\n1 2\n", "line 1: time -1"),
    ],
)
def test_bandwidth_bad_input_refused(tmp_path: Path, text: str, match: str) -> None:
    p = _bw(tmp_path, text)
    with pytest.raises(TraceError, match=match) as err:
        load_bandwidth_trace(p)
    assert str(p) in str(err.value)


def test_bandwidth_missing_file_and_binary(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_bandwidth_trace(tmp_path / "absent")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x81\x00")
    with pytest.raises(TraceError, match="UTF-8"):
        load_bandwidth_trace(tmp_path / "bin")


def test_bandwidth_repairs_are_reported(tmp_path: Path) -> None:
    with pytest.warns(TraceRepairWarning, match="duplicate"):
        tr = load_bandwidth_trace(_bw(tmp_path, "0 1\n1 2\n1 2\n2 3\n"))
    assert tr.t_s.tolist() == [0.0, 1.0, 2.0]
    with pytest.warns(TraceRepairWarning, match="outages"):
        tr = load_bandwidth_trace(_bw(tmp_path, "0 1\n1 nan\n2 -\n3 4\n", name="b"))
    assert tr.mbps.tolist() == [1.0, 0.0, 0.0, 4.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean trace warns about nothing
        load_bandwidth_trace(_bw(tmp_path, "0 1\n1 0\n2 3\n", name="c"))
