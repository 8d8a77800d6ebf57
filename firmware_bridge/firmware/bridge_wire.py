"""Frame encoding shared by the firmware and the host (MicroPython-compatible).

A frame on the wire is COBS(type | payload | crc16_be) followed by one 0x00 delimiter.
The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xor-out)
over type | payload. See firmware_bridge/PROTOCOL.md for the layouts.

Written for MicroPython as well as CPython: no f-strings, dataclasses or typing, only
`struct` and bytes/bytearray operations. The host has a faster codec of its own
(firmware_bridge/protocol.py); a test checks both produce identical bytes.
"""

import struct

try:
    import micropython
except ImportError:  # CPython: the native-code decorator is a no-op

    class micropython:
        @staticmethod
        def native(f):
            return f


PROTOCOL_VERSION = 1
FIRMWARE_VERSION = (0, 1)
DEVICE_NAME = b"carboncp-ina219"
MAX_FRAME = 96  # decoded bytes; anything longer is garbage

# Device -> host
T_SAMPLE = 0x01
T_IDENTITY = 0x02
T_ACK = 0x03
T_ERROR = 0x04
# Host -> device
C_IDENTIFY = 0x10
C_START = 0x11
C_STOP = 0x12
C_SET_RATE = 0x13
C_SET_CAL = 0x14

# Error codes (ERROR frame)
E_BAD_FRAME = 1  # a command failed COBS/CRC/length checks
E_UNKNOWN = 2  # unknown command type
E_BAD_ARG = 3  # argument out of range
E_I2C = 4  # the INA219 did not answer
E_VERSION = 5  # host speaks another protocol version

# Sample flags
F_OVF = 0x01  # INA219 math overflow (current or power out of range)
F_STALE = 0x02  # no new conversion since the previous sample (CNVR clear)
F_LATE = 0x04  # sampling fell behind; ticks were skipped before this sample

SAMPLE_FMT = "<HIHiIB"  # seq, mcu_us, bus_mv, current_ua, power_uw, flags
SAMPLE_LEN = 17
IDENTITY_FMT = "<BBBBBBHHIIHIHIIIH"
IDENTITY_LEN = 40  # + name bytes
ACK_FMT = "<BB"
ERROR_FMT = "<BBB"

_CRC_TABLE = None


def _crc_table():
    global _CRC_TABLE
    if _CRC_TABLE is None:
        table = []
        for i in range(256):
            crc = i << 8
            for _ in range(8):
                crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            table.append(crc & 0xFFFF)
        _CRC_TABLE = table
    return _CRC_TABLE


@micropython.native
def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE of `data` (check value for b"123456789": 0x29B1)."""
    table = _crc_table()
    for b in data:
        crc = ((crc << 8) & 0xFF00) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc


@micropython.native
def cobs_encode(data):
    """Consistent-overhead byte stuffing: the result contains no 0x00."""
    out = bytearray(len(data) + len(data) // 254 + 1)
    code_at = 0
    code = 1
    j = 1
    for b in data:
        if b == 0:
            out[code_at] = code
            code_at = j
            j += 1
            code = 1
        else:
            out[j] = b
            j += 1
            code += 1
            if code == 0xFF:
                out[code_at] = code
                code_at = j
                j += 1
                code = 1
    out[code_at] = code
    return bytes(out[:j])


def cobs_decode(data):
    """Inverse of cobs_encode; returns None for a malformed block."""
    if b"\x00" in data:
        return None
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            return None
        end = i + code
        if end > n:
            return None
        out.extend(data[i + 1 : end])
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(ftype, payload=b""):
    """type | payload | crc -> COBS block + 0x00 delimiter."""
    body = bytearray(1)
    body[0] = ftype
    body.extend(payload)
    crc = crc16(body)
    body.append(crc >> 8)
    body.append(crc & 0xFF)
    return cobs_encode(body) + b"\x00"


def decode_frame(block):
    """One COBS block (without delimiter) -> (type, payload) or None when bad."""
    body = cobs_decode(block)
    if body is None or len(body) < 3 or len(body) > MAX_FRAME:
        return None
    if crc16(body) != 0:  # CRC over data + its CRC is 0 when intact
        return None
    return body[0], body[1:-2]


def sample_frame(seq, mcu_us, bus_mv, current_ua, power_uw, flags):
    payload = struct.pack(
        SAMPLE_FMT, seq & 0xFFFF, mcu_us & 0xFFFFFFFF, bus_mv, current_ua, power_uw, flags
    )
    return encode_frame(T_SAMPLE, payload)


def ack_frame(token, cmd, extra=b""):
    return encode_frame(T_ACK, struct.pack(ACK_FMT, token, cmd) + extra)


def error_frame(token, cmd, code, detail=b""):
    return encode_frame(T_ERROR, struct.pack(ERROR_FMT, token, cmd, code) + detail[:48])


def identity_frame(
    token,
    streaming,
    tick_period_log2,
    rate_hz,
    max_rate_hz,
    shunt_uohm,
    max_current_ua,
    cal,
    current_lsb_pa,
    config_reg,
    overruns,
    i2c_errors,
    rx_bad,
    session,
):
    payload = struct.pack(
        IDENTITY_FMT,
        token,
        PROTOCOL_VERSION,
        FIRMWARE_VERSION[0],
        FIRMWARE_VERSION[1],
        tick_period_log2,
        1 if streaming else 0,
        rate_hz,
        max_rate_hz,
        shunt_uohm,
        max_current_ua,
        cal,
        current_lsb_pa,
        config_reg,
        overruns & 0xFFFFFFFF,
        i2c_errors & 0xFFFFFFFF,
        rx_bad & 0xFFFFFFFF,
        session & 0xFFFF,
    )
    return encode_frame(T_IDENTITY, payload + DEVICE_NAME)


def command_frame(cmd, token, args=b""):
    """What the host sends: type | token | args (the host codec builds the same bytes)."""
    return encode_frame(cmd, bytes((token,)) + args)
