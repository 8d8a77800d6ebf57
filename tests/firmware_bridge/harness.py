"""Test helpers: a fault injector on the firmware's serial output and a ground-truth tap."""

from __future__ import annotations

import random
import threading

from carboncp.firmware_bridge import protocol


class Truth:
    """Every sample the firmware wrote, decoded from the clean bytes, keyed by MCU time."""

    def __init__(self) -> None:
        self.by_mcu_us: dict[int, tuple] = {}
        self._dec = protocol.FrameDecoder()
        self._dec.synced = True
        self._lock = threading.Lock()

    def __call__(self, frame: bytes) -> None:
        with self._lock:
            for msg in self._dec.feed(frame):
                if isinstance(msg, tuple):
                    self.by_mcu_us[msg[1]] = msg


def _seq_of(frame: bytes) -> int | None:
    msgs = protocol.FrameDecoder().feed(b"\x00" + frame)
    return msgs[0][0] if msgs and isinstance(msgs[0], tuple) else None


class FaultInjector:
    """Damages frames on their way to the host. `mode`: None, "mixed" (each frame damaged
    with probability `p` by a bit flip, a dropped byte, a truncation or a garbage burst) or
    "stall" (nothing gets through). Remembers the MCU times of the frames it damaged."""

    KINDS = ("bitflip", "drop", "truncate", "garbage")

    def __init__(self, seed: int = 0, p: float = 0.08) -> None:
        self.rng = random.Random(seed)
        self.p = p
        self.mode: str | None = None
        self.damaged: list[tuple[str, int | None]] = []  # (kind, seq16)
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.swallowed = 0

    def count(self, kind: str) -> int:
        return self.counts[kind]

    def __call__(self, frame: bytes) -> bytes:
        if self.mode == "stall":
            self.swallowed += 1
            return b""
        if self.mode != "mixed" or self.rng.random() >= self.p:
            return frame
        rng = self.rng
        kind = rng.choice(self.KINDS)
        seq = _seq_of(frame)
        out = bytearray(frame)
        if kind == "bitflip":
            pos = rng.randrange(len(out))
            out[pos] ^= 1 << rng.randrange(8)
        elif kind == "drop":
            del out[rng.randrange(len(out))]
        elif kind == "truncate":
            out = out[: rng.randrange(1, len(out) - 1)]
            if rng.random() < 0.5:
                out += b"\x00"
        else:  # garbage burst before the frame, zeros included
            burst = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            out = bytearray(burst) + out
            seq = None  # the frame itself is intact and may be delivered
        self.counts[kind] += 1
        if seq is not None:
            self.damaged.append((kind, seq))
        return bytes(out)
