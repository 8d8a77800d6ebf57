"""The one place that builds a device from its settings: bundle, cost model, policy, head
runner, offload client, carbon source, power meter and log, wired into a DeviceLoop.

`carboncp run` and `carboncp demo` both build their devices here. A caller that already holds
a part (the demo shares one head runner, one link shaper and one carbon subscriber between
its three devices) passes it in; everything else comes from the settings.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.artifacts.consistency import check_consistency
from carboncp.runtime.artifacts.runners import Runner, make_runner
from carboncp.runtime.decision.baselines import ArgminPolicy, FixedPolicy
from carboncp.runtime.decision.context import Policy
from carboncp.runtime.decision.costs import CostModel, cost_model_of
from carboncp.runtime.device.inputs import iter_inputs
from carboncp.runtime.device.loop import CarbonSource, DeviceLoop, LoopConfig, StaticCarbon
from carboncp.runtime.device.settings import RunSettings
from carboncp.runtime.errors import BundleError, ConfigError, SignalError
from carboncp.runtime.link.offload import OffloadClient
from carboncp.runtime.link.shaping import LinkShaper
from carboncp.runtime.signals.bandwidth import BandwidthEstimator
from carboncp.runtime.signals.load import LoadSampler
from carboncp.runtime.signals.traces import load_bandwidth_trace, shipped_bandwidth_path


@dataclass
class Device:
    """A wired device: its loop (which holds the bundle, cost model and parts) and the inputs
    it will run."""

    loop: DeviceLoop
    inputs: Iterator[np.ndarray]


def optional_cost_model(bundle: Bundle) -> CostModel | None:
    """The bundle's CostModel (profile + the objective it was built for), or None when the
    bundle has no profile (it can then run only the fixed policies)."""
    if bundle.section("profile") is None:
        return None
    return cost_model_of(bundle, objective_required=False)


def make_policy(settings: RunSettings, bundle: Bundle, cost_model: CostModel | None) -> Policy:
    """The policy the `policy` setting names: the threshold table (mode, alpha and online
    recalibration from the settings), the cost model's argmin, or a fixed partition.

    Raises:
        ConfigError: the policy needs a section (profile, table) the bundle lacks, or names a
            partition the bundle does not have.
    """
    from carboncp.runtime.decision.policy import TablePolicy

    pol = settings.policy
    if pol == "local":
        return FixedPolicy(bundle.last, "local")
    if pol == "server":
        return FixedPolicy(0, "server")
    if pol.startswith("fixed:"):
        p = int(pol.split(":")[1])
        if p > bundle.last:
            raise ConfigError(
                f"setting 'policy': {pol} but the bundle has partitions 0..{bundle.last}"
            )
        return FixedPolicy(p, "fixed")
    if cost_model is None:
        raise ConfigError(
            f"setting 'policy' = {pol!r} needs the bundle's profile; {bundle.path} has none "
            f"(run 'carboncp build', or use policy = 'local' / 'fixed:P')"
        )
    if pol == "argmin":
        return ArgminPolicy(cost_model)
    if not bundle.manifest.get("sections", {}).get("table"):
        raise ConfigError(
            f"setting 'policy' = 'table': {bundle.path} has no threshold table; build it with "
            "'carboncp build' (or use policy = 'argmin' for the cost model's greedy choice)"
        )
    return TablePolicy.from_bundle(
        bundle,
        mode=settings.mode,
        alpha=settings.alpha,
        seed=settings.seed,
        online=settings.online,
    )


def make_shaper(trace: str, scale: float, rtt_ms: float = 0.0) -> LinkShaper:
    """A link shaper pacing sends to a bandwidth trace (a file, or a shipped trace's name)."""
    path = Path(trace) if Path(trace).is_file() else shipped_bandwidth_path(trace)
    return LinkShaper(load_bandwidth_trace(path), scale=scale, rtt_ms=rtt_ms)


def bundle_carbon_signal(bundle: Bundle) -> str:
    """The carbon signal the bundle was built on: its manifest's "carbon_signal"
    ("average/direct" when absent; docs/BUNDLE.md)."""
    from carboncp.runtime.signals.carbon import DEFAULT_SIGNAL, SIGNALS

    sig = bundle.manifest.get("carbon_signal", DEFAULT_SIGNAL)
    if sig not in SIGNALS:
        raise BundleError(
            f"{bundle.path}/manifest.json: carbon_signal {sig!r} is not one of "
            f"{', '.join(SIGNALS)}; rebuild the bundle or fix the manifest"
        )
    return sig


def open_carbon(
    settings: RunSettings, connect_wait_s: float = 5.0, signals: list[str] | None = None
) -> CarbonSource:
    """A started CarbonSubscriber for the device's and the server's zones, accepting
    `settings.carbon_signals` or else `signals` (the bundle's). Before returning it waits up
    to `carbon_wait_s` for both zones' retained values, so that the first inference does not
    run on the fallback when the broker holds fresh values.

    Raises:
        ConfigError: the broker refused the login (an unreachable broker is not fatal: carbon
            uses the fallback until it connects, with a warning on stderr).
    """
    from carboncp.runtime.signals.carbon import DEFAULT_SIGNAL
    from carboncp.runtime.signals.mqtt import CarbonSubscriber

    zones = [settings.device_zone, settings.server_zone]
    sub = CarbonSubscriber(
        settings.broker,
        zones=zones,
        device_id=settings.device_id,
        ttl_s=settings.carbon_ttl_s,
        fallback={"*": settings.carbon_fallback_gco2_per_kwh},
        username=settings.broker_username,
        password=settings.broker_password,
        tls_ca=settings.tls_ca,
        signals=settings.carbon_signals or signals or [DEFAULT_SIGNAL],
        zone_map=settings.carbon_zone_map,
        max_future_s=settings.carbon_max_future_s,
    )
    sub.start()
    try:
        sub.wait_connected(connect_wait_s)
    except SignalError as exc:
        print(
            f"carboncp run: warning: {exc}; carbon uses the fallback until it connects",
            file=sys.stderr,
        )
        return sub
    except ConfigError:
        sub.stop()
        raise
    t0 = time.monotonic()
    for zone in dict.fromkeys(zones):
        left = settings.carbon_wait_s - (time.monotonic() - t0)
        if left <= 0 or not sub.wait_for(zone, lambda r: True, left):
            break
    return sub


def _static_carbon(settings: RunSettings) -> StaticCarbon:
    value = settings.carbon_fallback_gco2_per_kwh
    return StaticCarbon({settings.device_zone: value, settings.server_zone: value})


def _open_meter(settings: RunSettings, cost_model: CostModel | None, stack: contextlib.ExitStack):
    """(meter, power source) for the `power` setting, or (None, None) for 'none'."""
    if settings.power == "none":
        return None, None
    from carboncp.runtime.power import EnergyMeter, open_power_source

    source = open_power_source(settings.power)
    if source is None:
        return None, None
    p_idle = cost_model.profile.p_idle_mw if cost_model is not None else None
    meter = EnergyMeter(source, settings.power_rate_hz, p_idle).start()
    stack.callback(meter.close)
    return meter, source


def _open_log(settings: RunSettings, stack: contextlib.ExitStack):
    if not settings.log:
        return None
    try:
        return stack.enter_context(open(settings.log, "a", encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"setting 'log': cannot open {settings.log} for appending ({exc.strerror})"
        ) from None


def _head_runner(settings: RunSettings, bundle: Bundle, stack: contextlib.ExitStack) -> Runner:
    # Only the LiteRT runner caches heads (settings.max_loaded_heads; 0 = keep all).
    options = {"max_loaded": settings.max_loaded_heads or None}
    head = make_runner(
        bundle,
        backend=settings.backend,
        part="head",
        **(options if settings.backend == "litert" else {}),
    )
    stack.callback(head.close)
    return head


@contextlib.contextmanager
def open_device(
    settings: RunSettings,
    *,
    carbon: CarbonSource | None = None,
    head: Runner | None = None,
    shaper: LinkShaper | None = None,
    estimator: BandwidthEstimator | None = None,
    wrap_policy: Callable[[Policy], Policy] | None = None,
) -> Iterator[Device]:
    """Build a device from `settings` and close everything it opened on exit.

    Parameters:
        settings: checked run settings (`load_settings`).
        carbon, head, shaper, estimator: parts the caller already holds and shares; when
            None they are built from the settings (and closed here).
        wrap_policy: applied to the policy built from the settings (the demo attributes
            each decision change to carbon or the link this way).

    Raises:
        BundleError: the bundle is missing, tampered with or malformed.
        ConfigError: a setting names something unusable (policy, power source, log file).
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    bundle = Bundle.load(settings.bundle)
    check_consistency(bundle)  # wire bytes = dtype x shape; head output = wire = tail input
    cost_model = optional_cost_model(bundle)
    policy = make_policy(settings, bundle, cost_model)
    if wrap_policy is not None:
        policy = wrap_policy(policy)
    with contextlib.ExitStack() as stack:
        if head is None:
            head = _head_runner(settings, bundle, stack)
        tail = None
        if settings.local_tail:
            tail = make_runner(bundle, backend="executorch", part="tail")
            stack.callback(tail.close)
        if shaper is None and settings.shape_trace:
            shaper = make_shaper(settings.shape_trace, settings.shape_scale, settings.shape_rtt_ms)
        client = None
        if settings.server:
            client = OffloadClient(
                settings.server, bundle, token=settings.token, float16=settings.float16,
                shaper=shaper,
            )  # fmt: skip
        if carbon is None and settings.broker:
            carbon = open_carbon(settings, signals=[bundle_carbon_signal(bundle)])
            stack.callback(carbon.stop)  # type: ignore[attr-defined]
        elif carbon is None:
            carbon = _static_carbon(settings)
        meter, power_source = _open_meter(settings, cost_model, stack)
        deadline_ms = settings.deadline_ms or (cost_model.deadline if cost_model else 1000.0)
        loop = DeviceLoop(
            bundle,
            policy,
            head,
            client=client,
            carbon=carbon,
            estimator=estimator or BandwidthEstimator(),
            config=LoopConfig(
                mode=settings.mode,
                deadline_ms=float(deadline_ms),
                device_zone=settings.device_zone,
                server_zone=settings.server_zone,
                carbon_fallback_gco2_per_kwh=settings.carbon_fallback_gco2_per_kwh,
                battery_pct=settings.battery_pct,
                probe_after_s=settings.probe_after_s if settings.probe else None,
                probe_backoff_max_s=settings.probe_backoff_max_s,
                probe_gate=settings.probe_gate,
            ),
            cost_model=cost_model,
            meter=meter,
            power_source=power_source,
            tail_runner=tail,
            load=LoadSampler(settings.device_load),
            log=_open_log(settings, stack),
        )
        inputs = iter_inputs(settings.input, settings.count, bundle.input_shape, settings.seed)
        yield Device(loop, inputs)
