"""INA219 driver for MicroPython (runs unchanged under CPython with a fake I2C bus).

Register map (TI INA219 datasheet, SBOS448): 0x00 configuration, 0x01 shunt voltage
(10 uV/LSB), 0x02 bus voltage (bits 15..3, 4 mV/LSB; bit 1 CNVR, bit 0 OVF), 0x03 power,
0x04 current, 0x05 calibration. All registers are 16-bit big-endian; the chip has no
register auto-increment, so each register is one I2C transaction.

Calibration (datasheet section 8.5.1), in integers so MicroPython and CPython agree exactly:
    Current_LSB = max_expected_A / 2**15            (or a rounder value chosen by the user)
    Cal         = trunc(0.04096 / (Current_LSB * R_shunt))
    Power_LSB   = 20 * Current_LSB
The chip ignores calibration bit 0, so the value written is Cal & 0xFFFE, and readings are
scaled with the LSB that this written value implies (0.04096 / (Cal_written * R_shunt)),
which equals the nominal LSB whenever Cal is an exact even integer (as in the datasheet's
example: R = 0.1 ohm, Current_LSB = 100 uA -> Cal = 4096, Power_LSB = 2 mW).
"""

import struct

REG_CONFIG = 0x00
REG_SHUNT = 0x01
REG_BUS = 0x02
REG_POWER = 0x03
REG_CURRENT = 0x04
REG_CAL = 0x05

# Configuration fields (datasheet table 7). ADC codes: 0b0000 9-bit 84 us, 0b0001 10-bit
# 148 us, 0b0010 11-bit 276 us, 0b0011 12-bit 532 us, 0b1001 2 averages 1.06 ms, ...
BRNG_16V = 0
BRNG_32V = 1
PGA_40MV = 0
PGA_80MV = 1
PGA_160MV = 2
PGA_320MV = 3
ADC_9BIT = 0x0
ADC_10BIT = 0x1
ADC_11BIT = 0x2
ADC_12BIT = 0x3
MODE_SHUNT_BUS_CONTINUOUS = 0x7
ADC_TIME_US = {ADC_9BIT: 84, ADC_10BIT: 148, ADC_11BIT: 276, ADC_12BIT: 532}

# Default: 16 V bus range (a 5 V Pi), +-320 mV shunt range (3.2 A on 0.1 ohm), bus ADC
# 10-bit (148 us), shunt ADC 12-bit (532 us): one shunt+bus conversion cycle takes
# 680 us, so the current/power registers refresh about 1470 times a second, above a
# 1 kHz sample rate, while the current keeps the full 12 bits.
DEFAULT_CONFIG = (
    (BRNG_16V << 13)
    | (PGA_320MV << 11)
    | (ADC_10BIT << 7)
    | (ADC_12BIT << 3)
    | MODE_SHUNT_BUS_CONTINUOUS
)


def conversion_time_us(config):
    """One shunt+bus conversion cycle in continuous mode for a configuration value."""
    badc = (config >> 7) & 0xF
    sadc = (config >> 3) & 0xF
    return _adc_us(badc) + _adc_us(sadc)


def _adc_us(code):
    if code & 0x8:  # averaging: 2**(code & 7) samples of 532 us
        return 532 * (1 << (code & 0x7))
    if code & 0x4:  # 0b01xx: 12-bit, like 0b0011
        return 532
    return ADC_TIME_US[code & 0x3]


def calibration(shunt_uohm, max_current_ua, current_lsb_pa=0):
    """-> (cal_register, current_lsb_pa, power_lsb_pw) from the datasheet's formulas.

    shunt_uohm: shunt resistance in micro-ohms; max_current_ua: maximum expected current
    in micro-amps; current_lsb_pa: an explicit Current_LSB in pico-amps (0 = max/2**15).
    Raises ValueError when the result does not fit the 16-bit register.
    """
    if shunt_uohm <= 0 or max_current_ua <= 0:
        raise ValueError("shunt and max current must be positive")
    if current_lsb_pa:
        # Cal = 0.04096 / (lsb_pa e-12 * R_uohm e-6) = 4.096e16 / (lsb_pa * R_uohm)
        cal = (4096 * 10**13) // (current_lsb_pa * shunt_uohm)
    else:
        # Current_LSB = max_ua e-6 / 2**15, so Cal = 4096 * 2**15 * 1e7 / (max_ua * R_uohm)
        cal = (4096 * 32768 * 10**7) // (max_current_ua * shunt_uohm)
    if cal > 0xFFFE:
        raise ValueError("calibration overflows 16 bits: shunt too small for this current")
    cal &= 0xFFFE
    if cal < 2:
        raise ValueError("calibration underflows: shunt or max current too large")
    lsb_pa = (4096 * 10**13) // (cal * shunt_uohm)
    return cal, lsb_pa, 20 * lsb_pa


class INA219:
    """Minimal register-level driver; `i2c` is a machine.I2C (or a fake with the same API)."""

    def __init__(self, i2c, address=0x40, config=DEFAULT_CONFIG):
        self.i2c = i2c
        self.address = address
        self.config = config
        self.cal = 0
        self.current_lsb_pa = 0
        self.power_lsb_pw = 0
        self._buf = bytearray(2)

    def write_reg(self, reg, value):
        self.i2c.writeto_mem(self.address, reg, struct.pack(">H", value & 0xFFFF))

    def read_reg(self, reg):
        self.i2c.readfrom_mem_into(self.address, reg, self._buf)
        return (self._buf[0] << 8) | self._buf[1]

    def configure(self, shunt_uohm, max_current_ua, current_lsb_pa=0):
        cal, lsb_pa, plsb_pw = calibration(shunt_uohm, max_current_ua, current_lsb_pa)
        self.write_reg(REG_CONFIG, self.config)
        self.write_reg(REG_CAL, cal)
        self.cal = cal
        self.current_lsb_pa = lsb_pa
        self.power_lsb_pw = plsb_pw
        return cal

    def read(self):
        """-> (bus_mv, current_ua, power_uw, ovf, cnvr); three I2C register reads.

        Bus first, power second (reading power clears CNVR), current last."""
        bus = self.read_reg(REG_BUS)
        power_raw = self.read_reg(REG_POWER)
        current_raw = self.read_reg(REG_CURRENT)
        if current_raw & 0x8000:
            current_raw -= 0x10000
        bus_mv = (bus >> 3) * 4
        # integer scaling (pA -> uA, pW -> uW) so both interpreters give identical values
        current_ua = (current_raw * self.current_lsb_pa) // 1000000
        power_uw = (power_raw * self.power_lsb_pw) // 1000000
        return bus_mv, current_ua, power_uw, bus & 1, (bus >> 1) & 1
