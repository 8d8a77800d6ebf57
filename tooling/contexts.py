"""Contexts from real traces (docs/METHOD.md §2, §9): what happened, and what the device could know.

`build_replay` places inference events on the carbon traces' common period and gives each
event a TRUE context (what the costs and the oracle label use) and a SEEN context x̂ (what
the device knows when it decides). The processes, and the only ways x̂ differs from x
(docs/TRACES.md, "Replay"; the parameters named below are the fields of `ReplayProcesses`):

- Event times: `events_per_hour` events per hour, uniform within the hour, sorted.
- Grid carbon (both sides): true = the hourly value of the hour containing t (step-hold);
  seen = the last carbon message, published `carbon_lag_s` after each hour starts, so during
  the first `carbon_lag_s` of an hour the device still holds the previous hour's value.
- Bandwidth: the trace is looped over the carbon period. An event at wall time t reads the
  trace at position `(t - start) + offset[day]` (modulo the trace's duration), with one
  random offset per UTC day: within a day the link advances with wall time; each day starts
  somewhere else in the trace. True (the rate at the moment of sending, `tx_mbps`) = the
  trace at that position. Seen = an EWMA (weight `ewma_beta` on the newest) of the rates the
  device measured on its previous `ewma_samples` transfers, made every `inference_period_s`
  seconds before the event (the trace at position - k * period, k = 1..K).
- RTT: true = `rtt_ms` * lognormal(0, `rtt_sigma`) per event; seen = the process mean (what
  an EWMA of past RTT samples converges to).
- Device load u: diurnal curve (peak at 14:00 device-local time) plus AR(1) noise in event
  time (correlation time `load_tau_s`), clipped to [0, 1]; seen = true + N(0, `load_noise`)
  clipped (a /proc sample over the last second differs from the load during the inference).
  Server load v: the same process (its own curve, peak 15:00 server-local), seen likewise
  (the server's last heartbeat).
- Battery: SoC on a one-minute grid; discharges at the device's mean power (idle plus the
  duty cycle of local inference every `inference_period_s`), floored at 5% (the device
  stops running inferences there); recharges at `charge_mw` between `charge_start_h` and
  `charge_end_h` device-local time, up to 100%. Seen = true rounded to 1% (fuel gauge).
- Device intensity (`device_intensity`): "live" (default) puts the device zone's live value
  in I_d, the proxy of docs/METHOD.md §3; "charging" puts the intensity of the grid that charged the
  battery: the live value while on the charger, otherwise the mean over the most recent
  charging window (known to the device, so seen = true).
Everything is seeded by `seed`. The costs and the label come from the true context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from carboncp.runtime.decision.context import CONTEXT_FIELDS
from carboncp.runtime.decision.costs import CostModel, Costs
from carboncp.runtime.errors import TraceError
from carboncp.runtime.signals.traces import HOUR_S, BandwidthTrace, CarbonTrace

DAY_S = 86400
BW_FLOOR_MBPS = 1e-3  # log-bandwidth residuals treat rates below this (outages) as this
SPLITS = ("train", "cal", "test")
_B, _RTT, _U, _V, _ID, _IS, _BAT = range(7)


@dataclass(eq=False)  # holds arrays
class Replay:
    """A chronological sequence of inference events with true and seen contexts."""

    t_s: np.ndarray  # (N,) event times, epoch seconds
    x_true: np.ndarray  # (N, 7) CONTEXT_FIELDS; bandwidth = the realised rate tx_mbps
    x_seen: np.ndarray  # (N, 7) what the device knows at decision time
    tx_mbps: np.ndarray  # (N,) realised rate at the moment of sending
    costs: Costs  # realised costs of every partition under x_true
    label: np.ndarray  # (N,) oracle partition under the true context
    splits: dict[str, np.ndarray]  # 'train', 'cal', 'test' index arrays, chronological
    meta: dict[str, Any] = field(default_factory=dict)
    bandwidth_pos_s: np.ndarray | None = None  # (N,) where in the looped trace each event read
    # (N,) the mixture component of each event (tooling/mixture.py); None for one replay
    component: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.t_s)

    def _idx(self, split: str | np.ndarray | None) -> np.ndarray | slice:
        if split is None:
            return slice(None)
        if isinstance(split, str):
            if split not in self.splits:
                raise KeyError(f"no split {split!r}; splits: {sorted(self.splits)}")
            return self.splits[split]
        return np.asarray(split)

    def bandwidth_log_residuals(self, split: str | np.ndarray | None = "cal") -> np.ndarray:
        """log(realised) - log(seen) bandwidth (natural log; rates floored at 1e-3 Mbit/s)."""
        i = self._idx(split)
        tx = np.maximum(self.tx_mbps[i], BW_FLOOR_MBPS)
        seen = np.maximum(self.x_seen[i, _B], BW_FLOOR_MBPS)
        return np.log(tx) - np.log(seen)

    def latency_residuals_ms(
        self, split: str | np.ndarray | None, cost_model: CostModel
    ) -> np.ndarray:
        """(n, P+1): realised latency minus the latency predicted at the seen context."""
        i = self._idx(split)
        predicted = cost_model.evaluate(self.x_seen[i]).latency_ms
        return self.costs.latency_ms[i] - predicted


@dataclass(frozen=True)
class ReplayProcesses:
    """The parameters of the replay's processes (module docstring); `asdict` is its metadata."""

    carbon_lag_s: float = 900.0
    inference_period_s: float = 1.0
    ewma_beta: float = 0.5
    ewma_samples: int = 8
    rtt_ms: float = 20.0
    rtt_sigma: float = 0.25
    load_tau_s: float = 1800.0
    load_sigma: float = 0.15
    load_noise: float = 0.05
    device_utc_offset_h: float = 0.0
    server_utc_offset_h: float = 0.0
    charge_start_h: float = 22.0
    charge_end_h: float = 6.0
    charge_mw: float = 10000.0
    device_intensity: str = "live"

    @property
    def charge_window_utc_h(self) -> tuple[float, float]:
        """The device's charging window (start, end) in UTC hours."""
        return (
            self.charge_start_h - self.device_utc_offset_h,
            self.charge_end_h - self.device_utc_offset_h,
        )


def build_replay(
    device: CarbonTrace,
    server: CarbonTrace,
    bandwidth: BandwidthTrace,
    cost_model: CostModel,
    *,
    events_per_hour: int = 12,
    start_s: float | None = None,
    end_s: float | None = None,
    split: tuple[float, float, float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    processes: ReplayProcesses | None = None,
) -> Replay:
    """Replay the carbon traces' common period (or [start_s, end_s)) as inference events.

    See the module docstring for every process; `processes` sets their parameters (default
    `ReplayProcesses()`). `split` gives the chronological fractions of train / calibration /
    test. Raises TraceError when the traces share no period.
    """
    pr = ReplayProcesses() if processes is None else processes
    _check_arguments(events_per_hour, split, pr)
    t0, t1 = _common_period(device, server, start_s, end_s)
    # One generator, drawn in a fixed order (times, link offsets, RTT, loads): the seed
    # alone fixes the replay.
    rng = np.random.default_rng(seed)
    t = _event_times(rng, t0, t1, events_per_hour)
    n = len(t)
    i_d, i_s, i_d_seen, i_s_seen = _carbon(device, server, t, pr)
    pos, tx, bw_seen = _bandwidth(bandwidth, rng, t, t0, pr)
    rtt = pr.rtt_ms * np.exp(rng.normal(0.0, pr.rtt_sigma, n))
    rtt_seen = np.full(n, pr.rtt_ms * np.exp(0.5 * pr.rtt_sigma**2))
    u, v, u_seen, v_seen = _loads(rng, t, pr)
    soc, mean_mw = _battery_soc(cost_model.profile, t, t0, pr)
    soc_seen = np.round(soc)

    x_true = np.column_stack([tx, rtt, u, v, i_d, i_s, soc])
    x_seen = np.column_stack([bw_seen, rtt_seen, u_seen, v_seen, i_d_seen, i_s_seen, soc_seen])
    costs = cost_model.evaluate(x_true)
    label = cost_model.oracle(costs)
    cuts = np.round(np.cumsum(split)[:2] * n).astype(int)
    splits = dict(zip(SPLITS, np.split(np.arange(n), cuts), strict=True))
    meta = {
        "device_trace": device.source or device.zone,
        "device_zone": device.zone,
        "server_trace": server.source or server.zone,
        "server_zone": server.zone,
        "bandwidth_trace": bandwidth.source or bandwidth.name,
        "bandwidth_duration_s": bandwidth.duration_s,
        "period_s": [int(t0), int(t1)],
        "n_events": n,
        "events_per_hour": events_per_hour,
        "looping": "bandwidth position = (t - start) + per-day uniform offset, modulo duration",
        "seed": seed,
        "split": list(split),
        "processes": {**asdict(pr), "battery_mean_draw_mw": mean_mw},
        "fields": list(CONTEXT_FIELDS),
    }
    return Replay(t, x_true, x_seen, tx, costs, label, splits, meta, pos)


def _check_arguments(
    events_per_hour: int, split: tuple[float, float, float], pr: ReplayProcesses
) -> None:
    """ValueError for an argument the replay cannot use."""
    if events_per_hour < 1:
        raise ValueError("events_per_hour must be >= 1")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-9:
        raise ValueError(f"split must be three fractions summing to 1, got {split}")
    if not 0 < pr.ewma_beta <= 1 or pr.ewma_samples < 1:
        raise ValueError("ewma_beta must be in (0, 1] and ewma_samples >= 1")


def _common_period(
    device: CarbonTrace, server: CarbonTrace, start_s: float | None, end_s: float | None
) -> tuple[int, int]:
    """[t0, t1): the period both carbon traces cover, cut to [start_s, end_s)."""
    t0 = max(device.start_s, server.start_s)
    t1 = min(device.end_s, server.end_s)
    if start_s is not None:
        t0 = max(t0, int(start_s // HOUR_S * HOUR_S))
    if end_s is not None:
        t1 = min(t1, int(end_s))
    if t1 - t0 < HOUR_S:
        raise TraceError(
            f"device trace {device.source or device.zone} [{device.start_s}, {device.end_s}) and "
            f"server trace {server.source or server.zone} [{server.start_s}, {server.end_s}) "
            f"share less than one hour within the requested period; use traces that overlap "
            f"in time"
        )
    return t0, t1


def _event_times(
    rng: np.random.Generator, t0: float, t1: float, events_per_hour: int
) -> np.ndarray:
    """`events_per_hour` times uniform within each whole hour of [t0, t1), sorted."""
    hours = np.arange(t0, t1 - HOUR_S + 1, HOUR_S, dtype=np.float64)
    t = (hours[:, None] + rng.uniform(0, HOUR_S, (len(hours), events_per_hour))).ravel()
    t.sort()
    return t


def _carbon(
    device: CarbonTrace, server: CarbonTrace, t: np.ndarray, pr: ReplayProcesses
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(I_d, I_s, seen I_d, seen I_s): true = this hour's value; seen = the last message
    (lagged by carbon_lag_s)."""
    i_d, i_s = device.at_array(t), server.at_array(t)
    i_d_seen = device.at_array(np.maximum(t - pr.carbon_lag_s, device.start_s))
    if pr.device_intensity == "charging":
        i_d = i_d_seen = _charging_intensity(device, t, *pr.charge_window_utc_h)
    elif pr.device_intensity != "live":
        raise ValueError(
            f"device_intensity must be 'live' or 'charging', got {pr.device_intensity!r}"
        )
    i_s_seen = server.at_array(np.maximum(t - pr.carbon_lag_s, server.start_s))
    return i_d, i_s, i_d_seen, i_s_seen


def _bandwidth(
    trace: BandwidthTrace, rng: np.random.Generator, t: np.ndarray, t0: float, pr: ReplayProcesses
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position in the looped trace, realised rate, seen EWMA rate); one offset per day."""
    day = ((t - t0) // DAY_S).astype(np.int64)
    offsets = rng.uniform(0, trace.duration_s, day.max() + 1)
    pos = (t - t0) + offsets[day]
    tx = trace.at_array(pos)
    k = np.arange(1, pr.ewma_samples + 1, dtype=np.float64)
    w = pr.ewma_beta * (1 - pr.ewma_beta) ** (k - 1)
    w /= w.sum()
    past = trace.at_array(pos[:, None] - k[None, :] * pr.inference_period_s)
    return pos, tx, past @ w


def _loads(
    rng: np.random.Generator, t: np.ndarray, pr: ReplayProcesses
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, seen u, seen v): device and server load, seen with sampling noise."""
    n = len(t)
    u = _load(t, rng, 0.30, 0.20, 14.0 - pr.device_utc_offset_h, pr.load_tau_s, pr.load_sigma)
    v = _load(t, rng, 0.40, 0.20, 15.0 - pr.server_utc_offset_h, pr.load_tau_s, pr.load_sigma)
    u_seen = np.clip(u + rng.normal(0, pr.load_noise, n), 0, 1)
    v_seen = np.clip(v + rng.normal(0, pr.load_noise, n), 0, 1)
    return u, v, u_seen, v_seen


def _battery_soc(
    prof: Any, t: np.ndarray, t0: float, pr: ReplayProcesses
) -> tuple[np.ndarray, float]:
    """(SoC % at each event, the mean draw in mW): idle plus the duty cycle of local inference."""
    duty = min(1.0, float(prof.device_ms[-1]) / (1000.0 * pr.inference_period_s))
    mean_mw = prof.p_idle_mw + duty * (prof.p_active_mw - prof.p_idle_mw)
    soc = _battery(t, t0, mean_mw, pr.charge_mw, prof.battery_wh, *pr.charge_window_utc_h)
    return soc, mean_mw


def _charging_intensity(
    trace: CarbonTrace, t: np.ndarray, start_utc_h: float, end_utc_h: float
) -> np.ndarray:
    """Intensity of the grid that charged the battery: while on the charger, the live value;
    otherwise the mean over the most recent charging window (hours whose start lies in it)."""
    hours = trace.t_s.astype(np.float64)
    h_of_day = ((hours % DAY_S) / HOUR_S - start_utc_h) % 24.0
    length = (end_utc_h - start_utc_h) % 24.0
    in_window = h_of_day < length
    # Number each window by the time its (most recent) start; average the hours per window.
    win_id = np.floor((hours - start_utc_h * HOUR_S) / DAY_S).astype(np.int64)
    ids = win_id[in_window]
    uniq, inv = np.unique(ids, return_inverse=True)
    means = np.bincount(inv, weights=trace.gco2_per_kwh[in_window]) / np.bincount(inv)
    t_id = np.floor((t - start_utc_h * HOUR_S) / DAY_S).astype(np.int64)
    t_in = (((t % DAY_S) / HOUR_S - start_utc_h) % 24.0) < length
    # Off the charger: the window that started most recently (same id: it already ended).
    j = np.clip(np.searchsorted(uniq, t_id, side="right") - 1, 0, len(uniq) - 1)
    return np.where(t_in, trace.at_array(t), means[j])


def _load(
    t: np.ndarray,
    rng: np.random.Generator,
    mean: float,
    amp: float,
    peak_utc_h: float,
    tau_s: float,
    sigma: float,
) -> np.ndarray:
    """Diurnal load + AR(1) noise in event time (stationary sd sigma), clipped to [0, 1]."""
    hour = (t % DAY_S) / HOUR_S
    base = mean + amp * np.cos(2 * np.pi * (hour - peak_utc_h) / 24.0)
    phi = np.exp(-np.diff(t, prepend=t[0]) / tau_s)
    eps = rng.normal(0.0, 1.0, len(t))
    noise = np.empty(len(t))
    prev = eps[0] * sigma
    innov = sigma * np.sqrt(1.0 - phi**2)
    for i in range(len(t)):  # a recurrence; 20k events take a few ms
        prev = phi[i] * prev + innov[i] * eps[i] if i else prev
        noise[i] = prev
    return np.clip(base + noise, 0.0, 1.0)


def _battery(
    t: np.ndarray,
    t0: float,
    draw_mw: float,
    charge_mw: float,
    battery_wh: float,
    start_utc_h: float,
    end_utc_h: float,
) -> np.ndarray:
    """SoC (%) at times t: one-minute steps of discharge, or charge inside the window."""
    grid = np.arange(t0, t[-1] + 120.0, 60.0)
    hour = ((grid % DAY_S) / HOUR_S - start_utc_h) % 24.0
    charging = hour < ((end_utc_h - start_utc_h) % 24.0)
    per_min = 100.0 * 60.0 / (3600.0 * battery_wh * 1000.0)  # percent per (mW * minute)
    down, up = draw_mw * per_min, max(charge_mw - draw_mw, 0.0) * per_min
    soc = np.empty(len(grid))
    s = 100.0
    for i, c in enumerate(charging.tolist()):
        soc[i] = s
        s = min(100.0, s + up) if c else max(5.0, s - down)
    return np.interp(t, grid, soc)
