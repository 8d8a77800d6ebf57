"""Power sources: one small interface, real backends chosen by config, a fake only on request."""

from carboncp.runtime.power.base import PowerReading, PowerSource, integrate_energy_j

__all__ = ["PowerReading", "PowerSource", "integrate_energy_j"]
