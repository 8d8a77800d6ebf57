"""Device <-> edge server: the wire format, the offload client, link shaping for one-machine
runs, and the edge server (KServe v2 / Open Inference Protocol). The client never imports the
server; what both need is in routes.py."""
