"""Profile a bundle on this machine and write its 'profile' and 'objective' sections.

What is measured here, with the runtime's own runners (`carboncp.runtime.artifacts.runners`):
- tau_d(p): each head's latency (LiteRT by default), median and p90 over `repeats` rounds
  after `warmup` runs, on a fixed seeded uint8 image. Partitions are timed round-robin (each
  round runs every head once), so that other work on the machine slows all alike; heads are
  nested, so tau_d is made non-decreasing in p (an inversion is timing noise);
- tau_s(p): each tail's latency (ExecuTorch), median, round-robin, made non-increasing;
- g_d(u): the full model's slow-down under background CPU load at several levels
  (`tooling/loadgen.py`: duty-cycled busy-loop processes, always stopped afterwards), as the
  ratio of medians measured back to back (unloaded, then under load); made non-decreasing
  and >= 1 (a faster run under load is noise).
  g_s(v) is measured the same way on the p = 0 tail (in --quick mode, g_d is reused).
What comes from the device profile (tooling/device_profiles/*.toml, every figure sourced
there): active and idle power, radio, battery capacity, and, for a device that is not this
machine, the factors that scale this host's head latencies to that device and its tail
latencies to the edge server (anchored on published/reference full-model latencies).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle, register_file, save_manifest
from carboncp.runtime.checks import check_choice, check_number
from carboncp.runtime.decision.objective import (
    DEFAULT_SERVER_MARGINAL_MW,
    RADIO_MODELS,
    Objective,
    load_objective,
)
from carboncp.runtime.decision.profile import Profile
from carboncp.runtime.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILES_DIR = Path(__file__).parent / "device_profiles"
LOAD_LEVELS = (0.0, 0.5, 1.0)
QUICK_LOAD_LEVELS = (0.0, 1.0)
PROFILE_FILE = "profile.json"
OBJECTIVE_FILE = "objective.json"


@dataclass(frozen=True)
class DeviceProfile:
    """A device's power, radio and battery figures, and how its latencies relate to this host."""

    name: str
    p_active_mw: float
    p_idle_mw: float
    radio: str
    battery_wh: float
    measured: bool = True  # latencies measured on the machine that runs `carboncp profile`
    reference_model: str | None = None
    reference_full_model_ms: float | None = None
    fallback_scale: float = 1.0
    server_latency_scale: float = 1.0
    server_reference_model: str | None = None
    server_reference_full_model_ms: float | None = None
    server_p_marginal_mw: float = DEFAULT_SERVER_MARGINAL_MW
    description: str = ""
    path: str = ""

    def latency_scale(self, model_name: str, host_full_model_ms: float) -> tuple[float, str]:
        """(factor, how it was obtained) that maps host head latencies to this device."""
        if self.measured:
            return 1.0, "measured on this machine"
        if (
            self.reference_model
            and self.reference_full_model_ms
            and model_name == self.reference_model
            and host_full_model_ms > 0
        ):
            s = self.reference_full_model_ms / host_full_model_ms
            return s, (
                f"{self.reference_full_model_ms} ms (published {self.reference_model} on "
                f"{self.name}) / {host_full_model_ms:.3f} ms (measured here)"
            )
        return self.fallback_scale, f"fallback_scale of {self.path or self.name}"

    def server_scale(self, model_name: str, host_full_tail_ms: float) -> tuple[float, str]:
        """(factor, how) mapping the tails measured here to the edge server's."""
        ref = self.server_reference_full_model_ms
        if ref and model_name == self.server_reference_model and host_full_tail_ms > 0:
            return ref / host_full_tail_ms, (
                f"{ref} ms (reference {model_name} on the edge server) / "
                f"{host_full_tail_ms:.3f} ms (p=0 tail measured here)"
            )
        return self.server_latency_scale, f"[server] latency_scale of {self.path or self.name}"


def device_profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def resolve_device_profile(spec: str | Path) -> Path:
    """A shipped profile name ('host', 'rpi4', 'jetson-orin-nano') or a TOML file path."""
    path = Path(spec)
    if path.suffix == ".toml" or path.is_file() or len(path.parts) > 1:
        if not path.is_file():
            raise ConfigError(f"--device-profile {spec}: no such file")
        return path
    named = PROFILES_DIR / f"{spec}.toml"
    if not named.is_file():
        raise ConfigError(
            f"--device-profile {spec!r}: unknown device profile; valid names: "
            f"{', '.join(device_profile_names())} (or a path to a .toml file)"
        )
    return named


_TOP = {"name", "description", "p_active_mw", "p_idle_mw", "radio", "battery_wh"}
_LAT = {"measured", "reference_model", "reference_full_model_ms", "fallback_scale"}
_SRV = {"latency_scale", "p_marginal_mw", "reference_model", "reference_full_model_ms"}


def load_device_profile(spec: str | Path | DeviceProfile) -> DeviceProfile:
    if isinstance(spec, DeviceProfile):
        return spec
    path = resolve_device_profile(spec)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    lat, srv = d.pop("latency", {}), d.pop("server", {})
    for keys, table, where in ((_TOP, d, ""), (_LAT, lat, "latency."), (_SRV, srv, "server.")):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{where.rstrip('.')}' must be a table")
        for k in table:
            if k not in keys:
                raise ConfigError(f"{path}: unknown key '{where}{k}' (known: {sorted(keys)})")
    for k in ("p_active_mw", "p_idle_mw", "battery_wh", "radio"):
        if k not in d:
            raise ConfigError(f"{path}: missing key '{k}'")

    def num(table: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
        v = table.get(key, default)
        return float(check_number(v, f"{path}: key '{where}{key}'", lo=0, lo_open=True))

    check_choice(d["radio"], f"{path}: key 'radio'", RADIO_MODELS)
    measured = lat.get("measured", True)
    if not isinstance(measured, bool):
        raise ConfigError(f"{path}: key 'latency.measured' must be true or false")
    ref_ms = lat.get("reference_full_model_ms")
    if not measured or "fallback_scale" in lat:
        num(lat, "fallback_scale", "latency.")
    if ref_ms is not None:
        num(lat, "reference_full_model_ms", "latency.")
    for table, where in ((lat, "latency."), (srv, "server.")):
        if not isinstance(table.get("reference_model", ""), str):
            raise ConfigError(f"{path}: key '{where}reference_model' must be a model name")
    return DeviceProfile(
        name=str(d.get("name", path.stem)),
        description=str(d.get("description", "")),
        p_active_mw=num(d, "p_active_mw", ""),
        p_idle_mw=num(d, "p_idle_mw", ""),
        radio=d["radio"],
        battery_wh=num(d, "battery_wh", ""),
        measured=measured,
        reference_model=lat.get("reference_model"),
        reference_full_model_ms=None if ref_ms is None else float(ref_ms),
        fallback_scale=float(lat.get("fallback_scale", 1.0)),
        server_latency_scale=num(srv, "latency_scale", "server.", 1.0),
        server_reference_model=srv.get("reference_model"),
        server_reference_full_model_ms=(
            num(srv, "reference_full_model_ms", "server.")
            if "reference_full_model_ms" in srv
            else None
        ),
        server_p_marginal_mw=num(srv, "p_marginal_mw", "server.", DEFAULT_SERVER_MARGINAL_MW),
        path=str(path),
    )


# ------------------------------------------------------------------------------------------


def time_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> np.ndarray:
    """Wall times (ms) of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _input(bundle: Bundle, p: int, part: str, rng: np.random.Generator) -> np.ndarray:
    from carboncp.runtime.artifacts.runners import expected_input

    dtype, shape = expected_input(bundle, p, part)
    if dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(dtype)


def _objective_for(
    spec: str | Path | Objective | None, bundle: Bundle, dp: DeviceProfile
) -> Objective:
    """The objective to record: given, else the bundle's, else defaults; the radio comes from
    the device profile unless the given objective sets one explicitly."""
    if isinstance(spec, Objective):
        return spec
    if spec is not None:
        obj = load_objective(spec)
        with open(spec, "rb") as f:
            raw = tomllib.load(f)
        explicit = "radio" in raw or "radio" in raw.get("objective", {})
        return obj if explicit else replace(obj, radio=dp.radio)
    existing = bundle.section("objective")
    if existing is not None:
        return replace(
            Objective.from_dict(existing, where=f"{bundle.path}/objective"), radio=dp.radio
        )
    return Objective(radio=dp.radio)


def _slowdown(
    fn: Callable[[], Any], levels: Sequence[float], repeats: int, progress: bool, what: str
) -> tuple[list[float], list[float]]:
    """g at each load level: median under load / median without, measured back to back."""
    from carboncp.tooling.loadgen import BackgroundLoad

    base = float(np.median(time_ms(fn, repeats, warmup=1)))
    u, g = [0.0], [1.0]
    for level in levels:
        if level <= 0:
            continue
        with BackgroundLoad(level) as load:
            _say(
                f"[profile] {what} under load {level:.2f} ({load.cores:g} busy cores) ...", progress
            )
            ms = float(np.median(time_ms(fn, repeats, warmup=1)))
        u.append(float(level))
        g.append(max(g[-1], ms / base))  # monotone, >= 1
    return u, g


def measure_power(
    spec: str | Any | None, run_full: Callable[[], Any], window_s: float, progress: bool
) -> tuple[float, float, str] | None:
    """(idle mW, active mW, how) from a power source: mean power over `window_s` doing nothing,
    then over `window_s` running the full model back to back. None without a source."""
    from carboncp.runtime.errors import PowerSourceError
    from carboncp.runtime.power import EnergyMeter, PowerSource, open_power_source

    if spec is None or spec == "none":
        return None
    source = spec if isinstance(spec, PowerSource) else open_power_source(str(spec))
    if source is None:
        return None
    means = []
    with EnergyMeter(source, rate_hz=100.0) as meter:
        time.sleep(0.1)
        for what in ("idle", "active"):
            _say(f"[profile] measuring {what} power for {window_s:g} s ...", progress)
            with meter.measure() as w:
                end = time.monotonic() + window_s
                while time.monotonic() < end:
                    if what == "active":
                        run_full()
                    else:
                        time.sleep(0.01)
            r = w.result
            assert r is not None and w.t1_s is not None
            if r.modelled or r.energy_j is None:
                raise PowerSourceError(
                    f"power source {source!r}: no usable {what} measurement ({', '.join(r.flags)}); "
                    "check the sensor, or profile without --power-source"
                )
            means.append(r.energy_j / (w.t1_s - w.t0_s) * 1000.0)
    idle, active = means[0], max(means)  # computing never draws less than idling
    return idle, active, f"measured here with power source {spec} ({window_s:g} s windows)"


def time_interleaved(
    fns: dict[int, Callable[[], Any]], repeats: int, warmup: int, progress: bool, what: str
) -> dict[int, np.ndarray]:
    """Wall times (ms) of every fn, round-robin: repeat r times each fn once in turn, so that
    whatever else the machine does at the time slows all partitions alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {k: np.empty(repeats) for k in fns}
    for r in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[k][r] = (time.perf_counter() - t0) * 1e3
        if progress and (r + 1) % max(1, repeats // 4) == 0:
            _say(f"[profile] {what}s: round {r + 1}/{repeats}", progress)
    return out


def profile_bundle(
    bundle_path: str | Path,
    device_profile: str | Path | DeviceProfile = "host",
    repeats: int = 20,
    progress: bool = True,
    *,
    objective: str | Path | Objective | None = None,
    quick: bool = False,
    warmup: int = 3,
    head_backend: str = "litert",
    wire_dtype: str = "float32",
    load_levels: Sequence[float] | None = None,
    seed: int = 0,
    power_source: str | Any | None = None,
    power_window_s: float = 2.0,
) -> Profile:
    """Measure the bundle here, combine with the device profile, write the sections.

    Returns the Profile written. `quick` uses fewer repeats and load levels (tests, CI).
    `wire_dtype` "float16" sends activations at half size where the bundle recorded the
    float16 error (the image at p = 0 is always uint8). `power_source` (a spec for
    `carboncp.runtime.power.open_power_source`, e.g. "ina219:1:0x40", "jetson", "sysfs",
    or a PowerSource) measures idle and active power here instead of taking the device
    profile's; only for a device profile whose latencies are measured on this machine.
    """
    if wire_dtype not in ("float32", "float16"):
        raise ConfigError(f"wire dtype must be 'float32' or 'float16', got {wire_dtype!r}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    bundle = Bundle.load(bundle_path)
    dp = load_device_profile(device_profile)
    obj = _objective_for(objective, bundle, dp)
    if power_source not in (None, "none") and not dp.measured:
        raise ConfigError(
            f"--power-source measures THIS machine, but device profile {dp.name!r} describes "
            "another device (its latencies are scaled); use it with --device-profile host or "
            "a profile with measured = true, run on the device itself"
        )
    if quick:
        repeats, warmup = min(repeats, 5), min(warmup, 1)
    levels = (
        tuple(load_levels)
        if load_levels is not None
        else (QUICK_LOAD_LEVELS if quick else LOAD_LEVELS)
    )
    rounds = _Rounds(repeats, warmup, levels, quick, progress)
    rng = np.random.default_rng(seed)
    t_start = time.monotonic()
    # Heads first, then tails: both draw their inputs from `rng`, in this order.
    dev_med, dev_p90, u, g_d, power = _measure_heads(
        bundle, head_backend, rng, rounds, power_source, power_window_s
    )
    srv_med, v, g_s = _measure_tails(bundle, rng, rounds, u, g_d)
    dev_med, dev_p90, srv_med = _enforce_nesting(dev_med, dev_p90, srv_med)
    m = _Measured(dev_med, dev_p90, srv_med, u, g_d, v, g_s, power)
    prof, scale = _scaled_profile(bundle, dp, obj, m, rounds, head_backend, wire_dtype, t_start)
    write_sections(bundle, prof, obj)
    _say(
        f"[profile] wrote {PROFILE_FILE} and {OBJECTIVE_FILE} into {bundle.path} "
        f"(device {dp.name}, scale {scale:.3g}, full model {prof.device_ms[bundle.last]:.2f} ms)",
        progress,
    )
    return prof


@dataclass(frozen=True)
class _Rounds:
    """How much to time: rounds, warm-up runs and load levels."""

    repeats: int
    warmup: int
    levels: tuple[float, ...]
    quick: bool
    progress: bool

    @property
    def slow_reps(self) -> int:
        """Rounds per load level of the slow-down measurement."""
        return max(3, self.repeats // 2)


@dataclass(frozen=True)
class _Measured:
    """What was timed on this machine, before scaling to the device profile."""

    dev_med: np.ndarray
    dev_p90: np.ndarray
    srv_med: np.ndarray
    u: list[float]
    g_d: list[float]
    v: list[float]
    g_s: list[float]
    power: tuple[float, float, str] | None


def _measure_heads(
    bundle: Bundle,
    backend: str,
    rng: np.random.Generator,
    rounds: _Rounds,
    power_source: str | Any | None,
    power_window_s: float,
) -> tuple[np.ndarray, np.ndarray, list[float], list[float], tuple[float, float, str] | None]:
    """(median ms, p90 ms, u, g_d(u), power) of the heads, timed round-robin."""
    from carboncp.runtime.artifacts.runners import make_runner

    P, progress = bundle.last, rounds.progress
    dev_med, dev_p90 = np.zeros(P + 1), np.zeros(P + 1)
    head = make_runner(bundle, backend, "head")
    try:
        xs = {p: _input(bundle, p, "head", rng) for p in range(1, P + 1)}
        ms = time_interleaved(
            {p: (lambda p=p: head.run(p, xs[p])) for p in xs},
            rounds.repeats,
            rounds.warmup,
            progress,
            "head",
        )
        for p, v in ms.items():
            dev_med[p], dev_p90[p] = np.median(v), np.quantile(v, 0.9)
            _say(f"[profile] head p={p}/{P} ({backend}): median {dev_med[p]:.3f} ms", progress)

        def full() -> Any:
            return head.run(P, xs[P])

        u, g_d = _slowdown(full, rounds.levels, rounds.slow_reps, progress, "full model")
        power = measure_power(power_source, full, power_window_s, progress)
    finally:
        head.close()
    return dev_med, dev_p90, u, g_d, power


def _measure_tails(
    bundle: Bundle, rng: np.random.Generator, rounds: _Rounds, u: list[float], g_d: list[float]
) -> tuple[np.ndarray, list[float], list[float]]:
    """(median ms, v, g_s(v)) of the ExecuTorch tails; --quick reuses the heads' (u, g_d)."""
    from carboncp.runtime.artifacts.runners import make_runner

    P, progress = bundle.last, rounds.progress
    srv_med = np.zeros(P + 1)
    tail = make_runner(bundle, "executorch", "tail")
    try:
        xt = {p: _input(bundle, p, "tail", rng) for p in range(P)}
        ms = time_interleaved(
            {p: (lambda p=p: tail.run(p, xt[p])) for p in xt},
            rounds.repeats,
            rounds.warmup,
            progress,
            "tail",
        )
        for p, t in ms.items():
            srv_med[p] = np.median(t)
            _say(f"[profile] tail p={p}/{P - 1} (executorch): median {srv_med[p]:.3f} ms", progress)
        if rounds.quick:
            v, g_s = u, g_d
        else:
            v, g_s = _slowdown(
                lambda: tail.run(0, xt[0]), rounds.levels, rounds.slow_reps, progress, "p=0 tail"
            )
    finally:
        tail.close()
    return srv_med, v, g_s


def _enforce_nesting(
    dev_med: np.ndarray, dev_p90: np.ndarray, srv_med: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, p90) non-decreasing in p for heads, median non-increasing for tails."""
    # Heads are nested (head p+1 runs head p and more), tails likewise the other way: a
    # measured inversion is timing noise, so enforce the order.
    P = len(dev_med) - 1
    dev_p90 = np.maximum(np.maximum.accumulate(dev_p90), dev_med)
    dev_med = np.maximum.accumulate(dev_med)
    srv_med[:P] = np.maximum.accumulate(srv_med[:P][::-1])[::-1]
    return dev_med, dev_p90, srv_med


def _wire(bundle: Bundle, wire_dtype: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(bytes sent at each cut, their dtypes, bytes returned) per partition."""
    P = bundle.last
    wire = np.zeros(P + 1)
    dtypes = []
    for part in bundle.partitions[:P]:
        f16 = part.float16 if part.p > 0 and wire_dtype == "float16" else None
        wire[part.p] = float(f16["bytes"]) if f16 else float(part.wire_bytes)
        dtypes.append("float16" if f16 else part.wire_dtype)
    dtypes.append("none")
    out_bytes = 4.0 * float(np.prod(bundle.output_shape))  # float32 result sent back
    ret = np.full(P + 1, out_bytes)
    ret[P] = 0.0
    return wire, dtypes, ret


def _scaled_profile(
    bundle: Bundle,
    dp: DeviceProfile,
    obj: Objective,
    m: _Measured,
    rounds: _Rounds,
    head_backend: str,
    wire_dtype: str,
    t_start: float,
) -> tuple[Profile, float]:
    """(the Profile, the head-latency scale): measurements scaled to the device, its figures."""
    P, levels, power = bundle.last, rounds.levels, m.power
    scale, how = dp.latency_scale(bundle.model_name, float(m.dev_med[P]))
    s_scale, s_how = dp.server_scale(bundle.model_name, float(m.srv_med[0]))
    wire, dtypes, ret = _wire(bundle, wire_dtype)
    prof = Profile(
        device_ms=m.dev_med * scale,
        device_ms_p90=m.dev_p90 * scale,
        server_ms=m.srv_med * s_scale,
        wire_bytes=wire,
        return_bytes=ret,
        p_active_mw=power[1] if power else dp.p_active_mw,
        p_idle_mw=power[0] if power else dp.p_idle_mw,
        radio=obj.radio,
        battery_wh=dp.battery_wh,
        server_p_marginal_mw=dp.server_p_marginal_mw,
        device_load_u=m.u,
        device_slowdown_g=m.g_d,
        server_load_v=m.v,
        server_slowdown_g=m.g_s,
        device=dp.name,
        cuts=tuple(part.cut for part in bundle.partitions),
        wire_dtypes=tuple(dtypes),
        sources={
            "device_ms": f"{head_backend} heads measured here ({rounds.repeats} interleaved rounds "
            f"after {rounds.warmup} warm-up, median/p90, made non-decreasing in p) x {scale:.4g} ({how})",
            "server_ms": f"executorch tails measured here ({rounds.repeats} runs, median) x "
            f"{s_scale:.4g} ({s_how})",
            "device_slowdown": f"full-model head under BackgroundLoad levels {list(levels)} of "
            f"this machine's CPUs (tooling/loadgen.py)",
            "server_slowdown": "copied from device_slowdown (--quick)"
            if rounds.quick
            else f"p=0 tail under the same load levels {list(levels)}",
            "power": power[2] if power else f"device profile {dp.path or dp.name}",
            "server_p_marginal_mw": f"device profile {dp.path or dp.name} [server]",
            "wire_bytes": f"bundle manifest ({wire_dtype} activations, uint8 image at p=0)",
            "return_bytes": "float32 model output",
        },
        notes=f"profiled {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} in "
        f"{time.monotonic() - t_start:.1f} s; {dp.description}",
    )
    return prof, scale


def write_sections(bundle: Bundle, profile: Profile, objective: Objective) -> None:
    """Write profile.json and objective.json, register their sha256, save the manifest."""
    manifest = json.loads((bundle.path / "manifest.json").read_text(encoding="utf-8"))
    for rel, data in ((PROFILE_FILE, profile.to_dict()), (OBJECTIVE_FILE, objective.to_dict())):
        (bundle.path / rel).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        register_file(manifest, bundle.path, rel)
    sections = manifest.setdefault("sections", {})
    sections["profile"] = PROFILE_FILE
    sections["objective"] = OBJECTIVE_FILE
    save_manifest(bundle.path, manifest)


def plot_profile(profile: Profile, path: str | Path) -> Path:
    """A PNG of the profile: per-partition latencies and bytes, and the load slow-down."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    P = profile.last
    ps = np.arange(P + 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax.bar(ps - 0.2, profile.device_ms, 0.4, label="device head τ_d (median)")
    ax.errorbar(ps - 0.2, profile.device_ms, yerr=[np.zeros(P + 1), profile.device_ms_p90 - profile.device_ms],
                fmt="none", ecolor="k", capsize=3, label="p90")  # fmt: skip
    ax.bar(ps + 0.2, profile.server_ms, 0.4, label="server tail τ_s (median)")
    ax.set_xticks(
        ps, [f"{p}\n{c}" for p, c in zip(ps, profile.cuts or [""] * (P + 1), strict=True)]
    )
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("ms")
    ax.set_title(f"{profile.device}: latency per partition")
    tw = ax.twinx()
    tw.plot(ps, profile.wire_bytes / 1e3, "o-", color="tab:red", label="wire kB")
    tw.set_ylabel("kB on the link", color="tab:red")
    ax.legend(loc="upper left", fontsize=8)
    ax2.plot(profile.device_load_u, profile.device_slowdown_g, "o-", label="device g_d(u)")
    ax2.plot(profile.server_load_v, profile.server_slowdown_g, "s--", label="server g_s(v)")
    ax2.set_xlabel("background load (fraction of the CPUs)")
    ax2.set_ylabel("slow-down")
    ax2.set_title("slow-down under load")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
