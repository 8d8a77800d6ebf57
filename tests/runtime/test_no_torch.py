"""The runtime runs heads with no torch: a subprocess in which importing torch (and executorch)
fails loads a bundle and runs every head with the LiteRT runner."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.artifacts.runners import LiteRTRunner

CHILD = textwrap.dedent(
    """
    import json, sys
    # Any `import torch` / `import executorch` now raises ImportError (a None entry in
    # sys.modules blocks the import), as on a device where they are not installed.
    for name in ("torch", "executorch", "litert_torch", "carboncp.tooling"):
        sys.modules[name] = None
    import numpy as np
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.errors import BackendMissingError
    from carboncp.runtime.artifacts.runners import ExecuTorchRunner, make_runner
    import carboncp.runtime.cli  # the CLI dispatcher too

    bundle = Bundle.load(sys.argv[1])
    runner = make_runner(bundle, "litert")
    x = np.load(sys.argv[2], allow_pickle=False)
    outs = {}
    for part in bundle.partitions[1:]:
        outs[part.p] = runner.run(part.p, x)
    np.savez(sys.argv[3], **{f"p{p}": y for p, y in outs.items()})
    try:
        ExecuTorchRunner(bundle)
        et = "loaded"
    except BackendMissingError as exc:
        et = str(exc)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "executorch")
                    and sys.modules[m] is not None)
    print(json.dumps({"backend": runner.backend, "executorch": et, "torch_modules": loaded}))
    """
)


def test_litert_heads_run_without_torch(tiny_bundle, tmp_path):
    bundle = Bundle.load(tiny_bundle)
    x = np.random.default_rng(5).integers(0, 256, bundle.input_shape, dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tiny_bundle),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["torch_modules"] == []
    assert "needs torch and executorch" in report["executorch"]
    # same numbers as the in-process runner
    ref = LiteRTRunner(bundle)
    with np.load(tmp_path / "y.npz", allow_pickle=False) as got:
        assert sorted(got.files) == [f"p{p}" for p in range(1, bundle.last + 1)]
        for p in range(1, bundle.last + 1):
            np.testing.assert_array_equal(got[f"p{p}"], ref.run(p, x))
    ref.close()
