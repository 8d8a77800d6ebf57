"""INA219 power monitor on a microcontroller and its host-side serial protocol.

- firmware/: MicroPython for a Raspberry Pi Pico (main.py, ina219.py, bridge_wire.py);
  the same code runs under CPython with injected I2C, port and clock objects.
- PROTOCOL.md: frames (COBS + CRC-16/CCITT-FALSE), commands, version handshake, timing.
- protocol: host codec; host: BridgeReader (reader thread, lost-sample and error counts,
  reconnects, MCU-to-host clock mapping, energy over a host-time window), Sample,
  BridgeStats, BridgeError; timesync: ClockMap; cli: `carboncp power-monitor`.
- fake_ina219 and sim: a fake INA219 register model and a pty-backed simulated device, for
  tests and for trying the host side without hardware (never used by default).

Imports neither the tooling nor the runtime."""
