"""The device loop: read the context, decide, run the head, offload, fall back, record.

For each input (docs/METHOD.md §2-3, §7):
1. the context the device sees: bandwidth and RTT from the estimator, device load from
   /proc, server load from the last answer, carbon of both zones from the MQTT subscriber,
   battery from the power source's state of charge (or a modelled battery);
2. the policy decides a partition p (a failing policy means local execution, flagged);
3. the head runs on the device (p >= 1), then partition p's wire tensor goes to the server
   within the transfer deadline; p = P needs no server;
4. on any OffloadError the device finishes locally (its own tail if it has one, else the
   full model on the original input) and the wasted radio time is counted: every input gets
   an answer;
5. the realised context is fed back to the policy (online recalibration) and one JSON line
   is written: time, partition, set, context seen and realised, latency, device energy
   (measured by the EnergyMeter, or modelled and flagged), the cost model's estimate of the
   inference on the realised context (carbon, energy, latency, battery), fallbacks taken.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import IO, Any, Protocol

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.artifacts.runners import Runner
from carboncp.runtime.decision.context import Context, Decision, Policy, context_to_row
from carboncp.runtime.decision.costs import CostModel
from carboncp.runtime.decision.probe_value import ProbeValue, probe_value, stale_factors
from carboncp.runtime.errors import OffloadError
from carboncp.runtime.link.offload import (
    PROBE_BYTES,
    OffloadClient,
    OffloadFailed,
    OffloadResult,
)
from carboncp.runtime.power.base import PowerReading, PowerSource
from carboncp.runtime.power.meter import EnergyMeasurement
from carboncp.runtime.signals.bandwidth import (
    DEFAULT_PROBE_BACKOFF_MAX_S,
    BandwidthEstimator,
    ProbeOutcome,
)
from carboncp.runtime.signals.load import LoadSampler

ABANDON_KINDS = ("timeout", "abandoned")


class CarbonSource(Protocol):
    """Where the loop reads a zone's intensity (the MQTT subscriber, or fixed values)."""

    def current(self, zone: str) -> Any: ...


class Meter(Protocol):
    """The device's energy meter (runtime/power/meter.py: EnergyMeter)."""

    def latest(self) -> PowerReading | None: ...

    def energy_j(
        self, t0_s: float, t1_s: float, *, modelled_j: float | None = None
    ) -> EnergyMeasurement: ...


class StaticCarbon:
    """Fixed intensities per zone: the documented stand-in when no broker is configured."""

    def __init__(self, values: dict[str, float]):
        self.values = dict(values)

    def current(self, zone: str) -> Any:
        return _CarbonNow(float(self.values[zone]), 0.0, "static")


@dataclass(frozen=True)
class _CarbonNow:
    gco2_per_kwh: float
    age_s: float
    state: str


@dataclass
class LoopConfig:
    mode: str = "A"
    deadline_ms: float = 300.0
    device_zone: str = "device"
    server_zone: str = "server"
    carbon_fallback_gco2_per_kwh: float = 400.0  # when a zone has no usable value at all
    battery_pct: float = 100.0  # starting charge of the modelled battery (no soc_pct source)
    # Active probe when no transfer or probe measured the link for this long (None: never;
    # `carboncp run` defaults to 10 s); each probe doubles the wait, up to
    # probe_backoff_max_s, until a transfer succeeds (runtime/signals/bandwidth.py).
    probe_after_s: float | None = None
    probe_backoff_max_s: float = DEFAULT_PROBE_BACKOFF_MAX_S
    p_idle_mw: float | None = None  # probe energy; defaults to the profile's idle power
    # Probe only when the measurement can pay for itself: its value to the decisions it
    # informs (mode A's residual quantiles, the cost model) exceeds its own cost
    # (runtime/decision/probe_value.py). Off: every due probe runs.
    probe_gate: bool = True


@dataclass
class InferenceRecord:
    i: int
    time_unix: float
    partition: int
    candidates: list[int]
    mode: str
    cell: int | None
    decision_flags: list[str]
    seen: dict[str, float]
    realised: dict[str, float]
    latency_ms: float
    phases_ms: dict[str, float]
    offloaded: bool
    fallbacks: list[str]
    wasted_ms: float
    offload: dict[str, Any] | None
    energy_j: float | None
    energy_flags: list[str]
    battery_pct: float
    battery_source: str
    carbon_state: dict[str, str]
    model: dict[str, float] | None
    carbon_g: float | None
    true_bandwidth_mbps: float | None = None
    # carbon messages refused so far, per reason (docs/FAULTS.md); {} when none or no broker
    carbon_refused: dict[str, int] = field(default_factory=dict)
    # the bandwidth probe run before this decision, if one ran: bytes, ms, energy_j (counted
    # in energy_j, model and carbon_g), bandwidth_mbps and rtt_ms measured (None if it failed),
    # error, next_after_s (its backoff), route ("private" | "infer" | "none": how the server
    # was probed, docs/METHOD.md §2.1)
    probe: dict[str, Any] | None = None
    # a probe that was due but not worth its cost: value_j, cost_j, informs, worth (the gate,
    # runtime/decision/probe_value.py); None when no probe was due or the gate did not apply
    probe_skipped: dict[str, Any] | None = None
    output: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("output")
        return json.dumps(_finite_json(d), allow_nan=False)


J_PER_KWH = 3.6e6


@dataclass
class _Times:
    start: float  # perf_counter at the start
    start_mono: float  # monotonic at the start (the power meter's clock)
    wall: float
    decided: float = 0.0


@dataclass
class _Run:
    """What executing one decision produced."""

    decision: Decision
    probe: ProbeOutcome | None = None
    fallbacks: list[str] = field(default_factory=list)
    result: OffloadResult | None = None
    output: np.ndarray | None = None
    wasted_s: float = 0.0
    latency_ms: float = 0.0


@dataclass
class _Accounts:
    model: dict[str, float] | None
    energy_j: float | None
    energy_flags: list[str]
    battery_pct: float
    battery_source: str
    carbon_g: float | None


def _offload_summary(result: OffloadResult) -> dict[str, Any]:
    return {
        "bytes": result.bytes_sent,
        "wire_dtype": result.wire_dtype,
        "rtt_ms": result.rtt_ms,
        "send_ms": result.send_ms,
        "total_ms": result.total_ms,
        # None where the server reports no time (a stock Open Inference Protocol server)
        "server_ms": result.server_ms if result.link_measure == "server_ms" else None,
        "upload_ms": result.upload_ms,
        "bandwidth_mbps": result.bandwidth_mbps,
        "link_measure": result.link_measure,  # "server_ms" | "upload" (docs/METHOD.md §2.1)
    }


class DeviceLoop:
    """One device's decide-run-offload loop over a bundle."""

    def __init__(
        self,
        bundle: Bundle,
        policy: Policy,
        head_runner: Runner,
        client: OffloadClient | None = None,
        carbon: CarbonSource | None = None,
        estimator: BandwidthEstimator | None = None,
        config: LoopConfig | None = None,
        cost_model: CostModel | None = None,
        meter: Meter | None = None,
        power_source: PowerSource | None = None,
        tail_runner: Runner | None = None,
        load: Callable[[], float] | None = None,
        log: IO[str] | None = None,
        true_bandwidth: Callable[[], float] | None = None,
    ):
        self.bundle = bundle
        self.P = bundle.last
        self.policy = policy
        self.head = head_runner
        self.client = client
        self.carbon = carbon
        self.estimator = estimator or BandwidthEstimator()
        self.cfg = config or LoopConfig()
        self.cost_model = cost_model
        self.meter = meter
        self.power_source = power_source
        self.tail = tail_runner
        self.load = load or LoadSampler()
        self.log = log
        self.true_bandwidth = true_bandwidth or (
            client.shaper.bandwidth_mbps if client is not None and client.shaper else None
        )
        self.server_load = 0.0
        self.battery_pct = float(self.cfg.battery_pct)
        self.count = 0
        self.counters: dict[str, int] = {"offloaded": 0, "local": 0, "fallback": 0}
        self._carbon_last: dict[str, float] = {}
        self._faults: list[str] = []  # this inference's guarded faults (decision_flags)
        self.faults: dict[str, int] = {}  # counts per part over the run
        self._last_arrival: float | None = None  # estimator clock at the last inference
        self._gap_s: float | None = None  # EWMA of the gaps between inferences

    def _guard(self, part: str, fn: Callable[[], Any], default: Any) -> Any:
        """fn(), or `default` when it raises: a faulty load sampler, meter, cost model, probe
        or bandwidth oracle degrades the record (flagged '<part>_error:<Type>'), never the
        answer."""
        try:
            return fn()
        except Exception as exc:
            self._faults.append(f"{part}_error:{type(exc).__name__}")
            self.faults[part] = self.faults.get(part, 0) + 1
            return default

    # -- context ------------------------------------------------------------------------
    def _carbon(self, zone: str) -> tuple[float, str]:
        if self.carbon is None:
            return self.cfg.carbon_fallback_gco2_per_kwh, "no_broker"
        try:
            cv = self.carbon.current(zone)
            val = float(cv.gco2_per_kwh)
            if math.isfinite(val) and val >= 0:
                self._carbon_last[zone] = val
                return val, str(getattr(cv, "state", "ok"))
        except Exception:  # a signal fault must never stop inference
            pass
        if zone in self._carbon_last:
            return self._carbon_last[zone], "last_good"
        return self.cfg.carbon_fallback_gco2_per_kwh, "fallback"

    def _battery(self) -> tuple[float, str]:
        reading = None
        if self.meter is not None:
            reading = self._guard("meter", self.meter.latest, None)
        soc = getattr(reading, "soc_pct", None)
        if isinstance(soc, (int, float)) and math.isfinite(soc):
            return float(soc), "measured"
        return self.battery_pct, "modelled"

    def _device_load(self) -> float:
        u = float(self.load())
        if not math.isfinite(u):
            raise ValueError(f"device load {u}")
        return min(1.0, max(0.0, u))

    def read_context(self) -> tuple[Context, dict[str, str]]:
        est = self.estimator.estimate()
        i_d, s_d = self._carbon(self.cfg.device_zone)
        i_s, s_s = self._carbon(self.cfg.server_zone)
        bat, _ = self._battery()
        ctx = Context(
            bandwidth_mbps=est.bandwidth_mbps,
            rtt_ms=est.rtt_ms,
            device_load=self._guard("load", self._device_load, 0.0),
            server_load=self.server_load,
            device_gco2_per_kwh=i_d,
            server_gco2_per_kwh=i_s,
            battery_pct=bat,
        )
        return ctx, {self.cfg.device_zone: s_d, self.cfg.server_zone: s_s}

    # -- one inference ------------------------------------------------------------------
    def infer(self, x: np.ndarray) -> InferenceRecord:
        """Decide, execute, account and record one inference; always answers (see
        docs/FAULTS.md): a failed offload finishes locally, a failed head goes to the server."""
        t = _Times(time.perf_counter(), time.monotonic(), time.time())
        self._faults = []
        self._note_arrival()
        seen, carbon_state = self.read_context()
        t_probe = time.perf_counter()
        probe, skipped = self._maybe_probe(seen)
        probe_ms = 0.0 if probe is None else (time.perf_counter() - t_probe) * 1000.0
        if probe is not None:  # decide at what the probe measured
            est = self.estimator.estimate()
            seen = replace(seen, bandwidth_mbps=est.bandwidth_mbps, rtt_ms=est.rtt_ms)
        decision = self._decide(seen)
        t.decided = time.perf_counter()
        phases = {"context_decide": (t.decided - t.start) * 1000.0 - probe_ms}
        if probe is not None:
            phases["probe"] = probe_ms  # also in the record's "probe" and estimator.probe_cost
        true_bw = (
            self._guard("true_bandwidth", self.true_bandwidth, None)
            if self.true_bandwidth is not None
            else None
        )
        run = self._execute(x, decision, t, phases)
        run.probe = probe
        realised = self._realised(seen, run.result, true_bw)
        acct = self._account(run, seen, realised, t.start_mono, phases)
        try:
            self.policy.observe(run.decision, seen, realised)
        except Exception:
            d = run.decision
            run.decision = Decision(
                d.partition, d.candidates, d.mode, d.cell, (*d.flags, "observe_error")
            )
        rec = self._record(run, seen, realised, acct, carbon_state, phases, t, true_bw)
        rec.probe_skipped = None if skipped is None else skipped.to_record()
        self.count += 1
        if self.log is not None:
            self.log.write(rec.to_json() + "\n")
            self.log.flush()
        return rec

    # -- decide ---------------------------------------------------------------------------
    def _maybe_probe(self, seen: Context) -> tuple[ProbeOutcome | None, ProbeValue | None]:
        """Probe the link when no transfer or probe has measured it for the probe interval
        (probe_after_s, doubling per probe until a transfer succeeds) and the gate finds the
        measurement worth its cost (`_probe_gate`; a probe it refuses is returned second).
        The probe waits no longer than a transfer would (the deadline, at most 2 s); its
        energy is the board's idle power plus the radio's at the rate it measured (the
        estimate's when it failed)."""
        if self.client is None or self.cfg.probe_after_s is None:
            return None, None
        if getattr(self.client, "probe_route", None) == "none":  # the server cannot be probed
            return None, None
        client, after_s, max_s = self.client, self.cfg.probe_after_s, self.cfg.probe_backoff_max_s
        if not self.estimator.probe_due(after_s, max_s):
            return None, None
        timeout_s = max(1e-3, min(2.0, self.cfg.deadline_ms / 1000.0))
        gate = self._guard("probe_gate", lambda: self._probe_gate(seen, timeout_s), None)
        if gate is not None and not gate.worth:
            return None, gate
        outcome = self._guard(
            "probe",
            lambda: self.estimator.maybe_probe(
                lambda: client.probe(timeout_s=timeout_s), after_s, self._probe_power_mw, max_s
            ),
            None,
        )
        if not isinstance(outcome, ProbeOutcome):
            return None, None
        return replace(outcome, route=getattr(client, "probe_route", None)), None

    def _probe_gate(self, seen: Context, timeout_s: float) -> ProbeValue | None:
        """The probe's value against its cost, where the loop can price both: a cost model,
        a policy with a link belief (mode A's residual quantiles) and a link measured at
        least once (the first measurement is always taken). None: probe as scheduled."""
        residuals = getattr(self.policy, "residuals", None)
        if (
            not self.cfg.probe_gate
            or self.cost_model is None
            or residuals is None
            or not self.estimator.measured
        ):
            return None
        est = self.estimator.estimate()
        if est.censored:  # the estimate rests on failed transfers (a stall, an outage): no
            return None  # belief to price a probe with; the schedule and its backoff decide
        # one measurement informs the inferences until the next probe would be due
        after_s = self.cfg.probe_after_s or 0.0
        informs = 1.0 if self._gap_s is None else after_s / max(self._gap_s, 1e-3)
        factors, lower = residuals.factors, residuals.lower_factor
        history = self.estimator.history_mbps
        if est.window == 0 and len(history) >= 2:
            # a stale estimate (nothing measured within the estimator's window): the link
            # may be anywhere it has been, so the belief is the spread of its measured rates
            factors, lower = stale_factors(history, seen.bandwidth_mbps, len(factors))
        return probe_value(
            self.cost_model,
            context_to_row(seen),
            factors,
            lower,
            PROBE_BYTES,
            informs,
            timeout_s,
        )

    def _note_arrival(self) -> None:
        """Track the gap between inferences (an EWMA on the estimator's clock): how many
        decisions one link measurement informs."""
        now = self.estimator.now()
        if self._last_arrival is not None:
            gap = max(0.0, now - self._last_arrival)
            self._gap_s = gap if self._gap_s is None else 0.8 * self._gap_s + 0.2 * gap
        self._last_arrival = now

    def _probe_power_mw(self, bandwidth_mbps: float | None) -> float:
        """Board power while probing: idle (p_idle_mw, else the profile's) plus the radio's at
        the rate measured (the current estimate when the probe measured none)."""
        prof = getattr(self.cost_model, "profile", None)
        p_idle = float(self.cfg.p_idle_mw or getattr(prof, "p_idle_mw", 0.0) or 0.0)
        if self.cost_model is None:
            return p_idle
        bw = bandwidth_mbps
        if bw is None or not math.isfinite(bw):
            bw = self.estimator.bandwidth_mbps
        return p_idle + float(self.cost_model.objective.radio_power_mw(bw))

    def _decide(self, seen: Context) -> Decision:
        """The policy's decision, checked; a faulty policy or a malformed decision means local."""
        try:
            decision = self.policy.decide(seen)
            p = decision.partition
            if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p <= self.P:
                raise ValueError(f"partition {p!r} is not an integer in 0..{self.P}")
            return Decision(
                int(p), tuple(int(c) for c in decision.candidates), decision.mode,
                decision.cell, tuple(decision.flags),
            )  # fmt: skip
        except Exception as exc:
            return Decision(
                self.P, (self.P,), self.cfg.mode, None, (f"policy_error:{type(exc).__name__}",)
            )

    # -- execute --------------------------------------------------------------------------
    def _execute(
        self, x: np.ndarray, decision: Decision, t: _Times, phases: dict[str, float]
    ) -> _Run:
        """Run the head, then offload the rest (or finish locally when the offload fails)."""
        run = _Run(decision)
        p = decision.partition
        try:
            a = x if p == 0 else self.head.run(p, x)
        except Exception as exc:
            run.fallbacks.append(f"head_error:{type(exc).__name__}")
            p, a = self._head_fallback(p, x, run.fallbacks)
            run.decision = Decision(p, decision.candidates, decision.mode, decision.cell,
                                    (*decision.flags, "head_error"))  # fmt: skip
        t_head = time.perf_counter()
        phases["head"] = (t_head - t.decided) * 1000.0
        if p == self.P:
            run.output = a
            self.counters["local"] += 1
        else:
            self._offload(run, p, a, x, phases)
            phases["offload"] = (time.perf_counter() - t_head) * 1000.0 - phases.get(
                "local_finish", 0.0
            )
        run.latency_ms = (time.perf_counter() - t.start) * 1000.0
        return run

    def _offload(
        self, run: _Run, p: int, a: np.ndarray, x: np.ndarray, phases: dict[str, float]
    ) -> None:
        try:
            if self.client is None:
                raise OffloadFailed("no_server", "no edge server configured")
            result = self.client.infer(p, a, self.cfg.deadline_ms / 1000.0)
            run.result, run.output = result, result.output
            self.server_load = result.server_load
            self.estimator.update(result.bandwidth_mbps, result.rtt_ms)
            self.counters["offloaded"] += 1
        except Exception as exc:  # any client fault: finish locally, lose nothing
            kind = (
                getattr(exc, "kind", "unavailable")
                if isinstance(exc, OffloadError)
                else f"client_error:{type(exc).__name__}"
            )
            run.fallbacks.append(kind)
            run.wasted_s = float(getattr(exc, "elapsed_s", 0.0))
            if kind in ABANDON_KINDS:
                self.estimator.update_abandoned(getattr(exc, "bytes_sent", 0), run.wasted_s)
            t_fb = time.perf_counter()
            run.output = self._finish_locally(p, a, x, run.fallbacks)
            phases["local_finish"] = (time.perf_counter() - t_fb) * 1000.0
            self.counters["fallback"] += 1

    # -- account --------------------------------------------------------------------------
    def _realised(
        self, seen: Context, result: OffloadResult | None, true_bw: float | None
    ) -> Context:
        """The context as it turned out: the measured (or true, when emulated) link."""
        if true_bw is not None:
            bw = true_bw
        elif result is not None:
            bw = result.bandwidth_mbps
        else:
            bw = self.estimator.bandwidth_mbps
        return Context(
            bandwidth_mbps=bw,
            rtt_ms=result.rtt_ms if result is not None else seen.rtt_ms,
            device_load=seen.device_load,
            server_load=self.server_load,
            device_gco2_per_kwh=seen.device_gco2_per_kwh,
            server_gco2_per_kwh=seen.server_gco2_per_kwh,
            battery_pct=seen.battery_pct,
        )

    def _account(
        self,
        run: _Run,
        seen: Context,
        realised: Context,
        t_start_mono: float,
        phases: dict[str, float],
    ) -> _Accounts:
        """Modelled costs, device energy (measured or modelled), battery and carbon."""
        p, result = run.decision.partition, run.result
        fell_back = bool(run.fallbacks)
        model = self._guard(
            "cost_model", lambda: self._model(p, realised, fell_back, run.probe), None
        )
        energy_j, energy_flags = self._guard(
            "energy",
            lambda: self._energy(t_start_mono, phases, result, run.wasted_s, run.probe),
            (None, ["no_energy"]),
        )
        if energy_j is not None and model is not None and self.cost_model is not None:
            self.battery_pct = max(
                0.0,
                self.battery_pct - 100.0 * energy_j / (3600.0 * self.cost_model.profile.battery_wh),
            )
        battery_pct, battery_src = self._battery()
        carbon_g = None
        if model is not None:
            carbon_g = model["carbon_g"]
            if energy_j is not None:  # device part from the energy actually used
                e_srv = model["server_energy_j"]
                carbon_g = (
                    seen.device_gco2_per_kwh * energy_j + seen.server_gco2_per_kwh * e_srv
                ) / J_PER_KWH
        return _Accounts(model, energy_j, list(energy_flags), battery_pct, battery_src, carbon_g)

    # -- record ---------------------------------------------------------------------------
    def _record(
        self,
        run: _Run,
        seen: Context,
        realised: Context,
        acct: _Accounts,
        carbon_state: dict[str, str],
        phases: dict[str, float],
        t: _Times,
        true_bw: float | None,
    ) -> InferenceRecord:
        d, result = run.decision, run.result
        return InferenceRecord(
            i=self.count,
            time_unix=t.wall,
            partition=d.partition,
            candidates=[int(c) for c in d.candidates],
            mode=d.mode,
            cell=d.cell,
            decision_flags=list(dict.fromkeys([*d.flags, *self._faults])),
            seen=asdict(seen),
            realised=asdict(realised),
            latency_ms=run.latency_ms,
            phases_ms=phases,
            offloaded=result is not None,
            fallbacks=run.fallbacks,
            wasted_ms=run.wasted_s * 1000.0,
            offload=None if result is None else _offload_summary(result),
            energy_j=acct.energy_j,
            energy_flags=acct.energy_flags,
            battery_pct=acct.battery_pct,
            battery_source=acct.battery_source,
            carbon_state=carbon_state,
            model=acct.model,
            carbon_g=acct.carbon_g,
            true_bandwidth_mbps=true_bw,
            carbon_refused=self._carbon_refused(),
            probe=None if run.probe is None else run.probe.to_record(),
            output=run.output,
        )

    def _carbon_refused(self) -> dict[str, int]:
        """The carbon source's refused messages per reason (a subscriber's `refusals()`)."""
        counts = getattr(self.carbon, "refusals", None)
        if counts is None:
            return {}
        return dict(self._guard("carbon_refusals", counts, {}))

    def _head_fallback(self, p: int, x: np.ndarray, fallbacks: list[str]) -> tuple[int, np.ndarray]:
        """After the head of partition p failed: the full model on the device, else (it failed
        too, or p was already P) the whole model on the server from the image (p = 0). With
        no server left either, the runner's error reaches the caller: nothing can answer."""
        if p != self.P:
            try:
                return self.P, self.head.run(self.P, x)
            except Exception as exc:
                if self.client is None:
                    raise
                fallbacks.append(f"head_error:{type(exc).__name__}")
        elif self.client is None:
            raise  # the runner's own error (this runs inside the caller's except block)
        return 0, x

    def _finish_locally(
        self, p: int, a: np.ndarray, x: np.ndarray, fallbacks: list[str]
    ) -> np.ndarray:
        if self.tail is not None:
            try:
                tail_in = a if p == 0 else np.asarray(a, dtype=np.float32)
                out = self.tail.run(p, tail_in)
                fallbacks.append("local_tail")
                return out
            except Exception:
                fallbacks.append("local_tail_failed")
        fallbacks.append("local_full")
        return self.head.run(self.P, x)

    def _model(
        self, p: int, realised: Context, fell_back: bool, probe: ProbeOutcome | None = None
    ) -> dict[str, float] | None:
        """The cost model's figures for partition p on the realised context (None without a
        profile). A fallback is modelled as an outage (B = 0): wasted radio time at the
        deadline plus local completion, the cost docs/METHOD.md §3 charges. A probe run
        before the decision adds its device energy (`probe_energy_j`) to device_energy_j,
        carbon_g (at the device's intensity) and battery_pct; latency_ms and objective stay
        the partition's own."""
        if self.cost_model is None:
            return None
        cm = self.cost_model
        row = np.asarray([context_to_row(realised)], dtype=np.float64)
        tx = np.asarray([0.0 if fell_back else realised.bandwidth_mbps])
        c = cm.evaluate(row, tx)
        e_probe = 0.0 if probe is None else probe.energy_j
        fixed_id = getattr(cm, "fixed_id", None)
        i_d = realised.device_gco2_per_kwh if fixed_id is None else float(fixed_id)
        battery_wh = cm.profile.battery_wh
        return {
            "latency_ms": float(c.latency_ms[0, p]),
            "device_energy_j": float(c.device_energy_j[0, p]) + e_probe,
            "server_energy_j": float(c.server_energy_j[0, p] + c.network_energy_j[0, p]),
            "carbon_g": float(c.carbon_g[0, p]) + i_d * e_probe / J_PER_KWH,
            "battery_pct": float(c.battery_pct[0, p]) + 100.0 * e_probe / (3600.0 * battery_wh),
            "objective": float(c.objective[0, p]),
            "fallback": float(bool(c.fallback[0, p])),
            "probe_energy_j": e_probe,
        }

    def _energy(
        self,
        t0: float,
        phases: dict[str, float],
        result: OffloadResult | None,
        wasted_s: float,
        probe: ProbeOutcome | None = None,
    ) -> tuple[float | None, list[str]]:
        """Measured device energy over the inference (its window starts before the probe, so
        a probe's energy is in it), or modelled from the phases' durations with the profile's
        powers plus the probe's energy (flagged 'modelled')."""
        modelled = None
        cm = self.cost_model
        prof = getattr(cm, "profile", None)
        if cm is not None and prof is not None:
            compute_ms = phases.get("head", 0.0) + phases.get("local_finish", 0.0)
            radio_ms = wasted_s * 1000.0
            wait_ms = 0.0
            bw = self.estimator.bandwidth_mbps
            if result is not None:
                wait_ms = result.server_ms
                if result.link_measure != "server_ms":  # the wait is what the upload leaves
                    wait_ms = max(0.0, result.total_ms - result.rtt_ms - result.upload_ms)
                radio_ms = max(0.0, result.total_ms - wait_ms)
                bw = result.bandwidth_mbps
            p_radio = cm.objective.radio_power_mw(bw)
            modelled = (
                prof.p_active_mw * compute_ms
                + (prof.p_idle_mw + p_radio) * radio_ms
                + prof.p_idle_mw * wait_ms
            ) * 1e-6 + (0.0 if probe is None else probe.energy_j)
        if self.meter is None:
            return modelled, ["modelled", "no_power_source"] if modelled is not None else [
                "no_energy"
            ]
        m = self.meter.energy_j(t0, time.monotonic(), modelled_j=modelled)
        return m.energy_j, list(m.flags)

    def run(
        self,
        inputs: Iterable[np.ndarray],
        progress: Callable[[InferenceRecord], None] | None = None,
    ) -> Iterator[InferenceRecord]:
        for x in inputs:
            rec = self.infer(x)
            if progress is not None:
                progress(rec)
            yield rec


def _finite_json(o: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(o, dict):
        return {k: _finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_json(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
