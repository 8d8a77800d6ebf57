"""Where the context's live inputs enter: carbon-intensity payloads and their MQTT subscriber,
measured traces, the link's bandwidth estimate and the device's CPU load."""
