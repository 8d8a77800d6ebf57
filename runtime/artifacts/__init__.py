"""The bundle (the one contract between tooling and runtime) and the interpreters that run its
heads and tails (LiteRT, ExecuTorch). Imports nothing else of the runtime but errors/checks."""
