"""Host-side codec of the bridge protocol (see PROTOCOL.md).

The numbers (frame types, layouts, version) come from the firmware's own module,
firmware/bridge_wire.py, so there is one definition of them; the encoding and decoding here
are a separate, faster implementation (C CRC from binascii, slicing COBS) and a test checks
that both produce identical bytes.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass

from .firmware import bridge_wire as wire

PROTOCOL_VERSION = wire.PROTOCOL_VERSION
MAX_FRAME = wire.MAX_FRAME
# Longest COBS block a valid frame can produce; longer runs without a delimiter are garbage.
MAX_BLOCK = MAX_FRAME + MAX_FRAME // 254 + 1

_SAMPLE = struct.Struct(wire.SAMPLE_FMT)
_IDENTITY = struct.Struct(wire.IDENTITY_FMT)
_ACK = struct.Struct(wire.ACK_FMT)
_ERROR = struct.Struct(wire.ERROR_FMT)
assert _SAMPLE.size == wire.SAMPLE_LEN and _IDENTITY.size == wire.IDENTITY_LEN

ERROR_NAMES = {
    wire.E_BAD_FRAME: "bad frame",
    wire.E_UNKNOWN: "unknown command",
    wire.E_BAD_ARG: "bad argument",
    wire.E_I2C: "INA219 I2C error",
    wire.E_VERSION: "protocol version mismatch",
}


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); binascii.crc_hqx is exactly this."""
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes) -> bytes:
    out = bytearray()
    for chunk in bytes(data).split(b"\x00"):
        while len(chunk) >= 254:
            out.append(0xFF)
            out += chunk[:254]
            chunk = chunk[254:]
        out.append(len(chunk) + 1)
        out += chunk
    return bytes(out)


def cobs_decode(block: bytes) -> bytes | None:
    """Decode one COBS block (no delimiter); None when malformed."""
    if b"\x00" in block:
        return None
    out = bytearray()
    i, n = 0, len(block)
    while i < n:
        code = block[i]
        end = i + code
        if code == 0 or end > n:
            return None
        out += block[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(ftype: int, payload: bytes = b"") -> bytes:
    body = bytes((ftype,)) + bytes(payload)
    return cobs_encode(body + crc16(body).to_bytes(2, "big")) + b"\x00"


def encode_sample(
    seq: int, mcu_us: int, bus_mv: int, current_ua: int, power_uw: int, flags: int = 0
) -> bytes:
    payload = _SAMPLE.pack(seq & 0xFFFF, mcu_us & 0xFFFFFFFF, bus_mv, current_ua, power_uw, flags)
    return encode_frame(wire.T_SAMPLE, payload)


def encode_command(cmd: int, token: int, args: bytes = b"") -> bytes:
    return encode_frame(cmd, bytes((token & 0xFF,)) + args)


def identify_command(token: int) -> bytes:
    return encode_command(wire.C_IDENTIFY, token, bytes((PROTOCOL_VERSION,)))


def set_rate_command(token: int, rate_hz: int) -> bytes:
    return encode_command(wire.C_SET_RATE, token, struct.pack("<H", rate_hz))


def set_calibration_command(
    token: int, shunt_uohm: int, max_current_ua: int, current_lsb_pa: int = 0
) -> bytes:
    args = struct.pack("<III", shunt_uohm, max_current_ua, current_lsb_pa)
    return encode_command(wire.C_SET_CAL, token, args)


@dataclass(frozen=True)
class DeviceInfo:
    """What the device says about itself (IDENTITY frame)."""

    token: int
    protocol_version: int
    firmware_version: str
    tick_period_us: int  # the MCU microsecond counter wraps at this value
    streaming: bool
    rate_hz: int
    max_rate_hz: int
    shunt_uohm: int
    max_current_ua: int
    calibration: int
    current_lsb_pa: int
    config_register: int
    overruns: int
    i2c_errors: int
    rx_bad: int
    session: int  # random at each boot: a new value means the device restarted
    name: str


@dataclass(frozen=True)
class Ack:
    token: int
    cmd: int
    extra: bytes


@dataclass(frozen=True)
class DeviceError:
    token: int
    cmd: int
    code: int
    detail: str

    def describe(self) -> str:
        what = ERROR_NAMES.get(self.code, f"error {self.code}")
        return f"{what}: {self.detail}" if self.detail else what


Message = tuple | DeviceInfo | Ack | DeviceError


def parse_identity(payload: bytes) -> DeviceInfo | None:
    if len(payload) < _IDENTITY.size:
        return None
    f = _IDENTITY.unpack_from(payload)
    name = bytes(payload[_IDENTITY.size :]).decode("ascii", "replace")
    return DeviceInfo(
        token=f[0],
        protocol_version=f[1],
        firmware_version=f"{f[2]}.{f[3]}",
        tick_period_us=1 << f[4],
        streaming=bool(f[5]),
        rate_hz=f[6],
        max_rate_hz=f[7],
        shunt_uohm=f[8],
        max_current_ua=f[9],
        calibration=f[10],
        current_lsb_pa=f[11],
        config_register=f[12],
        overruns=f[13],
        i2c_errors=f[14],
        rx_bad=f[15],
        session=f[16],
        name=name,
    )


def parse_message(ftype: int, payload: bytes) -> Message | None:
    """-> a sample tuple (seq, mcu_us, bus_mv, current_ua, power_uw, flags), a DeviceInfo,
    an Ack or a DeviceError; None when the type is unknown or the length is wrong."""
    if ftype == wire.T_SAMPLE:
        return _SAMPLE.unpack(payload) if len(payload) == _SAMPLE.size else None
    if ftype == wire.T_IDENTITY:
        return parse_identity(payload)
    if ftype == wire.T_ACK and len(payload) >= _ACK.size:
        token, cmd = _ACK.unpack_from(payload)
        return Ack(token, cmd, bytes(payload[_ACK.size :]))
    if ftype == wire.T_ERROR and len(payload) >= _ERROR.size:
        token, cmd, code = _ERROR.unpack_from(payload)
        return DeviceError(
            token, cmd, code, bytes(payload[_ERROR.size :]).decode("ascii", "replace")
        )
    return None


class FrameDecoder:
    """Splits a byte stream at 0x00 delimiters and validates each block.

    Resynchronises by construction: whatever garbage arrives, the next delimiter starts a
    clean frame. Counts what it drops: `crc_errors` (intact framing, wrong CRC),
    `framing_errors` (bad COBS, impossible length, unknown type, or a block too long to be a
    frame) and `discarded_bytes`. Until the first delimiter is seen (`synced` False) a bad
    block is discarded without counting, since joining mid-stream always cuts one frame.
    """

    def __init__(self) -> None:
        self._pending = b""
        self.synced = False
        self.frames_ok = 0
        self.crc_errors = 0
        self.framing_errors = 0
        self.discarded_bytes = 0

    def reset(self) -> None:
        """Forget partial data (after a reconnect)."""
        self.discarded_bytes += len(self._pending)
        self._pending = b""
        self.synced = False

    def feed(self, data: bytes) -> list[Message]:
        blocks = (self._pending + data).split(b"\x00") if self._pending else data.split(b"\x00")
        self._pending = blocks.pop()
        if len(self._pending) > MAX_BLOCK:  # garbage with no delimiter: drop it now
            self.discarded_bytes += len(self._pending)
            self.framing_errors += 1
            self._pending = b""
        out: list[Message] = []
        for block in blocks:
            if block:
                msg = self._decode(block)
                if msg is not None:
                    out.append(msg)
            self.synced = True  # past a delimiter: the next block starts a frame
        return out

    def _decode(self, block: bytes) -> Message | None:
        counted = self.synced
        body = cobs_decode(block) if len(block) <= MAX_BLOCK else None
        if body is None or not 3 <= len(body) <= MAX_FRAME:
            self._bad(block, counted, crc=False)
            return None
        if binascii.crc_hqx(body, 0xFFFF) != 0:  # CRC over data+crc is 0 when intact
            self._bad(block, counted, crc=True)
            return None
        msg = parse_message(body[0], body[1:-2])
        if msg is None:
            self._bad(block, counted, crc=False)
            return None
        self.frames_ok += 1
        return msg

    def _bad(self, block: bytes, counted: bool, crc: bool) -> None:
        self.discarded_bytes += len(block) + 1
        if not counted:
            return
        if crc:
            self.crc_errors += 1
        else:
            self.framing_errors += 1
