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
command-line flags override it. Carbon messages the device refuses are counted per reason in
every record ("carbon_refused"), named on stderr the first time a reason occurs, and summed in
the exit summary. --shape-trace paces the offload link to a bandwidth trace
(a file, or a shipped trace name) scaled by --shape-scale, to emulate a device link on one
machine. Without --broker the carbon intensities are fixed (carbon_fallback_gco2_per_kwh).

The link estimate comes from the device's own transfers over a sliding window; when no
transfer or probe has measured the link for --probe-after-s (10 s), the device probes it
(32 KiB to the server) before its next decision, doubling the wait after each probe (at most
--probe-backoff-max-s, 300 s) until a transfer succeeds, so that it finds the link again after
a server stall or an outage. Each probe's bytes, time and energy are in that inference's
record ("probe") and modelled energy and carbon; the exit summary sums them. A due probe runs
only when knowing the link is worth more to the decisions it informs than the probe costs
(the record's "probe_skipped" says so when it is not; --no-probe-gate runs every due probe).
--no-probe turns probing off.
"""

from __future__ import annotations

import argparse
import sys
import time

from carboncp.runtime.errors import CarbonCPError

HELP = "run the decide-run-offload loop on a device"

_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("bundle", str, "bundle folder"),
    ("broker", str, "MQTT broker for carbon signals, mqtt://HOST:PORT (mqtts:// for TLS)"),
    ("server", str, "edge server, http://HOST:PORT (none: local only)"),
    ("token", str, "bearer token for the edge server"),
    (
        "power",
        str,
        "power source: none, sysfs[:NAME], ina219[:BUS[:ADDR]], jetson, serial:PORT, or fake "
        "(a constant 1 W for tests and demos; records flag its energy 'fake_power')",
    ),
    ("mode", str, "decision mode A, M or R (default A)"),
    ("policy", str, "table (default), argmin, local, server or fixed:P"),
    (
        "online",
        str,
        "the table's online recalibration: aci (default), weighted (weighted CP, ACI below "
        "its ESS floor) or split (the table's fixed threshold)",
    ),
    ("alpha", float, "miscoverage α in (0, 1) of the conformal set (default: the table's)"),
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
    (
        "probe_after_s",
        float,
        "probe the link (32 KiB to the server, before a decision) when no transfer or probe "
        "has measured it for this long (default 10); each probe doubles the wait until a "
        "transfer succeeds",
    ),
    ("probe_backoff_max_s", float, "longest wait between probes while backing off (default 300)"),
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
    parser.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        default=None,
        help="never probe the link: only transfers measure it (a device that stops offloading "
        "then keeps its last estimate, e.g. one pulled down by a server stall)",
    )
    parser.add_argument(
        "--no-probe-gate",
        dest="probe_gate",
        action="store_false",
        default=None,
        help="run every due probe; by default a probe runs only when knowing the link is worth "
        "more to the decisions it informs than the probe's own energy (a device that infers "
        "rarely would otherwise probe before most inferences)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-inference progress")


def run(args: argparse.Namespace) -> int:
    from carboncp.runtime.device.settings import KEYS, load_settings
    from carboncp.runtime.device.wiring import open_device

    overrides = {k: getattr(args, k, None) for k in KEYS if hasattr(args, k)}
    settings = load_settings(args.config, overrides)
    with open_device(settings) as device:
        loop, inputs = device.loop, device.inputs
        n = 0
        warned: set[str] = set()
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
            warned = _warn_refusals(loop.carbon, warned)
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
            + _probe_summary(loop.estimator.probe_cost)
            + (f"; log {settings.log}" if settings.log else "")
        )
        carbon_line = _carbon_summary(loop.carbon)
        if carbon_line:
            print(carbon_line)
    return 0


def _probe_summary(cost: object) -> str:
    """'; N link probes (K KiB, T s, E J, F failed)' when the device probed."""
    n = getattr(cost, "probes", 0)
    if not n:
        return ""
    return (
        f"; {n} link probe{'s' if n != 1 else ''} ({getattr(cost, 'bytes', 0) / 1024:.0f} KiB, "
        f"{getattr(cost, 'time_s', 0.0):.2f} s, {getattr(cost, 'energy_j', 0.0):.3f} J, "
        f"{getattr(cost, 'failures', 0)} failed)"
    )


def _warn_refusals(carbon: object, warned: set[str]) -> set[str]:
    """One line on stderr the first time carbon messages are refused for a reason."""
    messages = getattr(carbon, "refusal_messages", None)
    if messages is None:
        return warned
    for reason, message in messages().items():
        if reason not in warned:
            warned = warned | {reason}
            print(f"carboncp run: warning: carbon message refused ({message})", file=sys.stderr)
    return warned


def _carbon_summary(carbon: object) -> str | None:
    """'carbon: N received, M accepted, refused {reason: count}' for an MQTT carbon source."""
    stats = getattr(carbon, "stats", None)
    if not isinstance(stats, dict):
        return None
    refused = {k: v for k, v in sorted(stats.get("errors", {}).items()) if v}
    text = ", ".join(f"{k} {v}" for k, v in refused.items()) or "none"
    return (
        f"carboncp run: carbon messages: {stats['received']} received, {stats['accepted']} "
        f"accepted, refused: {text}"
    )
