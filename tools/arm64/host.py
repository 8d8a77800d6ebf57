"""The amd64 half of `make test-arm64` (tools/arm64/run.sh), run in the main venv.

    python tools/arm64/host.py prepare SHARE   bundles + amd64 reference outputs and decisions
    python tools/arm64/host.py serve SHARE     `carboncp serve` + Mosquitto until SIGTERM
    python tools/arm64/host.py summary SHARE   the one closing line from the chroot's results

SHARE is the folder the arm64 chroot sees as /share. The chroot's tests (tests/arm64/) compare
against what `prepare` writes; `serve` writes SHARE/services.json once both are up.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.tiny_bundle, tests.support

from tests.arm64.reference import (  # noqa: E402 (after the path set-up above)
    POLICIES,
    contexts,
    head_inputs,
    run_decisions,
    run_heads,
)


def prepare(share: Path) -> None:
    """SHARE/tiny-bundle (the exported tiny model), SHARE/table-bundle (a copy with the hand
    table of tests/support/hand_table.py, so it decides and serves), and SHARE/ref/ with the
    amd64 head outputs and decisions."""
    from carboncp.runtime.artifacts.bundle import Bundle
    from carboncp.runtime.artifacts.runners import LiteRTRunner
    from carboncp.runtime.decision.policy import TablePolicy

    from tests.support.hand_table import add_hand_table
    from tests.tiny_bundle import build

    tiny = build(share / "tiny-bundle", progress=False)
    table_dir = share / "table-bundle"
    shutil.copytree(tiny, table_dir)
    add_hand_table(table_dir)
    ref = share / "ref"
    ref.mkdir()

    bundle = Bundle.load(tiny)
    runner = LiteRTRunner(bundle)
    try:
        xs = head_inputs(bundle)
        np.savez(ref / "heads.npz", inputs=np.stack(xs), **run_heads(bundle, runner, xs))
    finally:
        runner.close()

    table_bundle = Bundle.load(table_dir)
    ctxs = contexts()
    out = {
        "contexts": [list(c) for c in ctxs],
        "decisions": {
            name: run_decisions(TablePolicy.from_bundle(table_bundle, **kw), ctxs)
            for name, kw in POLICIES.items()
        },
    }
    (ref / "decisions.json").write_text(json.dumps(out))


def serve(share: Path) -> None:
    """An amd64 `carboncp serve` of the table bundle and a Mosquitto on loopback ports (the
    chroot shares the host's network), until SIGTERM."""
    from tests.support.edge_server import ServerProcess
    from tests.support.mosquitto import start_mosquitto

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    broker = start_mosquitto()
    server = ServerProcess(share / "table-bundle")
    try:
        server.start()
        tmp = share / "services.json.tmp"
        tmp.write_text(json.dumps({"server": server.url, "broker": broker.url}))
        tmp.rename(share / "services.json")
        while not stop.wait(0.5):
            if not server.alive():
                sys.exit(f"carboncp serve exited: {''.join(server.stderr)[-2000:]}")
    finally:
        server.stop()
        broker.cleanup()


def summary(share: Path) -> str:
    """`test-arm64: passed ...` from the results the chroot's tests wrote."""
    res = share / "results"

    def load(name: str) -> dict:
        return json.loads((res / f"{name}.json").read_text())

    lit, tfl = load("versions-litert"), load("versions-tflite")
    heads = [json.loads(p.read_text()) for p in sorted(res.glob("heads-*.json"))]
    cpus = sorted({h["cpu"] for h in heads})
    dec = [load(f"decisions-{v}") for v in ("litert", "tflite")]
    run = load("run")
    worst = max(h["max_abs_diff"] for h in heads)
    return (
        f"test-arm64: passed on Debian 12 arm64 (Python {lit['python']}, CPU: qemu "
        f"{lit['cpu']}): "
        f"litert-runner (ai-edge-litert {lit['ai-edge-litert']} + numpy {lit['numpy']}, "
        f"tflite-runtime {tfl['tflite-runtime']} + numpy {tfl['numpy']}), "
        f"heads == amd64 ({heads[0]['heads']} heads x {heads[0]['inputs']} inputs, both "
        f"interpreters, CPUs {' and '.join(cpus)}, max diff {worst:.1e}), "
        f"decisions identical ({dec[0]['contexts']} contexts x {dec[0]['policies']} policies, "
        f"both venvs), carboncp run -> amd64 serve ({run['offloads']} of {run['inferences']} "
        "offloaded, carbon live over MQTT)"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("prepare", "serve", "summary"):
        print(__doc__, file=sys.stderr)
        return 2
    share = Path(argv[1])
    if argv[0] == "prepare":
        prepare(share)
    elif argv[0] == "serve":
        serve(share)
    else:
        print(summary(share))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
