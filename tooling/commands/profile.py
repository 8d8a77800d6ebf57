"""Profile a bundle for a device and record the objective it will be built for.

Measures on this machine, with the runtime's own runners: every head's latency (median and
p90 after warm-up), every tail's latency, and the slow-down of the full model under real
background CPU load (duty-cycled busy-loop processes at several levels, always stopped).
Power, radio and battery come from a device profile (idle and active power from a power
source instead with --power-source, when this machine is the device); for a device that is not this machine
(rpi4, jetson-orin-nano) the head latencies are this host's scaled by the documented factor
in that profile (run this command on the device itself with --device-profile host, or a
copy of the profile with measured = true, to use real measurements). Writes the bundle's
'profile' and 'objective' sections (profile.json, objective.json, sha256 in the manifest).

Examples:
  carboncp profile models/resnet18 --device-profile rpi4
  carboncp profile models/resnet18 --device-profile my_board.toml --objective obj.toml --quick
"""

from __future__ import annotations

import argparse

HELP = "measure head/tail latencies and load slow-down; write the bundle's profile and objective"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle folder (from 'carboncp export')")
    parser.add_argument(
        "--device-profile",
        default="host",
        metavar="NAME|FILE",
        help="host (default), rpi4, jetson-orin-nano, or a device profile TOML file",
    )
    parser.add_argument(
        "--objective",
        metavar="TOML",
        help="objective config (docs/objective.example.toml); default: the bundle's, or defaults",
    )
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed runs per head/tail (default 20)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 repeats, load levels 0 and 1 only (for tests)"
    )
    parser.add_argument(
        "--backend",
        default="litert",
        choices=("litert", "executorch"),
        help="runner for the device's heads (default litert)",
    )
    parser.add_argument(
        "--wire",
        default="float32",
        choices=("float32", "float16"),
        help="activation dtype on the link (the image at p = 0 is always uint8)",
    )
    parser.add_argument(
        "--power-source",
        metavar="SPEC",
        help="measure idle/active power here: ina219[:BUS[:ADDR]], jetson, sysfs[:NAME], "
        "serial:PORT (with --device-profile host or a measured profile)",
    )
    parser.add_argument("--plot", metavar="PNG", help="also draw the profile into this PNG file")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # ExecuTorch timings scatter otherwise
    from carboncp.runtime.checks import check_number
    from carboncp.tooling.profile import plot_profile, profile_bundle

    check_number(args.repeats, "--repeats", lo=1, integer=True)

    prof = profile_bundle(
        args.bundle,
        device_profile=args.device_profile,
        repeats=args.repeats,
        progress=not args.quiet,
        objective=args.objective,
        quick=args.quick,
        head_backend=args.backend,
        wire_dtype=args.wire,
        power_source=args.power_source,
    )
    print(f"device {prof.device}: partitions 0..{prof.last}")
    print(f"{'p':>3} {'cut':<14} {'tau_d ms':>10} {'p90 ms':>10} {'tau_s ms':>10} {'wire B':>10}")
    for p in range(prof.last + 1):
        cut = prof.cuts[p] if p < len(prof.cuts) else ""
        print(
            f"{p:>3} {cut:<14} {prof.device_ms[p]:>10.3f} {prof.device_ms_p90[p]:>10.3f} "
            f"{prof.server_ms[p]:>10.3f} {int(prof.wire_bytes[p]):>10d}"
        )
    g = ", ".join(
        f"g({u:g})={v:.2f}" for u, v in zip(prof.device_load_u, prof.device_slowdown_g, strict=True)
    )
    print(f"device slow-down: {g}")
    if args.plot:
        print(f"plot: {plot_profile(prof, args.plot)}")
    return 0
