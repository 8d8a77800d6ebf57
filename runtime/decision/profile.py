"""Per-partition profile of a bundle on one device/server pair (docs/METHOD.md §3).

Stored in the bundle as its 'profile' JSON section (written by `carboncp profile`). Arrays
have length P+1, indexed by partition p: p = 0 sends the image and runs nothing on the
device; p = P runs everything on the device and sends nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import section_fault
from carboncp.runtime.errors import BundleError

PROFILE_FORMAT = "carboncp-profile/1"
_ARRAYS = ("device_ms", "device_ms_p90", "server_ms", "wire_bytes", "return_bytes")
_CURVES = ("device_load_u", "device_slowdown_g", "server_load_v", "server_slowdown_g")


@dataclass(frozen=True, eq=False)  # holds arrays: compare to_dict() instead
class Profile:
    """Latencies (ms), bytes, power (mW) and load slow-down curves of one deployment."""

    device_ms: np.ndarray  # tau_d(p): head median latency on the device (0 at p = 0)
    device_ms_p90: np.ndarray
    server_ms: np.ndarray  # tau_s(p): tail median latency on the server (0 at p = P)
    wire_bytes: np.ndarray  # D_p: bytes that cross the link (uint8 image at p = 0; 0 at p = P)
    return_bytes: np.ndarray  # result sent back to the device (0 at p = P)
    p_active_mw: float  # whole-board power while computing
    p_idle_mw: float  # whole-board power while idle (sending, waiting)
    radio: str
    battery_wh: float
    server_p_marginal_mw: float
    device_load_u: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0]))
    device_slowdown_g: np.ndarray = field(default_factory=lambda: np.array([1.0, 1.0]))
    server_load_v: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0]))
    server_slowdown_g: np.ndarray = field(default_factory=lambda: np.array([1.0, 1.0]))
    device: str = "host"
    cuts: tuple[str, ...] = ()
    wire_dtypes: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        for name in (*_ARRAYS, *_CURVES):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        _check(self)

    @property
    def last(self) -> int:
        """P."""
        return len(self.device_ms) - 1

    def device_slowdown(self, u: np.ndarray | float) -> np.ndarray:
        """g_d(u), linear between the measured load levels, held flat outside them."""
        return np.interp(u, self.device_load_u, self.device_slowdown_g)

    def server_slowdown(self, v: np.ndarray | float) -> np.ndarray:
        return np.interp(v, self.server_load_v, self.server_slowdown_g)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": PROFILE_FORMAT}
        for name in (*_ARRAYS, *_CURVES):
            d[name] = [float(v) for v in getattr(self, name)]
        d.update(
            p_active_mw=float(self.p_active_mw),
            p_idle_mw=float(self.p_idle_mw),
            radio=self.radio,
            battery_wh=float(self.battery_wh),
            server_p_marginal_mw=float(self.server_p_marginal_mw),
            device=self.device,
            cuts=list(self.cuts),
            wire_dtypes=list(self.wire_dtypes),
            sources=dict(self.sources),
            notes=self.notes,
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "profile") -> Profile:
        if d.get("format", PROFILE_FORMAT) != PROFILE_FORMAT:
            raise BundleError(
                f"{where}: profile format {d.get('format')!r} is not {PROFILE_FORMAT!r}; "
                "re-run 'carboncp profile'"
            )
        req = (*_ARRAYS, "p_active_mw", "p_idle_mw", "radio", "battery_wh", "server_p_marginal_mw")
        for key in req:
            if key not in d:
                raise BundleError(f"{where}: missing key '{key}'; re-run 'carboncp profile'")
        kw: dict[str, Any] = {k: d[k] for k in req}
        fix = "re-run 'carboncp profile'"
        with section_fault(where, fix):
            for key in _CURVES:
                if key in d:
                    kw[key] = d[key]
            for key in ("device", "notes"):
                if key in d:
                    kw[key] = str(d[key])
            kw["cuts"] = tuple(str(c) for c in d.get("cuts", ()))
            kw["wire_dtypes"] = tuple(str(c) for c in d.get("wire_dtypes", ()))
            kw["sources"] = {str(k): str(v) for k, v in dict(d.get("sources", {})).items()}
            if not isinstance(kw["radio"], str):
                raise BundleError(f"{where}: 'radio' must be a string, got {kw['radio']!r}; {fix}")
            try:
                return cls(**kw)
            except BundleError as exc:  # _check's message names the key, not the file
                raise BundleError(f"{where}: {exc}; {fix}") from None


def load_profile(bundle: Any) -> Profile:
    """The 'profile' section of a loaded `Bundle` (or a bundle path)."""
    from carboncp.runtime.artifacts.bundle import Bundle

    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    sec = bundle.section("profile")
    if sec is None:
        raise BundleError(
            f"{bundle.path}: the bundle has no 'profile' section; run 'carboncp profile "
            f"{bundle.path}' first"
        )
    where = str(bundle.path / bundle.manifest["sections"]["profile"])
    pr = Profile.from_dict(sec, where=where)
    if pr.last != bundle.last:
        raise BundleError(
            f"{where}: the profile covers partitions 0..{pr.last}, the bundle has 0..{bundle.last}; "
            f"re-run 'carboncp profile {bundle.path}'"
        )
    return pr


def _check(pr: Profile) -> None:
    n = len(pr.device_ms)
    if n < 2:
        raise BundleError("profile: need at least two partitions (p = 0 and p = P)")
    for name in _ARRAYS:
        a = getattr(pr, name)
        if a.shape != (n,):
            raise BundleError(f"profile: '{name}' has shape {a.shape}, expected ({n},)")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise BundleError(f"profile: '{name}' must be finite and >= 0")
    for a_name, g_name in (
        ("device_load_u", "device_slowdown_g"),
        ("server_load_v", "server_slowdown_g"),
    ):
        a, g = getattr(pr, a_name), getattr(pr, g_name)
        if a.ndim != 1 or a.shape != g.shape or len(a) < 1:
            raise BundleError(f"profile: '{a_name}' and '{g_name}' must be 1-D of equal length")
        if np.any(np.diff(a) <= 0) or not np.all(np.isfinite(g)) or np.any(g <= 0):
            raise BundleError(f"profile: '{a_name}' must increase and '{g_name}' be finite and > 0")
    for name in ("p_active_mw", "p_idle_mw", "battery_wh", "server_p_marginal_mw"):
        v = getattr(pr, name)
        if not isinstance(v, (int, float, np.floating)) or not math.isfinite(v) or v < 0:
            raise BundleError(f"profile: '{name}' must be a finite number >= 0, got {v!r}")
    if pr.battery_wh <= 0:
        raise BundleError("profile: 'battery_wh' must be > 0")
