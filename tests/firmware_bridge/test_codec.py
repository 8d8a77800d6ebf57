"""The frame codec: COBS, CRC, frame layouts, and firmware/host byte-for-byte agreement."""

from __future__ import annotations

import random

from carboncp.firmware_bridge import protocol
from carboncp.firmware_bridge.firmware import bridge_wire as wire
from hypothesis import given, settings
from hypothesis import strategies as st


def test_crc_check_value_both_implementations():
    assert protocol.crc16(b"123456789") == 0x29B1
    assert wire.crc16(b"123456789") == 0x29B1
    assert wire.crc16(b"") == 0xFFFF


@given(st.binary(max_size=700))
def test_cobs_round_trip_and_no_zero(data):
    for enc in (protocol.cobs_encode(data), wire.cobs_encode(data)):
        assert b"\x00" not in enc
        assert protocol.cobs_decode(enc) == data
        assert wire.cobs_decode(enc) == data
    assert protocol.cobs_encode(data) == wire.cobs_encode(data)


def test_cobs_known_vectors():
    # vectors from the COBS paper / Wikipedia
    assert wire.cobs_encode(b"\x00") == b"\x01\x01"
    assert wire.cobs_encode(b"\x00\x00") == b"\x01\x01\x01"
    assert wire.cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert wire.cobs_encode(b"\x11\x00\x00\x00") == b"\x02\x11\x01\x01\x01"
    run = bytes(range(1, 255))
    assert wire.cobs_encode(run) == b"\xff" + run + b"\x01"
    assert protocol.cobs_decode(b"\x05\x11") is None  # code runs past the end
    assert protocol.cobs_decode(b"\x02\x00") is None


@settings(max_examples=200)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFFFF),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
)
def test_sample_frame_identical_and_round_trips(seq, mcu_us, mv, ua, uw, flags):
    host = protocol.encode_sample(seq, mcu_us, mv, ua, uw, flags)
    fw = wire.sample_frame(seq, mcu_us, mv, ua, uw, flags)
    assert host == fw
    assert host.endswith(b"\x00") and b"\x00" not in host[:-1]
    dec = protocol.FrameDecoder()
    msgs = dec.feed(b"\x00" + host)
    assert msgs == [(seq, mcu_us, mv, ua, uw, flags)]


@given(st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=20))
def test_command_frames_identical(token, rate, args):
    assert protocol.set_rate_command(token, rate) == wire.command_frame(
        wire.C_SET_RATE, token, rate.to_bytes(2, "little")
    )
    assert protocol.encode_command(wire.C_START, token, args) == wire.command_frame(
        wire.C_START, token, args
    )
    assert wire.decode_frame(protocol.encode_command(wire.C_STOP, token, args)[:-1]) == (
        wire.C_STOP,
        bytes((token,)) + args,
    )


def test_identity_ack_error_parse():
    frame = wire.identity_frame(
        7, True, 30, 1000, 2000, 100000, 3200000, 4096, 10**8, 0x1D1F, 3, 1, 2, 0xBEEF
    )
    (info,) = protocol.FrameDecoder().feed(b"\x00" + frame)
    assert isinstance(info, protocol.DeviceInfo)
    assert (info.token, info.protocol_version, info.tick_period_us) == (7, 1, 2**30)
    assert info.session == 0xBEEF
    assert (info.rate_hz, info.calibration, info.current_lsb_pa, info.name) == (
        1000,
        4096,
        10**8,
        "carboncp-ina219",
    )
    (ack,) = protocol.FrameDecoder().feed(b"\x00" + wire.ack_frame(9, wire.C_SET_RATE, b"\xe8\x03"))
    assert ack == protocol.Ack(9, wire.C_SET_RATE, b"\xe8\x03")
    (err,) = protocol.FrameDecoder().feed(b"\x00" + wire.error_frame(4, 0x13, wire.E_BAD_ARG, b"x"))
    assert err.code == wire.E_BAD_ARG and "bad argument" in err.describe()


def _stream(n, start=0):
    return [
        protocol.encode_sample((start + i) & 0xFFFF, 1000 * i, 5000, 800000, 4000000)
        for i in range(n)
    ]


def test_decoder_resyncs_after_garbage_and_counts():
    frames = _stream(50)
    rng = random.Random(1)
    data = bytearray(b"\x00")
    for i, f in enumerate(frames):
        if i % 10 == 5:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            data += b"\x00"
        data += f
    dec = protocol.FrameDecoder()
    got = []
    for i in range(0, len(data), 7):  # arbitrary chunking
        got += dec.feed(bytes(data[i : i + 7]))
    assert [m[0] for m in got] == list(range(50))
    assert dec.crc_errors + dec.framing_errors >= 1


def _code_positions(block: bytes) -> set[int]:
    pos, i = set(), 0
    while i < len(block):
        pos.add(i)
        i += block[i]
    return pos


def test_decoder_counts_crc_error_for_every_single_bit_flip_in_data():
    frame = _stream(1, start=0x0203)[0]
    codes = _code_positions(frame[:-1])
    flips = 0
    for pos in range(len(frame) - 1):
        if pos in codes:
            continue
        for bit in range(8):
            bad = bytearray(frame)
            bad[pos] ^= 1 << bit
            dec = protocol.FrameDecoder()
            assert dec.feed(b"\x00" + bytes(bad)) == []
            assert dec.crc_errors + dec.framing_errors >= 1
            flips += 1
    assert flips > 50


def test_decoder_drops_overlong_block_without_delimiter():
    dec = protocol.FrameDecoder()
    dec.feed(b"\x00")
    dec.feed(b"\x55" * (protocol.MAX_BLOCK + 5))
    assert dec.framing_errors == 1
    assert dec.feed(_stream(1)[0]) == [(0, 0, 5000, 800000, 4000000, 0)]


def test_protocol_md_example_is_what_the_codecs_produce():
    import re
    from pathlib import Path

    doc = (Path(protocol.__file__).parent / "PROTOCOL.md").read_text()
    wire_hex = re.search(r"wire \(22\): ([0-9a-f ]+)\n", doc).group(1)
    expected = bytes.fromhex(wire_hex)
    args = (0x0102, 123456789, 5100, 812345, 4142959, 0)
    assert protocol.encode_sample(*args) == expected == wire.sample_frame(*args)
    assert len(expected) == 22
