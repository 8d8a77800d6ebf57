"""CarbonCP on-device runtime and edge server.

Never imports the tooling, and never imports torch at module level: a device on the LiteRT
path has neither installed.
"""

__version__ = "0.1.0"
