"""Run the device loop: decide per input where to split the model, run, offload, record.

For each input the device reads its context (bandwidth/RTT estimate, load, carbon of both
zones over MQTT, battery), decides with the bundle's threshold table in the chosen mode,
runs the head, sends the rest to the edge server within the transfer deadline, finishes
locally when the server fails, and writes one JSON line per inference.

Example:
  carboncp run --bundle models/resnet18-rpi4 --broker mqtt://broker.lan:1883 \\
      --server http://edge.lan:8000 --power ina219 --mode A --input images/ --count 1000 \\
      --device-zone DE-LU --server-zone GB --log run.jsonl

Every setting can come from a TOML file (--config run.toml; see deploy/run.example.toml);
command-line flags override it. --shape-trace paces the offload link to a bandwidth trace
(a file, or a shipped trace name) scaled by --shape-scale, to emulate a device link on one
machine. Without --broker the carbon intensities are fixed (carbon_fallback_gco2_per_kwh).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from carboncp.runtime.errors import CarbonCPError

HELP = "run the decide-run-offload loop on a device"

_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("bundle", str, "bundle folder"),
    ("broker", str, "MQTT broker for carbon signals, mqtt://HOST:PORT (mqtts:// for TLS)"),
    ("server", str, "edge server, http://HOST:PORT (none: local only)"),
    ("token", str, "bearer token for the edge server"),
    ("power", str, "power source: none, sysfs[:NAME], ina219[:BUS[:ADDR]], jetson, serial:PORT"),
    ("mode", str, "decision mode A, M or R (default A)"),
    ("policy", str, "table (default), argmin, local, server or fixed:P"),
    ("input", str, "folder of .npy uint8 images (PNG/JPEG with Pillow), or 'random'"),
    ("count", int, "number of inferences"),
    ("log", str, "JSON-lines log file (default: stdout summary only)"),
    ("device_zone", str, "grid zone charging the device (default DE-LU)"),
    ("server_zone", str, "grid zone of the edge server (default GB)"),
    ("shape_trace", str, "pace the offload link to this bandwidth trace (file or shipped name)"),
    ("shape_scale", float, "multiply the shaping trace's rate by K"),
    ("deadline_ms", float, "transfer deadline (default: the bundle objective's)"),
    ("interval_s", float, "pause between inferences"),
    ("device_load", float, "fix the device load u in [0,1] instead of reading /proc"),
    ("backend", str, "head runner: litert (default) or executorch"),
    (
        "max_loaded_heads",
        int,
        "LiteRT heads kept loaded, least recently used evicted (default 1; 0 = all)",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (flags override it)")
    for key, typ, text in _FLAGS:
        parser.add_argument(
            "--" + key.replace("_", "-"), dest=key, type=typ, default=None, help=text
        )
    parser.add_argument(
        "--float16", action="store_true", default=None, help="send activations as float16"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-inference progress")


def run(args: argparse.Namespace) -> int:
    from carboncp.runtime.settings import KEYS, load_settings

    overrides = {k: getattr(args, k, None) for k in KEYS if hasattr(args, k)}
    settings = load_settings(args.config, overrides)
    with assemble(settings) as (loop, inputs, _log):
        n = 0
        t0 = time.monotonic()
        records = loop.run(inputs)
        while True:
            try:
                rec = next(records)
            except StopIteration:
                break
            except CarbonCPError:
                raise
            except Exception as exc:  # neither the device nor a server could compute it
                raise CarbonCPError(
                    f"inference {n + 1}: the device could not run the model and no edge server "
                    f"took it ({type(exc).__name__}: {exc}); check the bundle with "
                    "'carboncp inspect' and the 'server' setting"
                ) from exc
            n += 1
            if not args.quiet:
                fb = f" fallback={'+'.join(rec.fallbacks)}" if rec.fallbacks else ""
                print(
                    f"[{n}/{settings.count}] p={rec.partition} set={rec.candidates} "
                    f"{rec.latency_ms:.1f} ms B^={rec.seen['bandwidth_mbps']:.1f} Mbit/s "
                    f"I_d={rec.seen['device_gco2_per_kwh']:.0f} I_s={rec.seen['server_gco2_per_kwh']:.0f}{fb}",
                    file=sys.stderr,
                )
            if settings.interval_s:
                time.sleep(settings.interval_s)
        c = loop.counters
        print(
            f"carboncp run: {n} inferences in {time.monotonic() - t0:.1f} s: "
            f"{c['local']} local, {c['offloaded']} offloaded, {c['fallback']} fell back"
            + (f"; log {settings.log}" if settings.log else "")
        )
    return 0


def make_policy(settings: Any, bundle: Any, cost_model: Any) -> Any:
    from carboncp.runtime.errors import ConfigError
    from carboncp.runtime.policy_fixed import ArgminPolicy, FixedPolicy

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
    from carboncp.runtime.policy import TablePolicy

    return TablePolicy.from_bundle(
        bundle, mode=settings.mode, alpha=settings.alpha, seed=settings.seed
    )


def cost_model_of(bundle: Any) -> Any:
    """The bundle's CostModel (profile + the objective it was built for), or None."""
    if bundle.section("profile") is None:
        return None
    from carboncp.runtime.costs import cost_model_of as bundle_cost_model

    return bundle_cost_model(bundle, objective_required=False)


def iter_inputs(source: str, count: int, shape: tuple[int, ...], seed: int = 0) -> Iterator[Any]:
    """`count` uint8 images of `shape`: random, or cycled from a folder of .npy/PNG/JPEG."""
    import numpy as np
    from carboncp.runtime.errors import ConfigError

    if source == "random":
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield rng.integers(0, 256, size=shape, dtype=np.uint8)
        return
    folder = Path(source)
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".npy", ".png", ".jpg", ".jpeg")
    )
    if not files:
        raise ConfigError(f"setting 'input': {folder} has no .npy, .png or .jpg files")
    images = [_load_image(p, shape) for p in files]
    for i in range(count):
        yield images[i % len(images)]


def _load_image(path: Path, shape: tuple[int, ...]) -> Any:
    import numpy as np
    from carboncp.runtime.errors import ConfigError

    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"input {path}: not a readable .npy array ({exc})") from None
    else:
        try:
            from PIL import Image
        except ImportError:
            raise ConfigError(
                f"input {path}: PNG/JPEG inputs need Pillow (pip install pillow); or convert "
                "the images to .npy uint8 arrays"
            ) from None
        _, c, h, w = shape
        try:
            with Image.open(path) as im:
                img = im.convert("RGB" if c == 3 else "L").resize((w, h))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # not an image
            raise ConfigError(f"input {path}: not a readable image ({exc})") from None
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]
    if arr.dtype != np.uint8:
        raise ConfigError(f"input {path}: dtype {arr.dtype}, the model takes uint8 images")
    if arr.shape == shape[1:]:
        arr = arr[None]
    if tuple(arr.shape) != tuple(shape):
        raise ConfigError(f"input {path}: shape {list(arr.shape)}, the model takes {list(shape)}")
    return np.ascontiguousarray(arr)


@contextlib.contextmanager
def assemble(settings: Any, carbon: Any = None) -> Iterator[tuple[Any, Iterator[Any], Any]]:
    """Build the loop from settings; yields (loop, inputs, log file) and closes everything."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from carboncp.runtime.bandwidth import BandwidthEstimator
    from carboncp.runtime.bundle import Bundle
    from carboncp.runtime.errors import ConfigError
    from carboncp.runtime.loop import DeviceLoop, LoadSampler, LoopConfig, StaticCarbon
    from carboncp.runtime.offload import OffloadClient
    from carboncp.runtime.runners import make_runner

    bundle = Bundle.load(settings.bundle)
    cost_model = cost_model_of(bundle)
    policy = make_policy(settings, bundle, cost_model)
    # Only the LiteRT runner caches heads (settings.max_loaded_heads; 0 = keep all).
    litert = settings.backend == "litert"
    options = {"max_loaded": settings.max_loaded_heads or None} if litert else {}
    head = make_runner(bundle, backend=settings.backend, part="head", **options)
    with contextlib.ExitStack() as stack:
        stack.callback(head.close)
        tail = None
        if settings.local_tail:
            tail = make_runner(bundle, backend="executorch", part="tail")
            stack.callback(tail.close)
        shaper = None
        if settings.shape_trace:
            shaper = make_shaper(settings.shape_trace, settings.shape_scale, settings.shape_rtt_ms)
        client = None
        if settings.server:
            client = OffloadClient(
                settings.server,
                bundle,
                token=settings.token,
                float16=settings.float16,
                shaper=shaper,
            )
        if carbon is None and settings.broker:
            carbon = open_carbon(settings)
            stack.callback(carbon.stop)
        elif carbon is None:
            carbon = StaticCarbon(
                {
                    settings.device_zone: settings.carbon_fallback_gco2_per_kwh,
                    settings.server_zone: settings.carbon_fallback_gco2_per_kwh,
                }
            )
        meter = power_source = None
        if settings.power != "none":
            from carboncp.runtime.power import EnergyMeter, open_power_source

            power_source = open_power_source(settings.power)
            if power_source is not None:
                p_idle = cost_model.profile.p_idle_mw if cost_model is not None else None
                meter = EnergyMeter(power_source, settings.power_rate_hz, p_idle).start()
                stack.callback(meter.close)
        deadline_ms = settings.deadline_ms or (cost_model.deadline if cost_model else 1000.0)
        log = None
        if settings.log:
            try:
                log = stack.enter_context(open(settings.log, "a", encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(
                    f"setting 'log': cannot open {settings.log} for appending ({exc.strerror})"
                ) from None
        loop = DeviceLoop(
            bundle,
            policy,
            head,
            client=client,
            carbon=carbon,
            estimator=BandwidthEstimator(),
            config=LoopConfig(
                mode=settings.mode,
                deadline_ms=float(deadline_ms),
                device_zone=settings.device_zone,
                server_zone=settings.server_zone,
                carbon_fallback_gco2_per_kwh=settings.carbon_fallback_gco2_per_kwh,
                battery_pct=settings.battery_pct,
                probe_after_s=settings.probe_after_s,
            ),
            cost_model=cost_model,
            meter=meter,
            power_source=power_source,
            tail_runner=tail,
            load=LoadSampler(settings.device_load),
            log=log,
        )
        inputs = iter_inputs(settings.input, settings.count, bundle.input_shape, settings.seed)
        yield loop, inputs, log


def make_shaper(trace: str, scale: float, rtt_ms: float = 0.0) -> Any:
    from carboncp.runtime.shaping import LinkShaper
    from carboncp.runtime.traces import load_bandwidth_trace, shipped_bandwidth_path

    path = Path(trace) if Path(trace).is_file() else shipped_bandwidth_path(trace)
    return LinkShaper(load_bandwidth_trace(path), scale=scale, rtt_ms=rtt_ms)


def open_carbon(settings: Any, connect_wait_s: float = 5.0) -> Any:
    """A started CarbonSubscriber for the device's and the server's zones."""
    from carboncp.runtime.errors import ConfigError, SignalError
    from carboncp.runtime.mqtt import CarbonSubscriber

    sub = CarbonSubscriber(
        settings.broker,
        zones=[settings.device_zone, settings.server_zone],
        device_id=settings.device_id,
        ttl_s=settings.carbon_ttl_s,
        fallback={"*": settings.carbon_fallback_gco2_per_kwh},
        username=settings.broker_username,
        password=settings.broker_password,
        tls_ca=settings.tls_ca,
    )
    sub.start()
    try:  # a refused login is a configuration error; an unreachable broker is not fatal
        sub.wait_connected(connect_wait_s)
    except SignalError as exc:
        print(
            f"carboncp run: warning: {exc}; carbon uses the fallback until it connects",
            file=sys.stderr,
        )
    except ConfigError:
        sub.stop()
        raise
    return sub
