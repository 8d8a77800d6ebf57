"""Real traces that drive contexts: hourly grid carbon and measured link throughput.

numpy only (the device may use these too). Rules for bad input are in docs/TRACES.md and
in the loaders' docstrings; every refusal is a `TraceError` naming the file, the row or
column, and what to do. Every repair is reported with a `TraceRepairWarning` and recorded
in the trace's `repairs`.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from carboncp.runtime.errors import TraceError

DATA_DIR = Path(__file__).parent.parent / "data"
HOUR_S = 3600
MAX_INTERPOLATED_GAP_H = 3  # missing hours in a row that are filled by interpolation

TIME_COLUMN = "Datetime (UTC)"
ZONE_COLUMN = "Zone Id"
# Accepted spellings of the intensity column's qualifier, per kind: the 2023 exports say
# "(direct)"/"(LCA)", newer ones "Carbon intensity ... (direct)"/"(Life cycle)".
_INTENSITY_KINDS = {"direct": ("direct",), "lca": ("lca", "life cycle", "lifecycle")}


class TraceRepairWarning(UserWarning):
    """A trace was repaired (sorted, de-duplicated, gap filled): the message says what."""


def _repair(path: Path, what: str, repairs: list[str]) -> None:
    repairs.append(what)
    warnings.warn(f"{path}: {what}", TraceRepairWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# Carbon
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class CarbonTrace:
    """Hourly grid carbon intensity of one zone (gCO2eq/kWh), step-held within each hour."""

    zone: str
    t_s: np.ndarray  # int64 epoch seconds of hour starts, strictly increasing
    gco2_per_kwh: np.ndarray  # float64, >= 0, finite
    kind: str = "average"  # average (Electricity Maps 'direct' or 'lca'); never marginal here
    source: str = ""
    repairs: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.t_s)

    @property
    def start_s(self) -> int:
        return int(self.t_s[0])

    @property
    def end_s(self) -> int:
        """End of the last hour (exclusive)."""
        return int(self.t_s[-1]) + HOUR_S

    def at(self, t_s: float) -> float:
        """Value of the hour containing t (step-hold); clamped to the first/last hour outside."""
        i = int(np.searchsorted(self.t_s, t_s, side="right")) - 1
        i = min(max(i, 0), len(self.t_s) - 1)
        return float(self.gco2_per_kwh[i])

    def at_array(self, t_s: np.ndarray) -> np.ndarray:
        """Vectorised `at`."""
        i = np.searchsorted(self.t_s, np.asarray(t_s, dtype=np.float64), side="right") - 1
        return self.gco2_per_kwh[np.clip(i, 0, len(self.t_s) - 1)]

    def slice(self, t0_s: float, t1_s: float) -> CarbonTrace:
        """Hours whose start lies in [t0_s, t1_s)."""
        keep = (self.t_s >= t0_s) & (self.t_s < t1_s)
        if not keep.any():
            raise TraceError(
                f"{self.source or self.zone}: no hours in [{t0_s}, {t1_s}); the trace covers "
                f"[{self.start_s}, {self.end_s})"
            )
        return CarbonTrace(
            self.zone, self.t_s[keep], self.gco2_per_kwh[keep], self.kind, self.source, self.repairs
        )


def load_carbon_csv(path: str | Path, column: str = "direct") -> CarbonTrace:
    """Read an Electricity Maps hourly CSV export (any zone) as an average-intensity trace.

    `column` is "direct" (operational; what CarbonCP's operational carbon uses), "lca", or
    an exact header name. Header names carry a subscript two (`gCO₂eq/kWh`); the ASCII
    spelling `gCO2eq/kWh` is accepted too.

    Rules (docs/TRACES.md):
    - unreadable, empty, header-only, not UTF-8: refused.
    - a WattTime marginal-rate file (columns such as `MOER`, or `point_time` + `value`, or
      units in lbs/MWh): refused; a marginal rate is not an average intensity and is in
      other units.
    - missing `Datetime (UTC)` or intensity column: refused, listing the columns found.
    - a timestamp that does not parse, or is not on the hour: refused with its row.
    - rows out of order: sorted, with a warning. Exact duplicate rows (same hour, same
      value): dropped, with a warning. The same hour with two different values: refused.
    - a negative value: refused with its row. An empty or NaN value is a missing hour.
    - missing hours (absent rows, or empty/NaN values): runs of at most 3 hours are filled by
      linear interpolation between the neighbouring hours, with a warning; longer runs, or a
      missing first or last hour, are refused (cut the file, or fill it yourself).
    Row numbers in messages count the header as row 1, as a spreadsheet does.
    """
    path = Path(path)
    rows = _read_csv_rows(path)
    header = [h.strip().lstrip("\ufeff") for h in rows[0]]
    _refuse_marginal(path, header)
    if TIME_COLUMN not in header:
        raise TraceError(
            f"{path}: no '{TIME_COLUMN}' column (columns: {header}); expected an Electricity "
            "Maps hourly export"
        )
    ti = header.index(TIME_COLUMN)
    vi = _intensity_column(path, header, column)
    low = [h.lower() for h in header]
    zi = low.index(ZONE_COLUMN.lower()) if ZONE_COLUMN.lower() in low else None
    body = rows[1:]
    if not body:
        raise TraceError(f"{path}: header only, no data rows")

    repairs: list[str] = []
    stamps: list[str] = []
    values = np.empty(len(body), dtype=np.float64)
    for k, row in enumerate(body):
        rowno = k + 2
        if len(row) != len(header):
            raise TraceError(
                f"{path}: row {rowno} has {len(row)} fields, the header has {len(header)}"
            )
        stamps.append(row[ti].strip())
        values[k] = _parse_value(path, rowno, header[vi], row[vi])
    t_s = _parse_hours(path, stamps)
    zone = body[0][zi].strip() if zi is not None and body[0][zi].strip() else path.stem

    order = np.argsort(t_s, kind="stable")
    if np.any(order != np.arange(len(t_s))):
        _repair(path, "rows were not in time order; sorted them", repairs)
        t_s, values, rownos = t_s[order], values[order], order + 2
    else:
        rownos = np.arange(len(t_s)) + 2
    dup = np.flatnonzero(np.diff(t_s) == 0)
    if dup.size:
        a, b = values[dup], values[dup + 1]
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        if not same.all():
            j = dup[~same][0]
            raise TraceError(
                f"{path}: rows {rownos[j]} and {rownos[j + 1]} give the same hour "
                f"{stamps[rownos[j] - 2]} with different values ({a[~same][0]} and "
                f"{b[~same][0]}); keep one and retry"
            )
        keep = np.ones(len(t_s), dtype=bool)
        keep[dup + 1] = False
        _repair(
            path,
            f"dropped {dup.size} exact duplicate row(s) (first: row {rownos[dup[0] + 1]})",
            repairs,
        )
        t_s, values = t_s[keep], values[keep]

    t_s, values = _fill_gaps(path, t_s, values, repairs)
    return CarbonTrace(zone, t_s, values, "average", str(path), tuple(repairs))


def _read_csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except FileNotFoundError as exc:
        raise TraceError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not UTF-8 text (is it a CSV export?)") from exc
    except (OSError, csv.Error) as exc:
        raise TraceError(f"{path}: cannot read ({exc})") from exc
    if not rows:
        raise TraceError(f"{path}: empty file; expected an Electricity Maps hourly CSV")
    return rows


def _refuse_marginal(path: Path, header: list[str]) -> None:
    low = [h.lower() for h in header]
    marginal = any("moer" in h or "lbs" in h or "marginal" in h for h in low) or (
        "point_time" in low and "value" in low
    )
    if marginal:
        raise TraceError(
            f"{path}: looks like a WattTime marginal operating emissions rate file (columns "
            f"{header}); that is a marginal rate in lbs CO2/MWh, not an average intensity in "
            "gCO2eq/kWh. Pass an Electricity Maps hourly export (average intensity), or "
            "convert deliberately (1 lbs/MWh = 0.4536 g/kWh) into that format if you mean "
            "to account marginally"
        )


def _intensity_column(path: Path, header: list[str], column: str) -> int:
    norm = [h.replace("₂", "2") for h in header]
    if column in header:
        return header.index(column)
    if column in norm:
        return norm.index(column)
    for qualifier in _INTENSITY_KINDS.get(column.lower(), ()):
        want = f"carbon intensity gco2eq/kwh ({qualifier})"
        for i, h in enumerate(norm):
            if h.lower() == want:
                return i
    raise TraceError(
        f"{path}: no carbon-intensity column for {column!r} (expected "
        f"'Carbon Intensity gCO₂eq/kWh (direct)' or '(LCA)'; columns: {header})"
    )


def _parse_value(path: Path, rowno: int, col: str, text: str) -> float:
    text = text.strip()
    if text == "" or text.lower() in ("nan", "null", "none", "-"):
        return math.nan
    try:
        v = float(text)
    except ValueError as exc:
        raise TraceError(f"{path}: row {rowno}, column '{col}': {text!r} is not a number") from exc
    if math.isnan(v):
        return v
    if not math.isfinite(v) or v < 0:
        raise TraceError(
            f"{path}: row {rowno}, column '{col}': {text} is not a valid intensity "
            "(must be finite and >= 0 gCO2eq/kWh); fix or remove the row"
        )
    return v


def _parse_hours(path: Path, stamps: list[str]) -> np.ndarray:
    clean = [s.replace("T", " ").rstrip("Z").split(".")[0].split("+")[0] for s in stamps]
    try:
        t = np.array(clean, dtype="datetime64[s]").astype(np.int64)
    except ValueError:
        for k, s in enumerate(clean):
            try:
                np.datetime64(s, "s")
            except ValueError as exc:
                raise TraceError(
                    f"{path}: row {k + 2}, column '{TIME_COLUMN}': {stamps[k]!r} is not a "
                    "timestamp (expected 'YYYY-MM-DD HH:MM:SS', UTC)"
                ) from exc
        raise
    off = np.flatnonzero(t % HOUR_S != 0)
    if off.size:
        k = int(off[0])
        raise TraceError(
            f"{path}: row {k + 2}: {stamps[k]!r} is not the start of an hour; CarbonCP reads "
            "hourly traces (resample to hour starts first)"
        )
    return t


def _fill_gaps(
    path: Path, t_s: np.ndarray, values: np.ndarray, repairs: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    full_t = np.arange(t_s[0], t_s[-1] + HOUR_S, HOUR_S, dtype=np.int64)
    full_v = np.full(len(full_t), np.nan)
    full_v[(t_s - t_s[0]) // HOUR_S] = values
    missing = np.isnan(full_v)
    if not missing.any():
        return full_t, full_v
    if missing[0] or missing[-1]:
        raise TraceError(
            f"{path}: the {'first' if missing[0] else 'last'} hour has no value; cut the file "
            "to start and end on hours with data"
        )
    # Runs of missing hours.
    edges = np.diff(np.concatenate(([0], missing.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int((ends - starts).max())
    if longest > MAX_INTERPOLATED_GAP_H:
        j = int(np.argmax(ends - starts))
        first = np.datetime64(int(full_t[starts[j]]), "s")
        raise TraceError(
            f"{path}: {longest} hours missing from {first} UTC (at most "
            f"{MAX_INTERPOLATED_GAP_H} are interpolated); fill the gap from another source "
            "or cut the trace around it"
        )
    ok = ~missing
    full_v[missing] = np.interp(full_t[missing], full_t[ok], full_v[ok])
    _repair(
        path,
        f"filled {int(missing.sum())} missing hour(s) in {len(starts)} gap(s) of at most "
        f"{longest} h by linear interpolation",
        repairs,
    )
    return full_t, full_v


# --------------------------------------------------------------------------------------------
# Bandwidth
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class BandwidthTrace:
    """Measured throughput (Mbit/s) over irregular intervals, looped in time.

    Row i gives the rate over the interval (t_s[i-1], t_s[i]] (Pensieve's format: the time is
    the interval's END). Time t is read as `t_s[0] + (t mod duration_s)`, so the trace
    repeats every `duration_s = t_s[-1] - t_s[0]` seconds; the first row's rate only holds at
    the loop's seam. Zeros are real outages.
    """

    name: str
    t_s: np.ndarray  # float64 interval end times, seconds from the trace's start
    mbps: np.ndarray  # float64, >= 0
    source: str = ""
    repairs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def duration_s(self) -> float:
        return float(self.t_s[-1] - self.t_s[0])

    def at(self, t_s: float) -> float:
        """Rate at time t (looped: t is taken modulo `duration_s`)."""
        tt = float(self.t_s[0]) + (t_s % self.duration_s)
        i = int(np.searchsorted(self.t_s, tt, side="left"))
        return float(self.mbps[min(i, len(self.mbps) - 1)])

    def at_array(self, t_s: np.ndarray) -> np.ndarray:
        """Vectorised `at`."""
        tt = self.t_s[0] + np.mod(np.asarray(t_s, dtype=np.float64), self.duration_s)
        i = np.searchsorted(self.t_s, tt, side="left")
        return self.mbps[np.minimum(i, len(self.mbps) - 1)]


def load_bandwidth_trace(path: str | Path) -> BandwidthTrace:
    """Read a throughput trace in Pensieve's format: `time_s  Mbit/s` per line.

    Rules (docs/TRACES.md):
    - two whitespace-separated numbers per line; blank lines and lines starting with '#'
      are skipped. Anything else is refused with its line number.
    - unreadable, empty, or fewer than two rows (no duration): refused.
    - a rate written as `nan` or `-` is a missing measurement and is read as an outage (0),
      with a warning; zeros are real outages, kept as they are.
    - a negative or infinite rate, or a negative time: refused with its line.
    - an exact duplicate line (same time and rate) directly repeated: dropped, with a warning.
      Times that do not strictly increase otherwise: refused (the rates are intervals ending
      at each time, so reordering would change their meaning).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TraceError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not UTF-8 text; expected two columns 'time_s Mbit/s'") from exc
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from exc
    repairs: list[str] = []
    times: list[float] = []
    rates: list[float] = []
    lines: list[int] = []
    n_missing = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TraceError(
                f"{path}: line {lineno} has {len(parts)} fields; expected two "
                "(time_s and Mbit/s, whitespace-separated)"
            )
        try:
            t = float(parts[0])
        except ValueError as exc:
            raise TraceError(f"{path}: line {lineno}: time {parts[0]!r} is not a number") from exc
        if parts[1].lower() in ("nan", "-"):
            r = 0.0
            n_missing += 1
        else:
            try:
                r = float(parts[1])
            except ValueError as exc:
                raise TraceError(
                    f"{path}: line {lineno}: rate {parts[1]!r} is not a number (Mbit/s)"
                ) from exc
            if not math.isfinite(r) or r < 0:
                raise TraceError(
                    f"{path}: line {lineno}: rate {parts[1]} Mbit/s is invalid (must be finite "
                    "and >= 0; write 0 for an outage)"
                )
        if not math.isfinite(t) or t < 0:
            raise TraceError(f"{path}: line {lineno}: time {parts[0]} must be finite and >= 0")
        if times and t <= times[-1]:
            if t == times[-1] and r == rates[-1]:
                repairs.append(f"dropped duplicate line {lineno}")
                continue
            raise TraceError(
                f"{path}: line {lineno}: time {t} does not increase (previous {times[-1]} on "
                f"line {lines[-1]}); the times must be strictly increasing interval ends"
            )
        times.append(t)
        rates.append(r)
        lines.append(lineno)
    if not times:
        raise TraceError(f"{path}: empty trace; expected lines 'time_s Mbit/s'")
    if len(times) < 2:
        raise TraceError(f"{path}: only one row; a trace needs at least two to have a duration")
    if repairs:
        n = len(repairs)
        repairs = [f"dropped {n} exact duplicate line(s) ({repairs[0]})"]
        warnings.warn(f"{path}: {repairs[0]}", TraceRepairWarning, stacklevel=2)
    if n_missing:
        _repair(
            path, f"read {n_missing} missing rate(s) ('nan' or '-') as outages (0 Mbit/s)", repairs
        )
    return BandwidthTrace(
        path.name,
        np.asarray(times, dtype=np.float64),
        np.asarray(rates, dtype=np.float64),
        str(path),
        tuple(repairs),
    )


# --------------------------------------------------------------------------------------------
# Shipped slices (runtime/data/README.md has their sources and licences)
# --------------------------------------------------------------------------------------------


def shipped_carbon_zones() -> list[str]:
    return sorted(p.name.split("_")[0] for p in (DATA_DIR / "carbon").glob("*.csv"))


def shipped_carbon_path(zone: str) -> Path:
    """The shipped 8-week Electricity Maps slice of a zone ('DE-LU', 'GB', 'US-CAL-CISO')."""
    hits = sorted((DATA_DIR / "carbon").glob(f"{zone}_*.csv"))
    if not hits:
        raise TraceError(
            f"no shipped carbon trace for zone {zone!r}; shipped: {shipped_carbon_zones()} "
            "(pass your own Electricity Maps CSV instead)"
        )
    return hits[0]


def shipped_bandwidth_names() -> list[str]:
    return sorted(
        p.name for p in (DATA_DIR / "bandwidth").iterdir() if p.is_file() and p.suffix != ".md"
    )


def shipped_bandwidth_path(name: str) -> Path:
    """A shipped bandwidth trace by file name (e.g. 'norway_bus_1')."""
    path = DATA_DIR / "bandwidth" / name
    if not path.is_file() or name not in shipped_bandwidth_names():
        raise TraceError(
            f"no shipped bandwidth trace {name!r}; shipped: {shipped_bandwidth_names()} "
            "(pass a path to your own trace instead)"
        )
    return path
