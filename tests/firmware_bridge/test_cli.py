"""`carboncp power-monitor` against the simulated device on a pty, and its error paths."""

from __future__ import annotations

import argparse
import re

from carboncp.firmware_bridge import cli
from carboncp.firmware_bridge.sim import SimulatedDevice


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_live_readings_and_summary(capsys):
    with SimulatedDevice(rate_hz=200) as dev:
        rc = cli.run(_args("--port", dev.path, "--rate", "500", "--seconds", "0.8"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "carboncp-ina219" in out and "--- summary ---" in out
    live = [ln for ln in out.splitlines() if re.match(r"\s*\d+\.\d+ s\s+\d", ln)]
    assert len(live) >= 2
    rate = float(re.search(r"sample rate\s+([\d.]+) Hz", out).group(1))
    assert 20 < rate <= 505  # asked 500 Hz (CPython firmware on a busy machine skips ticks)
    mean_mw = float(re.search(r"mean ([\d.]+) mW", out).group(1))
    assert 0.3 * 5100 < mean_mw < 1.3 * 5100  # the fake load: 5.1 V x (0.8 +- 0.4) A


def test_csv_and_plot_outputs(tmp_path, capsys):
    csv_path, png_path = tmp_path / "s.csv", tmp_path / "p.png"
    with SimulatedDevice() as dev:
        rc = cli.run(
            _args(
                "--port",
                dev.path,
                "--seconds",
                "0.4",
                "--csv",
                str(csv_path),
                "--plot",
                str(png_path),
            )
        )
    assert rc == 0
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("seq,mcu_us,host_t_s") and len(rows) > 20
    seqs = [int(r.split(",")[0]) for r in rows[1:]]
    assert seqs == sorted(seqs)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recalibration_option(capsys):
    with SimulatedDevice() as dev:
        rc = cli.run(
            _args(
                "--port",
                dev.path,
                "--seconds",
                "0.3",
                "--shunt-ohms",
                "0.1",
                "--max-current-a",
                "2",
            )
        )
        cal = dev.sensor.regs[0x05]
    assert rc == 0 and cal == 6710  # trunc(0.04096 / (2/2**15 * 0.1)), even


def test_missing_port_clear_error(tmp_path, capsys):
    rc = cli.run(_args("--port", str(tmp_path / "ttyACM9"), "--seconds", "1"))
    err = capsys.readouterr().err
    assert rc == 2
    assert "cannot open serial port" in err and "Traceback" not in err


def test_bad_arguments(capsys):
    assert cli.run(_args("--port", "x", "--rate", "0")) == 2
    assert cli.run(_args("--port", "x", "--shunt-ohms", "0.1")) == 2
    assert "together" in capsys.readouterr().err


def test_command_module_contract():
    assert isinstance(cli.HELP, str) and "\n" not in cli.HELP
    assert "carboncp power-monitor --port" in (cli.__doc__ or "")
