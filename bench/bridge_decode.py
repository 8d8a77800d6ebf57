"""Host decode throughput of the INA219 bridge stream against what a 1 kHz stream needs.

    python -m bench.bridge_decode [--frames 100000]

Pre-encodes a buffer of sample frames, then pushes it through the reader's whole per-frame
path (FrameDecoder -> sequence/time unwrapping -> clock map -> Sample -> ring buffer), in
4 KiB chunks as a serial read would deliver them, once clean and once with faults injected
(5% of frames damaged by bit flips, dropped bytes or truncation, plus garbage bursts).
Prints samples decoded per second and the ratio to 1000 samples/s, all measured in this run;
the host codec alone and the firmware's own MicroPython-style decoder (run under CPython on
the same frames) are shown as references.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from carboncp.firmware_bridge import protocol
from carboncp.firmware_bridge.firmware import bridge_wire as wire
from carboncp.firmware_bridge.host import BridgeReader, _Stream

REQUIRED_HZ = 1000.0
CHUNK = 4096


def make_stream(n: int, fault_rate: float, seed: int = 1) -> tuple[bytes, int]:
    """-> (bytes, number of intact sample frames in them)."""
    rng = random.Random(seed)
    out = bytearray(b"\x00")
    intact = 0
    for i in range(n):
        ua = 800_000 + int(400_000 * ((i % 500) / 250 - 1))
        frame = bytearray(protocol.encode_sample(i, 1000 * i, 5100, ua, 5100 * ua // 1000, 0))
        if rng.random() < fault_rate:
            kind = rng.randrange(4)
            if kind == 0:
                frame[rng.randrange(len(frame) - 1)] ^= 1 << rng.randrange(8)
            elif kind == 1:
                del frame[rng.randrange(len(frame) - 1)]
            elif kind == 2:
                frame = frame[: rng.randrange(1, len(frame) - 1)] + b"\x00"
            else:
                out += bytes(rng.randrange(256) for _ in range(rng.randrange(8, 120))) + b"\x00"
                intact += 1
        else:
            intact += 1
        out += frame
    return bytes(out), intact


def _null_serial(*_a, **_k):
    raise OSError("bench: no port")


def decode_with_reader(data: bytes, n_frames: int) -> tuple[float, int, protocol.FrameDecoder]:
    """The reader's full per-frame path, without serial I/O. -> (seconds, samples kept)."""
    reader = BridgeReader("bench://", rate_hz=1000, serial_factory=_null_serial, buffer_s=600)
    reader._stream = _Stream(1 << 30, 1000)
    dec = reader._decoder
    per_chunk_s = CHUNK / len(data) * n_frames / REQUIRED_HZ  # stream time per chunk
    t0 = time.perf_counter()
    for k, i in enumerate(range(0, len(data), CHUNK)):
        arrival = 1000.0 + (k + 1) * per_chunk_s + 0.0005
        for msg in dec.feed(data[i : i + CHUNK]):
            reader._dispatch(msg, arrival)
    elapsed = time.perf_counter() - t0
    return elapsed, len(reader._samples), dec


def decode_with_host_codec(data: bytes) -> tuple[float, int]:
    """FrameDecoder alone (framing, COBS, CRC, parsing), no per-sample bookkeeping."""
    dec = protocol.FrameDecoder()
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(data), CHUNK):
        n += len(dec.feed(data[i : i + CHUNK]))
    return time.perf_counter() - t0, n


def decode_with_firmware_codec(data: bytes) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for block in data.split(b"\x00"):
        if block and wire.decode_frame(block) is not None:
            n += 1
    return time.perf_counter() - t0, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="bridge decode throughput vs a 1 kHz stream")
    ap.add_argument("--frames", type=int, default=100_000)
    args = ap.parse_args(argv)
    n = args.frames
    print(f"encoding {n} sample frames ...", file=sys.stderr)
    clean, clean_intact = make_stream(n, 0.0)
    faulty, faulty_intact = make_stream(n, 0.05)

    rows = []
    for name, data, intact in (
        ("clean", clean, clean_intact),
        ("5% faults", faulty, faulty_intact),
    ):
        print(f"decoding {name} ...", file=sys.stderr)
        secs, kept, dec = decode_with_reader(data, n)
        assert kept == intact, f"{name}: kept {kept} samples, {intact} intact frames"
        rate = kept / secs
        rows.append((f"host reader path, {name}", len(data), kept, secs, rate, dec))
    secs, kept = decode_with_host_codec(clean)
    rows.append(("host codec only, clean", len(clean), kept, secs, kept / secs, None))
    secs, kept = decode_with_firmware_codec(clean)
    rows.append(("firmware codec under CPython, clean", len(clean), kept, secs, kept / secs, None))

    print(f"\nrequired: {REQUIRED_HZ:.0f} samples/s (a 1 kHz stream)\n")
    print(
        f"{'path':40} {'bytes':>9} {'samples':>8} {'seconds':>8} {'samples/s':>11} {'x 1 kHz':>9}"
    )
    for name, nbytes, kept, secs, rate, dec in rows:
        print(f"{name:40} {nbytes:9d} {kept:8d} {secs:8.3f} {rate:11.0f} {rate / REQUIRED_HZ:9.1f}")
        if dec is not None and (dec.crc_errors or dec.framing_errors):
            print(f"{'':40} crc errors {dec.crc_errors}, framing errors {dec.framing_errors}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
