"""INA219 power monitor on a microcontroller and its host-side serial protocol.

Imports neither the tooling nor the runtime."""
