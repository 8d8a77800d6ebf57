"""The device: run settings, the wiring that builds a device from them, and the per-inference
loop (decide, execute, account, record)."""
