"""Check an INA219 power-monitor bridge: live readings, then a summary.

Opens the bridge's serial port (a Raspberry Pi Pico running firmware_bridge/firmware),
asks for a sample rate, prints a few readings per second and ends with mean/min/max power,
energy, the sample rate achieved and the link's error counters. Use it to check the wiring.

Example:
    carboncp power-monitor --port /dev/ttyACM0 --rate 1000 --seconds 10

Without hardware, run the real firmware against a simulated INA219 on a pty:
    python -m carboncp.firmware_bridge.sim --link /tmp/ina219 &
    carboncp power-monitor --port /tmp/ina219 --seconds 5
--port takes anything pyserial's serial_for_url accepts (a device path, a pty, rfc2217://...).
"""

from __future__ import annotations

import argparse
import sys
import time

HELP = "read an INA219 bridge over USB serial: live power readings and a summary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True, help="serial port or pyserial URL")
    parser.add_argument("--rate", type=int, default=1000, help="sample rate in Hz (default 1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to read (default 10)")
    parser.add_argument("--baud", type=int, default=115200, help="baud rate (USB CDC ignores it)")
    parser.add_argument(
        "--shunt-ohms",
        type=float,
        help="shunt resistance; with --max-current-a, recalibrates the INA219",
    )
    parser.add_argument("--max-current-a", type=float, help="maximum expected current in A")
    parser.add_argument(
        "--print-hz", type=float, default=4.0, help="live lines per second (default 4)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1.0, help="seconds of silence that count as a stall"
    )
    parser.add_argument("--csv", help="also write every sample to this CSV file")
    parser.add_argument("--plot", help="also plot power and bus voltage to this PNG (matplotlib)")


def _fail(msg: str) -> int:
    print(f"carboncp power-monitor: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from .host import BridgeError, BridgeReader

    if not 1 <= args.rate <= 65535:
        return _fail(f"--rate must be between 1 and 65535 Hz, got {args.rate}")
    if not args.seconds > 0 or not args.print_hz > 0 or not args.timeout > 0:
        return _fail("--seconds, --print-hz and --timeout must be positive")
    if (args.shunt_ohms is None) != (args.max_current_a is None):
        return _fail("give --shunt-ohms and --max-current-a together (or neither)")
    if args.plot:
        try:
            import matplotlib  # noqa: F401 - checked before minutes of reading, not after
        except ImportError:
            return _fail("--plot needs matplotlib: pip install matplotlib")
    cal = None
    if args.shunt_ohms is not None:
        if not (args.shunt_ohms > 0 and args.max_current_a > 0):
            return _fail("--shunt-ohms and --max-current-a must be positive")
        cal = (args.shunt_ohms, args.max_current_a)

    reader = BridgeReader(
        args.port, baudrate=args.baud, rate_hz=args.rate, timeout_s=args.timeout, calibration=cal
    )
    try:
        reader.start()
    except BridgeError as exc:
        return _fail(str(exc))
    try:
        return _monitor(reader, args)
    except BridgeError as exc:
        return _fail(str(exc))
    finally:
        reader.close()


def _monitor(reader, args: argparse.Namespace) -> int:
    dev = reader.device
    if dev is not None:
        print(
            f"{dev.name} firmware {dev.firmware_version} protocol v{dev.protocol_version} on "
            f"{args.port}: shunt {dev.shunt_uohm / 1e6:g} ohm, cal {dev.calibration}, "
            f"current LSB {dev.current_lsb_pa / 1e6:.3f} uA, rate {args.rate} Hz",
            flush=True,
        )
    t_begin = time.monotonic()
    t_end = t_begin + args.seconds
    try:
        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            time.sleep(min(1.0 / args.print_hz, t_end - now))
            s = reader.latest()
            st = reader.stats
            if s is None:
                print(f"{time.monotonic() - t_begin:6.2f} s  (no samples yet)", flush=True)
                continue
            print(
                f"{s.host_t_s - t_begin:6.2f} s  {s.bus_voltage_mv / 1000:6.3f} V  "
                f"{s.current_ma:8.2f} mA  {s.power_mw:9.2f} mW   "
                f"[ok {st.frames_ok}, lost {st.lost_samples}, crc {st.crc_errors}]",
                flush=True,
            )
    except KeyboardInterrupt:
        print("interrupted; summary so far:", file=sys.stderr)
    reader.wait_for(min(time.monotonic(), t_end), timeout_s=0.2)
    t_stop = time.monotonic()
    _summary(reader, t_begin, t_stop)
    samples = reader.samples_between(t_begin, t_stop)
    if args.csv:
        _write_csv(args.csv, samples)
        print(f"wrote {len(samples)} samples to {args.csv}")
    if args.plot and samples:
        _plot(args.plot, samples, t_begin, args.port)
        print(f"wrote {args.plot}")
    return 0


def _write_csv(path: str, samples: list) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["seq", "mcu_us", "host_t_s", "bus_voltage_mv", "current_ma", "power_mw", "flags"]
        )
        for s in samples:
            w.writerow(
                [
                    s.seq,
                    s.mcu_us,
                    f"{s.host_t_s:.6f}",
                    s.bus_voltage_mv,
                    s.current_ma,
                    s.power_mw,
                    s.flags,
                ]
            )


def _plot(path: str, samples: list, t0: float, port: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.host_t_s - t0 for s in samples]
    fig, (ax_p, ax_v) = plt.subplots(2, 1, sharex=True, figsize=(9, 5), height_ratios=[3, 1])
    ax_p.plot(t, [s.power_mw for s in samples], lw=0.6)
    ax_p.set_ylabel("power (mW)")
    ax_p.set_title(f"INA219 bridge on {port}: {len(samples)} samples")
    ax_v.plot(t, [s.bus_voltage_mv / 1000 for s in samples], lw=0.6, color="tab:orange")
    ax_v.set_ylabel("bus (V)")
    ax_v.set_xlabel("host time since start (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _summary(reader, t0: float, t1: float) -> None:
    samples = reader.samples_between(t0, t1)
    st = reader.stats
    print("--- summary ---")
    if len(samples) < 2:
        print(f"only {len(samples)} samples received: check the wiring and the port")
    else:
        powers = [s.power_mw for s in samples]
        first, last = samples[0], samples[-1]
        span_s = (last.mcu_us - first.mcu_us) / 1e6
        energy = reader.energy_j(first.host_t_s, last.host_t_s)
        rate = (len(samples) - 1) / span_s if span_s > 0 else float("nan")
        print(f"samples        {len(samples)} over {span_s:.3f} s (device clock)")
        print(f"sample rate    {rate:.1f} Hz achieved")
        print(
            f"power          mean {sum(powers) / len(powers):.1f} mW, "
            f"min {min(powers):.1f} mW, max {max(powers):.1f} mW"
        )
        print(f"energy         {energy:.4f} J")
        print(f"bus voltage    {samples[-1].bus_voltage_mv / 1000:.3f} V (last)")
    print(
        f"link           frames ok {st.frames_ok}, crc errors {st.crc_errors}, framing errors "
        f"{st.framing_errors}, lost samples {st.lost_samples}, timeouts {st.timeouts}, "
        f"reconnects {st.reconnects}, device errors {st.device_errors}"
    )
    if reader.last_device_error is not None:
        print(f"last device error: {reader.last_device_error.describe()}")
