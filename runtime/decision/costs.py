"""Per-inference cost of every partition, and the objective J (docs/METHOD.md §3-4; docs/COSTS.md).

Two paths compute the same numbers: `CostModel.evaluate` (numpy, many contexts at once: the
replay, labels, evaluation) and `CostModel.row` / `row_objective` (pure Python, one context,
every partition or only a given subset: the device's mode A prices its conformal set per
inference). Tests check that they agree, and that a subset's entries equal the full row's.

Units: ms for times, mW for power (mW * ms = uJ), J, gCO2eq, percent of battery.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from carboncp.runtime.decision.context import CONTEXT_FIELDS
from carboncp.runtime.decision.objective import Objective
from carboncp.runtime.decision.profile import Profile, load_profile
from carboncp.runtime.errors import BundleError

J_PER_KWH = 3.6e6
_INF = float("inf")
_B, _RTT, _U, _V, _ID, _IS, _BAT = range(7)
assert CONTEXT_FIELDS[_B] == "bandwidth_mbps" and CONTEXT_FIELDS[_BAT] == "battery_pct"


@dataclass(frozen=True, eq=False)  # holds arrays
class Costs:
    """Costs of every partition for N contexts; each array is (N, P+1)."""

    latency_ms: np.ndarray
    device_energy_j: np.ndarray
    server_energy_j: np.ndarray
    network_energy_j: np.ndarray
    carbon_g: np.ndarray
    battery_pct: np.ndarray
    objective: np.ndarray  # J
    fallback: np.ndarray  # bool: transfer abandoned at the deadline, device completed locally

    def __len__(self) -> int:
        return self.latency_ms.shape[0]

    def take(self, idx: np.ndarray) -> Costs:
        """The rows idx (an index or mask array)."""
        return Costs(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


@dataclass(frozen=True)
class Reference:
    """Local-only (p = P) costs at the objective's reference context: J's normalisers."""

    carbon_g: float
    latency_ms: float
    battery_pct: float


class CostModel:
    """docs/METHOD.md §3-4 for one profile and one objective.

    Transfer of partition p < P over bandwidth B (Mbit/s): upload 8*D_p/B, RTT, the tail
    T_s = tau_s(p)*g_s(v) on the server, the result's return 8*R_p/B. The round from the start
    of the upload to the result back, T_off = up + RTT + T_s + ret, must finish within the
    deadline; otherwise the transfer is abandoned and the device runs the rest of the model
    itself: latency T_d(p) + wasted + (tau_d(P) - tau_d(p))*g_d(u). wasted is
    early_abandon_ms (when set) if the upload itself, up + RTT, cannot meet the deadline (the
    device sees that from the bytes sent), else the deadline (it waits for a late answer).
    B = 0 (an outage) always falls back.

    Parameters:
        profile: the device/server profile (per-partition times in ms, powers in mW, bytes).
        objective: the weights, SLO (`slo` here, ms or None), deadline rule and reference
            context J is normalised by (docs/COSTS.md).
    """

    def __init__(self, profile: Profile, objective: Objective) -> None:
        self.profile = profile
        self.objective = objective
        pr, ob = profile, objective
        self.P = pr.last
        self.tau_d = pr.device_ms.copy()
        self.tau_s = pr.server_ms.copy()
        self.tau_s[self.P] = 0.0
        self.up_k = 8e-3 * pr.wire_bytes  # ms * Mbit/s: upload time = up_k / B
        self.ret_k = 8e-3 * pr.return_bytes
        self.up_k[self.P] = 0.0
        self.ret_k[self.P] = 0.0
        self.rest = np.maximum(self.tau_d[self.P] - self.tau_d, 0.0)  # local completion
        self.p_act = float(pr.p_active_mw)
        self.p_idle = float(pr.p_idle_mw)
        self.p_srv = float(
            ob.server_marginal_mw if ob.server_marginal_mw is not None else pr.server_p_marginal_mw
        )
        self.radio_a, self.radio_b = ob.radio_coefficients
        self.radio_cap = float(ob.radio_cap_mbps)
        self.deadline = ob.effective_deadline_ms
        self.early = ob.early_abandon_ms
        self.slack = ob.deadline_rule == "slack"
        self.wasted = min(self.deadline, self.early or self.deadline)
        self.slo = ob.slo_ms
        self.e_net = float(ob.e_net_j_per_bit)
        self.fixed_id = ob.device_fixed_gco2_per_kwh if ob.device_carbon == "fixed" else None
        self.soc_k = 100.0 / (3600.0 * pr.battery_wh)  # percent per J
        self._ref = self._reference()
        self.wc = ob.w_carbon / self._ref.carbon_g if self._ref.carbon_g > 0 else 0.0
        self.wt = ob.w_latency / self._ref.latency_ms if self._ref.latency_ms > 0 else 0.0
        self.wb = ob.w_battery / self._ref.battery_pct if self._ref.battery_pct > 0 else 0.0
        self._e_net_uj = self.e_net * 1e6  # uJ per bit
        # Plain floats for the scalar path (row): one tuple per remote partition p < P. The
        # network energy of a completed transfer does not depend on the context: computed here
        # once, by the same operations row() would do.
        self._remote = [
            (
                float(self.tau_d[p]),
                float(self.tau_s[p]),
                float(self.up_k[p]),
                float(self.ret_k[p]),
                float(self.rest[p]),
                8.0 * float(pr.wire_bytes[p]),
                self._e_net_uj * (8.0 * float(pr.wire_bytes[p]) + 8.0 * float(pr.return_bytes[p])),
            )
            for p in range(self.P)
        ]
        # Looked up by partition index (a dict: a bad index fails instead of wrapping); None
        # marks p = P, computed locally.
        self._specs: dict[int, tuple[float, ...] | None] = dict(enumerate(self._remote))
        self._specs[self.P] = None
        self._all = list(range(self.P + 1))
        self._tau_local = float(self.tau_d[self.P])
        self._wc_j = self.wc / J_PER_KWH  # J weight per (gCO2/kWh * J)
        self._wb_j = self.wb * self.soc_k  # J weight per J of device energy (before h)
        self._low, self._bk = float(ob.battery_low_pct), float(ob.battery_k)
        protect = ob.battery_protect_below_pct
        self._protect = math.inf if protect is None else float(protect)
        self._gd = _curve(pr.device_load_u, pr.device_slowdown_g)
        self._gs = _curve(pr.server_load_v, pr.server_slowdown_g)
        # Everything row() reads, fixed here and unpacked in one step per call (cheaper than
        # ~25 attribute loads).
        self._scalar = (
            self.p_act, self.p_idle, self.p_srv, self.wasted, self.deadline, self.early,
            self.slo, self.slack, self.radio_a, self.radio_b, self.radio_cap, self._e_net_uj,
            self._wc_j, self._wb_j, self.wt, self.fixed_id, self._tau_local, self._low,
            self._bk, *self._gd, *self._gs, self._specs, self._all,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------
    def reference(self) -> Reference:
        """C_ref, T_ref, dSoC_ref: local-only costs at the objective's reference context."""
        return self._ref

    def _reference(self) -> Reference:
        ref = self.objective.reference_row()
        t = float(self.tau_d[self.P] * self.profile.device_slowdown(ref[_U]))
        e = self.p_act * t * 1e-6
        i_d = self.fixed_id if self.fixed_id is not None else ref[_ID]
        return Reference(carbon_g=i_d * e / J_PER_KWH, latency_ms=t, battery_pct=e * self.soc_k)

    def radio_power_mw(self, bandwidth_mbps: np.ndarray) -> np.ndarray:
        return self.radio_a * np.clip(bandwidth_mbps, 0.0, self.radio_cap) + self.radio_b

    def battery_shape(self, battery_pct: np.ndarray) -> np.ndarray:
        """h(b) per context: 0 at or above the protection threshold, else
        1 + max(0, (low - b)/low) * k (docs/METHOD.md §4)."""
        low, k = self.objective.battery_low_pct, self.objective.battery_k
        h = 1.0 + np.maximum(0.0, (low - battery_pct) / low) * k
        return np.where(battery_pct >= self._protect, 0.0, h)

    # ---------------------------------------------------------------------------------------
    def evaluate(self, x: np.ndarray, tx_mbps: np.ndarray | None = None) -> Costs:
        """Costs of every partition for contexts x (N, 7) in CONTEXT_FIELDS order.

        The transfer uses x's bandwidth, or `tx_mbps` (N,) when given (the rate realised at
        the moment of sending).

        Parameters:
            x: (N, 7) contexts, or one (7,) context.
            tx_mbps: (N,) transfer bandwidth in Mbit/s, or None for x's bandwidth_mbps.

        Returns:
            `Costs` with (N, P+1) arrays: latency_ms, the device/server/network energies in J,
            carbon_g, battery_pct, objective (J) and fallback.

        Raises:
            ValueError: x does not have 7 (len(CONTEXT_FIELDS)) columns.
        """
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != len(CONTEXT_FIELDS):
            raise ValueError(f"contexts must be (N, {len(CONTEXT_FIELDS)}), got {x.shape}")
        bw = x[:, _B] if tx_mbps is None else np.asarray(tx_mbps, dtype=np.float64).reshape(-1)
        bw = np.maximum(bw, 0.0)[:, None]
        rtt = x[:, _RTT][:, None]
        g_d = self.profile.device_slowdown(x[:, _U])[:, None]
        g_s = self.profile.server_slowdown(x[:, _V])[:, None]
        remote = np.zeros(self.P + 1, dtype=bool)
        remote[: self.P] = True

        t_d = self.tau_d[None, :] * g_d
        t_s = self.tau_s[None, :] * g_s
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.where(bw > 0, self.up_k[None, :] / bw, np.inf)
            ret = np.where(bw > 0, self.ret_k[None, :] / bw, np.inf)
        up = np.where(remote, up, 0.0)
        ret = np.where(remote, ret, 0.0)
        t_off = np.where(remote, up + rtt + t_s + ret, 0.0)
        dl, early_w = self._deadlines(g_d)
        fb = remote & (t_off > dl)
        # Early abandonment acts while sending (the client extrapolates the bytes sent): an
        # upload that cannot finish by the deadline is given up early; one that arrived but
        # whose answer is late (slow tail) is waited for until the deadline.
        wasted = np.where(up + rtt > dl, early_w, dl)
        p_radio = self.radio_power_mw(bw)

        t_rest = self.rest[None, :] * g_d
        t_tx_ok = np.where(remote, up + rtt + ret, 0.0)
        latency = np.where(fb, t_d + wasted + t_rest, t_d + np.where(remote, t_off, 0.0))
        e_d_ok = self.p_act * t_d + (self.p_idle + p_radio) * t_tx_ok + self.p_idle * t_s
        e_d_fb = self.p_act * (t_d + t_rest) + (self.p_idle + p_radio) * wasted
        e_d = np.where(fb, e_d_fb, e_d_ok) * 1e-6
        # On a fallback, the server still ran its tail if the upload arrived in time.
        arrived = (up + 0.5 * rtt) <= wasted
        e_s = self.p_srv * np.where(fb & ~arrived, 0.0, t_s) * 1e-6
        bits = 8.0 * self.profile.wire_bytes[None, :]
        rbits = 8.0 * self.profile.return_bytes[None, :]
        sent = np.where(fb, np.minimum(bits, bw * 1e3 * wasted), bits + rbits)
        e_net = np.where(remote, self.e_net * sent, 0.0)

        i_d = x[:, _ID][:, None] if self.fixed_id is None else self.fixed_id
        i_s = x[:, _IS][:, None]
        carbon = (i_d * e_d + i_s * (e_s + e_net)) / J_PER_KWH
        soc = e_d * self.soc_k
        h = self.battery_shape(x[:, _BAT])[:, None]
        obj = self.wc * carbon + self.wt * latency + self.wb * soc * h
        shape = latency.shape
        return Costs(
            latency_ms=latency,
            device_energy_j=e_d,
            server_energy_j=np.broadcast_to(e_s, shape).copy(),
            network_energy_j=np.broadcast_to(e_net, shape).copy(),
            carbon_g=carbon,
            battery_pct=soc,
            objective=obj,
            fallback=fb,
        )

    def _deadlines(self, g_d: np.ndarray) -> tuple[np.ndarray | float, np.ndarray | float]:
        """(deadline, time wasted by an upload abandoned early) in ms, per context for the
        slack rule, else constants."""
        if not self.slack:
            return self.deadline, self.wasted
        slack = self.slo - self.tau_d[self.P] * g_d
        dl = np.where(slack > 0, slack, self.deadline)
        return dl, (dl if self.early is None else np.minimum(dl, self.early))

    def feasible(self, costs: Costs) -> np.ndarray:
        """(N, P+1) bool: latency within the SLO (all True without an SLO)."""
        if self.slo is None:
            return np.ones(costs.latency_ms.shape, dtype=bool)
        return costs.latency_ms <= self.slo

    def oracle(self, costs: Costs) -> np.ndarray:
        """(N,) argmin J over the feasible partitions (T <= SLO); the fastest when none is."""
        feas = self.feasible(costs)
        j = np.where(feas, costs.objective, np.inf)
        best = np.argmin(j, axis=1)
        fastest = np.argmin(costs.latency_ms, axis=1)
        return np.where(feas.any(axis=1), best, fastest)

    # ---------------------------------------------------------------------------------------
    def row(
        self,
        ctx: tuple[float, ...],
        bandwidth_mbps: float,
        partitions: Sequence[int] | None = None,
    ) -> tuple[list[float], list[float]]:
        """(latency_ms, J) for one context; pure Python, no numpy.

        Every partition 0..P when `partitions` is None; else only the given ones (indices in
        0..P), the lists aligned with `partitions`. Each entry is the same float as the full
        row's (the same operations in the same order), so mode A can price just its set.
        ctx[0] is not read: the transfer uses `bandwidth_mbps`.

        Same formulas as `evaluate`, arranged for speed: energies in uJ (mW * ms), and J as
        a * E_d + c * E_srv + wt * T with the per-context constants a and c folded once.

        Parameters:
            ctx: one context in CONTEXT_FIELDS order (7 floats).
            bandwidth_mbps: the transfer's rate; <= 0 is an outage (every p < P falls back).
            partitions: the partitions to price, or None for 0..P.

        Returns:
            (latency_ms, J): two lists aligned with `partitions` (or 0..P).

        Raises:
            ValueError: a partition is outside 0..P.
        """
        (p_act, p_idle, p_srv, wasted, dl, early, slo, slack, radio_a, radio_b, radio_cap,
         e_net_uj, wc_j, wb_j, wt, fixed_id, tau_local, low, bk, gd_u, gd_g, gd_seg, gs_v,
         gs_g, gs_seg, specs, all_p) = self._scalar  # fmt: skip
        protect = self._protect
        bw = bandwidth_mbps if bandwidth_mbps > 0.0 else 0.0
        rtt = ctx[1]
        # g_d(u), g_s(v): np.interp for one value (linear inside, flat outside), written out
        # here because a function call costs more than the lookup itself.
        u = ctx[2]
        if u <= gd_u[0]:
            gd = gd_g[0]
        elif u >= gd_u[-1]:
            gd = gd_g[-1]
        else:
            u0, g0, dg, du = gd_seg[bisect_right(gd_u, u)]
            gd = g0 + dg * (u - u0) / du
        v = ctx[3]
        if v <= gs_v[0]:
            gs = gs_g[0]
        elif v >= gs_v[-1]:
            gs = gs_g[-1]
        else:
            v0, g0, dg, dv = gs_seg[bisect_right(gs_v, v)]
            gs = g0 + dg * (v - v0) / dv
        b = ctx[6]
        if b >= protect:  # the battery term protects a low battery only
            h = 0.0
        elif b < low:
            h = 1.0 + (low - b) / low * bk
        else:
            h = 1.0
        i_d = ctx[4] if fixed_id is None else fixed_id
        a = (wc_j * i_d + wb_j * h) * 1e-6  # per uJ of device energy
        c = wc_j * ctx[5] * 1e-6  # per uJ of server (+ network) energy
        if slack:
            slack_ms = slo - tau_local * gd
            if slack_ms > 0.0:
                dl = slack_ms
                wasted = slack_ms if early is None or early > slack_ms else early
        p_tx = p_idle + radio_a * (bw if bw < radio_cap else radio_cap) + radio_b
        lat: list[float] = []
        obj: list[float] = []
        try:
            for p in all_p if partitions is None else partitions:
                spec = specs[p]
                if spec is None:  # p = P: all local
                    t = tau_local * gd
                    lat.append(t)
                    obj.append(a * p_act * t + wt * t)
                    continue
                tau_d, tau_s, up_k, ret_k, rest, bits, e_net_ok = spec
                t_d = tau_d * gd
                t_s = tau_s * gs
                if bw > 0.0:
                    up = up_k / bw
                    tx = up + rtt + ret_k / bw
                    t_off = tx + t_s
                else:
                    up = t_off = tx = _INF
                if t_off <= dl:
                    t = t_d + t_off
                    e_d = p_act * t_d + p_tx * tx + p_idle * t_s
                    e_s = p_srv * t_s + e_net_ok
                else:
                    t_rest = rest * gd
                    w = wasted if up + rtt > dl else dl  # early only while sending (evaluate)
                    t = t_d + w + t_rest
                    e_d = p_act * (t_d + t_rest) + p_tx * w
                    sent = bw * 1e3 * w
                    e_s = (p_srv * t_s if up + 0.5 * rtt <= w else 0.0) + e_net_uj * (
                        bits if bits < sent else sent
                    )
                lat.append(t)
                obj.append(a * e_d + c * e_s + wt * t)
        except KeyError:  # a dict lookup: negative or too large indices miss
            bad = [p for p in partitions or () if p not in specs]
            raise ValueError(f"partitions {bad} are outside 0..{self.P}") from None
        return lat, obj

    def row_expected(
        self,
        ctx: tuple[float, ...],
        bandwidths: Sequence[float],
        latency_mbps: float,
        partitions: Sequence[int] | None = None,
    ) -> tuple[list[float], list[float]]:
        """(latency_ms at `latency_mbps`, mean J over `bandwidths`) for one context; pure Python.

        Mode A's expected-J rule (docs/METHOD.md §7): J(p) averaged over the link's predictive
        distribution, given as equally likely transfer rates (B̂·exp(r_k)), and the latency at
        one pessimistic rate for the SLO. Entry i of the mean is
        sum(J_k for k in order) / K with every J_k the same float as
        `row(ctx, bandwidths[k], partitions)`'s (the same operations; outages and early
        abandonment priced as there); the latency is `row(ctx, latency_mbps)`'s. The local
        partition (p = P) does not depend on the link and is priced once.

        Parameters:
            ctx: one context in CONTEXT_FIELDS order (ctx[0] is not read).
            bandwidths: the K >= 1 equally likely transfer rates (Mbit/s; <= 0 is an outage).
            latency_mbps: the rate the returned latencies are computed at.
            partitions: the partitions to price, or None for 0..P.

        Returns:
            (latency_ms, mean J): two lists aligned with `partitions` (or 0..P).

        Raises:
            ValueError: a partition is outside 0..P, or `bandwidths` is empty.
        """
        (p_act, p_idle, p_srv, wasted, dl, early, slo, slack, radio_a, radio_b, radio_cap,
         e_net_uj, wc_j, wb_j, wt, fixed_id, tau_local, low, bk, gd_u, gd_g, gd_seg, gs_v,
         gs_g, gs_seg, specs, all_p) = self._scalar  # fmt: skip
        n = len(bandwidths)
        if n == 0:
            raise ValueError("row_expected needs at least one bandwidth")
        rtt = ctx[1]
        u = ctx[2]
        if u <= gd_u[0]:
            gd = gd_g[0]
        elif u >= gd_u[-1]:
            gd = gd_g[-1]
        else:
            u0, g0, dg, du = gd_seg[bisect_right(gd_u, u)]
            gd = g0 + dg * (u - u0) / du
        v = ctx[3]
        if v <= gs_v[0]:
            gs = gs_g[0]
        elif v >= gs_v[-1]:
            gs = gs_g[-1]
        else:
            v0, g0, dg, dv = gs_seg[bisect_right(gs_v, v)]
            gs = g0 + dg * (v - v0) / dv
        b = ctx[6]
        h = 0.0 if b >= self._protect else (1.0 + (low - b) / low * bk if b < low else 1.0)
        i_d = ctx[4] if fixed_id is None else fixed_id
        a = (wc_j * i_d + wb_j * h) * 1e-6
        c = wc_j * ctx[5] * 1e-6
        if slack:
            slack_ms = slo - tau_local * gd
            if slack_ms > 0.0:
                dl = slack_ms
                wasted = slack_ms if early is None or early > slack_ms else early
        # The latency's rate first, then the K rates: (bw, radio + idle power) each.
        links = []
        for r in (latency_mbps, *bandwidths):
            bw = r if r > 0.0 else 0.0
            links.append((bw, p_idle + radio_a * (bw if bw < radio_cap else radio_cap) + radio_b))
        lat: list[float] = []
        obj: list[float] = []
        try:
            for p in all_p if partitions is None else partitions:
                spec = specs[p]
                if spec is None:  # p = P: all local, the same at every rate
                    t = tau_local * gd
                    lat.append(t)
                    j = a * p_act * t + wt * t
                    total = 0.0
                    for _ in range(n):
                        total += j
                    obj.append(total / n)
                    continue
                tau_d, tau_s, up_k, ret_k, rest, bits, e_net_ok = spec
                t_d = tau_d * gd
                t_s = tau_s * gs
                total = 0.0
                first = True
                for bw, p_tx in links:
                    if bw > 0.0:
                        up = up_k / bw
                        tx = up + rtt + ret_k / bw
                        t_off = tx + t_s
                    else:
                        up = t_off = tx = _INF
                    if t_off <= dl:
                        t = t_d + t_off
                        e_d = p_act * t_d + p_tx * tx + p_idle * t_s
                        e_s = p_srv * t_s + e_net_ok
                    else:
                        t_rest = rest * gd
                        w = wasted if up + rtt > dl else dl
                        t = t_d + w + t_rest
                        e_d = p_act * (t_d + t_rest) + p_tx * w
                        sent = bw * 1e3 * w
                        e_s = (p_srv * t_s if up + 0.5 * rtt <= w else 0.0) + e_net_uj * (
                            bits if bits < sent else sent
                        )
                    if first:  # the latency's rate
                        lat.append(t)
                        first = False
                    else:
                        total += a * e_d + c * e_s + wt * t
                obj.append(total / n)
        except KeyError:
            bad = [p for p in partitions or () if p not in specs]
            raise ValueError(f"partitions {bad} are outside 0..{self.P}") from None
        return lat, obj

    def device_energy_weight(self, ctx: Sequence[float]) -> float:
        """Objective per joule of device energy in context `ctx` (CONTEXT_FIELDS order): the
        carbon weight times the device grid's intensity plus the battery weight where the
        battery term acts; the `a` of `row` per J instead of per µJ (the probe gate prices a
        link probe's energy with it, runtime/decision/probe_value.py)."""
        i_d = float(ctx[4]) if self.fixed_id is None else float(self.fixed_id)
        return self._wc_j * i_d + self._wb_j * self.objective.battery_shape(float(ctx[6]))

    def row_objective(
        self,
        ctx: tuple[float, ...],
        bandwidth_mbps: float,
        partitions: Sequence[int] | None = None,
    ) -> list[float]:
        """J for one context with the given bandwidth (pure Python): every partition, or
        only `partitions` (aligned with it), as in `row`.

        Returns:
            J per partition, aligned with `partitions` (or 0..P).

        Raises:
            ValueError: a partition is outside 0..P.
        """
        return self.row(ctx, bandwidth_mbps, partitions)[1]


def _curve(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float], list[tuple]]:
    """A load curve for row(): its points, and per segment i (from point i-1 to i; index 0
    unused) (x_{i-1}, y_{i-1}, y_i - y_{i-1}, x_i - x_{i-1}), so one unpack replaces four
    list reads and two subtractions (the same floats)."""
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    seg = [(0.0, 0.0, 0.0, 0.0)] + [
        (xs[i - 1], ys[i - 1], ys[i] - ys[i - 1], xs[i] - xs[i - 1]) for i in range(1, len(xs))
    ]
    return xs, ys, seg


def cost_model_of(bundle: Any, objective_required: bool = True) -> CostModel:
    """A loaded bundle's CostModel: its profile and the objective it was built for (the
    default objective when it has none and `objective_required` is False).

    Parameters:
        bundle: a loaded `Bundle` with a 'profile' section.
        objective_required: whether a bundle without an 'objective' section is an error.

    Raises:
        BundleError: the 'profile' section is missing or malformed, or covers other partitions
            than the bundle; or no 'objective' section while `objective_required`.
        ConfigError: the bundle's objective section is invalid.
    """
    obj = bundle.section("objective")
    if obj is not None:
        where = str(bundle.path / bundle.manifest["sections"]["objective"])
        objective = Objective.from_dict(obj, where=where)
    elif objective_required:
        raise BundleError(
            f"{bundle.path}: no 'objective' section; run 'carboncp build' (or 'carboncp profile')"
        )
    else:
        objective = Objective()
    return CostModel(load_profile(bundle), objective)
