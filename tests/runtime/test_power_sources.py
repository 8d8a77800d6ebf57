"""Power backends against fake sysfs trees, a fake INA219 register model and a stub bridge."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from carboncp.runtime.errors import BackendMissingError, ConfigError, PowerSourceError
from carboncp.runtime.power import SensorFault, open_power_source
from carboncp.runtime.power.ina219 import (
    INA219,
    REG_BUS,
    REG_CALIBRATION,
    REG_CONFIG,
    REG_CURRENT,
    REG_POWER,
    REG_SHUNT,
    calibration,
)
from carboncp.runtime.power.jetson import JetsonRails
from carboncp.runtime.power.serial_bridge import SerialBridgeSource
from carboncp.runtime.power.sysfs import SysfsBattery

from tests.support.requires import unavailable


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


# ---------------------------------------------------------------- sysfs power_supply
def battery_tree(tmp_path: Path, **attrs: str) -> Path:
    files = {"AC/type": "Mains\n", "AC/online": "0\n", "hidpp_battery_0/type": "Battery\n"}
    files["hidpp_battery_0/scope"] = "Device\n"  # a wireless mouse: must not be chosen
    base = {"type": "Battery\n", "status": "Discharging\n"}
    base.update(attrs)
    files.update({f"BAT0/{k}": v for k, v in base.items()})
    return write_tree(tmp_path / "power_supply", files)


def test_sysfs_power_now_and_energy_soc(tmp_path):
    root = battery_tree(
        tmp_path,
        power_now="7250000\n",  # µW
        voltage_now="11400000\n",  # µV
        energy_now="30000000\n",  # µWh
        energy_full="40000000\n",
        capacity="99\n",  # energy ratio wins over capacity
    )
    with SysfsBattery(str(root)) as bat:
        assert bat.battery == "BAT0"
        r = bat.read()
        assert r.power_mw == pytest.approx(7250.0)
        assert r.voltage_mv == pytest.approx(11400.0)
        assert r.current_ma is None  # absent file -> None, not an error
        assert r.soc_pct == pytest.approx(75.0)
        assert r.flags == ()
        assert "BAT0" in repr(bat) and "Discharging" in repr(bat)
    assert repr(bat).endswith("closed>")
    bat.close()  # idempotent
    with pytest.raises(PowerSourceError):
        bat.read()


def test_sysfs_voltage_times_current_charge_and_charging(tmp_path):
    root = battery_tree(
        tmp_path,
        status="Charging\n",
        voltage_now="5000000\n",
        current_now="-600000\n",  # some drivers report a signed current
        charge_now="1000000\n",  # µAh
        charge_full="4000000\n",
    )
    r = SysfsBattery(str(root), "BAT0").read()
    assert r.power_mw == pytest.approx(5000.0 * 600.0 / 1000.0)
    assert r.current_ma == pytest.approx(600.0)
    assert r.soc_pct == pytest.approx(25.0)
    assert "charging" in r.flags


def test_sysfs_capacity_only_soc(tmp_path):
    root = battery_tree(tmp_path, power_now="1000000\n", capacity="42\n")
    assert SysfsBattery(str(root)).read().soc_pct == 42.0


def test_sysfs_missing_battery_names_paths(tmp_path):
    root = write_tree(tmp_path / "ps", {"AC/type": "Mains\n"})
    with pytest.raises(BackendMissingError, match=r"type == 'Battery'") as exc:
        SysfsBattery(str(root))
    assert str(root) in str(exc.value)
    with pytest.raises(BackendMissingError, match="no power_supply directory"):
        SysfsBattery(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- Jetson INA3221
def jp4_tree(tmp_path: Path) -> Path:
    d = "bus/i2c/drivers/ina3221x/1-0040/iio:device0"
    files = {}
    for n, (name, mv, ma, mw) in enumerate(
        [("POM_5V_IN", 5000, 900, 4500), ("POM_5V_GPU", 5000, 100, 500), ("NC", 0, 0, 0)]
    ):
        files[f"{d}/rail_name_{n}"] = name + "\n"
        files[f"{d}/in_voltage{n}_input"] = f"{mv}\n"
        files[f"{d}/in_current{n}_input"] = f"{ma}\n"
        files[f"{d}/in_power{n}_input"] = f"{mw}\n"
    return write_tree(tmp_path / "sys", files)


def jp5_tree(tmp_path: Path, total: str = "VDD_IN") -> Path:
    d = "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    files = {}
    for n, (label, mv, ma) in enumerate(
        [(total, 19000, 300), ("VDD_CPU_GPU_CV", 19000, 100), ("VDD_SOC", 19000, 80)], start=1
    ):
        files[f"{d}/in{n}_label"] = label + "\n"
        files[f"{d}/in{n}_input"] = f"{mv}\n"
        files[f"{d}/curr{n}_input"] = f"{ma}\n"
    files[f"{d}/in7_label"] = "sum of shunt voltages\n"
    files[f"{d}/in7_input"] = "40\n"
    # a second sensor with an NC rail and a rail whose file is unreadable
    d2 = "bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon4"
    files[f"{d2}/in1_label"] = "NC\n"
    files[f"{d2}/in2_label"] = "VDD_DDR\n"
    files[f"{d2}/in2_input"] = "garbage\n"
    files[f"{d2}/curr2_input"] = "10\n"
    return write_tree(tmp_path / "sys", files)


def test_jetson_jp4_iio_total_rail(tmp_path):
    src = JetsonRails(str(jp4_tree(tmp_path)))
    assert src.total == "POM_5V_IN"
    assert set(src.rails) == {"POM_5V_IN", "POM_5V_GPU"}
    assert "NC" in src.skipped
    r = src.read()
    assert (r.power_mw, r.voltage_mv, r.current_ma) == (4500.0, 5000.0, 900.0)
    assert src.read_rails()["POM_5V_GPU"] == 500.0


def test_jetson_jp5_hwmon_skips_nc_shunt_sum_and_broken(tmp_path):
    src = JetsonRails(str(jp5_tree(tmp_path)))
    assert src.total == "VDD_IN"
    assert set(src.rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert "VDD_DDR" in src.skipped and "parse" in src.skipped["VDD_DDR"]
    assert not any("shunt" in k for k in src.rails)
    assert src.read().power_mw == pytest.approx(19000 * 300 / 1000)
    assert "VDD_IN" in repr(src)


def test_jetson_without_total_sums_rails(tmp_path):
    src = JetsonRails(str(jp5_tree(tmp_path, total="VDD_GPU")))
    assert src.total is None
    r = src.read()
    assert r.power_mw == pytest.approx(19000 * (300 + 100 + 80) / 1000)
    assert "rail_sum" in r.flags


def test_jetson_missing_names_both_layouts(tmp_path):
    with pytest.raises(BackendMissingError) as exc:
        JetsonRails(str(tmp_path))
    msg = str(exc.value)
    assert "ina3221x" in msg and "hwmon" in msg and str(tmp_path) in msg


# ---------------------------------------------------------------- INA219
class FakeINA219Bus:
    """Register model of the chip: it does the datasheet's integer math on a true current."""

    def __init__(self, shunt_ohms: float, current_a: float, bus_v: float) -> None:
        self.shunt_ohms, self.current_a, self.bus_v = shunt_ohms, current_a, bus_v
        self.regs = {REG_CONFIG: 0x399F, REG_CALIBRATION: 0}
        self.cnvr = True
        self.closed = False

    def _update(self) -> None:
        shunt = round(self.current_a * self.shunt_ohms / 10e-6)  # 10 µV LSB
        cal = self.regs[REG_CALIBRATION]
        current = math.trunc(shunt * cal / 4096)
        ovf = abs(shunt) > 32000 or not -32768 <= current <= 32767
        bus = round(self.bus_v / 0.004)
        self.regs[REG_SHUNT] = shunt & 0xFFFF
        self.regs[REG_BUS] = (bus << 3) | (0x2 if self.cnvr else 0) | (0x1 if ovf else 0)
        self.regs[REG_CURRENT] = current & 0xFFFF
        self.regs[REG_POWER] = min(0xFFFF, abs(math.trunc(current * bus / 5000)))

    def read_u16(self, address: int, register: int) -> int:
        assert address == 0x41
        self._update()
        if register == REG_POWER:
            self.cnvr = False  # datasheet: reading power clears CNVR
        return self.regs[register]

    def write_u16(self, address: int, register: int, value: int) -> None:
        self.regs[register] = value

    def close(self) -> None:
        self.closed = True


def test_ina219_calibration_matches_datasheet_example():
    # Cal = 0.04096 / (Current_LSB * R): 100 µA LSB (max 3.2768 A) on 0.05 ohm -> 8192,
    # 100 µA on 0.1 ohm (max 3.2 A rounds the LSB down) -> 4194
    cal, lsb, plsb = calibration(0.05, 3.2768)
    assert cal == 8192
    assert calibration(0.1, 3.2)[0] == 4194
    assert lsb == pytest.approx(100e-6)
    assert plsb == pytest.approx(2e-3)
    with pytest.raises(ConfigError, match="shunt range"):
        calibration(0.1, 5.0)  # 0.5 V across the shunt is beyond the PGA


@pytest.mark.parametrize("current_a", [0.25, 1.3, -0.4, 2.9])
def test_ina219_readings_from_register_math(current_a):
    bus = FakeINA219Bus(0.1, current_a, 5.1)
    ina = INA219(1, 0x41, shunt_ohms=0.1, max_expected_a=3.2, i2c=bus)
    assert bus.regs[REG_CALIBRATION] == ina.cal
    r = ina.read()
    assert r.voltage_mv == pytest.approx(5100.0, abs=4)
    assert r.current_ma == pytest.approx(current_a * 1000, abs=2 * ina.current_lsb_a * 1000)
    assert r.power_mw == pytest.approx(
        abs(current_a) * 5100, rel=0.01, abs=3 * ina.power_lsb_w * 1e3
    )
    assert "repeat" not in r.flags
    # CNVR was cleared by the power read and no new conversion came: flagged as a repeat
    assert "repeat" in ina.read().flags
    ina.close()
    ina.close()
    assert not bus.closed  # an injected bus belongs to the caller


def test_ina219_overflow_raises_not_returned():
    bus = FakeINA219Bus(0.1, 3.0, 12.0)
    ina = INA219(1, 0x41, shunt_ohms=0.1, max_expected_a=1.0, i2c=bus)  # cal too high for 3 A
    with pytest.raises(SensorFault) as exc:
        ina.read()
    assert exc.value.kind == "overflow"
    assert ina.overflows == 1


def test_ina219_lost_calibration_is_rewritten():
    bus = FakeINA219Bus(0.1, 1.0, 5.0)
    ina = INA219(1, 0x41, i2c=bus)
    bus.regs[REG_CALIBRATION] = 0  # brown-out reset
    with pytest.raises(SensorFault, match="lost calibration"):
        ina.read()
    bus.cnvr = True
    assert ina.read().current_ma == pytest.approx(1000, abs=1)


def test_ina219_missing_bus_names_device():
    if os.path.exists("/dev/i2c-97"):
        unavailable("/dev/i2c-97 exists on this machine: the missing-bus case cannot be made")
    with pytest.raises(BackendMissingError, match="/dev/i2c-97"):
        open_power_source("ina219:97:0x40")


# ---------------------------------------------------------------- serial bridge
class StubSample:
    def __init__(self, seq, t, mw):
        self.seq, self.mcu_us, self.host_t_s = seq, seq * 1000, t
        self.bus_voltage_mv, self.current_ma, self.power_mw = 5000.0, mw / 5.0, mw


class StubReader:
    def __init__(self):
        self.started = self.closed = 0
        self.samples = [StubSample(i, 10.0 + i * 0.001, 2000.0) for i in range(1000)]
        self.stats = {"crc_errors": 0}

    def start(self):
        self.started += 1

    def close(self):
        self.closed += 1

    def latest(self):
        return self.samples[-1] if self.samples else None

    def samples_between(self, t0, t1):
        return [s for s in self.samples if t0 <= s.host_t_s <= t1]

    def energy_j(self, t0, t1, wait_s=0.0):
        if not self.samples_between(t0 - 0.01, t1 + 0.01):
            raise OSError("no sample within or around the window")  # as BridgeError does
        return 2.0 * (t1 - t0)


def test_serial_bridge_start_failure_names_port():
    class Dead(StubReader):
        def start(self):
            raise OSError("no answer from the bridge within the connect timeout")

    reader = Dead()
    with pytest.raises(BackendMissingError, match="/dev/ttyGONE"):
        SerialBridgeSource("/dev/ttyGONE", reader=reader)
    assert reader.closed == 1


def test_serial_bridge_wraps_reader():
    reader = StubReader()
    src = SerialBridgeSource("/dev/ttyFAKE", reader=reader)
    assert reader.started == 1
    r = src.read()
    assert (r.power_mw, r.voltage_mv, r.t_s) == (2000.0, 5000.0, reader.samples[-1].host_t_s)
    assert "repeat" in src.read().flags
    e, n = src.energy_between(10.1, 10.3)
    assert e == pytest.approx(0.4) and n == 201
    with pytest.raises(SensorFault):
        src.energy_between(20.0, 21.0)
    src.close()
    src.close()
    assert reader.closed == 1
    reader.samples = []
    with pytest.raises(PowerSourceError):
        src.read()


# ---------------------------------------------------------------- specs
def test_open_power_source_specs(tmp_path):
    assert open_power_source("none") is None
    fake = open_power_source("fake", power_mw=321.0)
    assert fake.read().power_mw == 321.0
    with pytest.raises(ConfigError, match="unknown power source"):
        open_power_source("bogus")
    with pytest.raises(ConfigError, match="needs a port"):
        open_power_source("serial")
    root = battery_tree(tmp_path, power_now="1000000\n")
    bat = open_power_source("sysfs:BAT0", root=str(root))
    assert bat.read().power_mw == 1000.0
    jet = open_power_source("jetson", root=str(jp4_tree(tmp_path)))
    assert jet.total == "POM_5V_IN"
