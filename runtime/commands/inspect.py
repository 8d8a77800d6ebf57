"""Show what a bundle holds: the model, the partition table (per partition p: cut name, what
crosses the link (dtype, shape, bytes), artifact sizes, verification error of head + tail
against the full model per format, float16-wire error), and the sections later steps added.
The bundle is verified (format version, every file's size and sha256, that the profile,
objective and table sections load, and that every head's output and tail's input is the wire
tensor the manifest records) before it is shown.

Example:
  carboncp inspect models/resnet18
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "print a bundle's partition table, verification errors and sections"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle folder (with manifest.json)")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the sha256 check of every file (faster)"
    )


def _size(bundle: Any, rel: str | None) -> str:
    if not rel:
        return "-"
    n = bundle.manifest["files"].get(rel, {}).get("bytes")
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _err(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def table(bundle: Any) -> list[str]:
    """The partition table as text lines (also used by tests)."""
    cols = ["p", "cut", "wire", "shape", "bytes", "head.pte", "head.tflite", "tail.pte"]
    cols += ["err.pte", "err.tflite", "f16.err", "f16.top1"]
    rows = [cols]
    for part in bundle.partitions:
        f16 = part.float16 or {}
        rows.append(
            [
                str(part.p),
                part.cut,
                part.wire_dtype if part.p < bundle.last else f"({part.wire_dtype})",
                "x".join(str(s) for s in part.wire_shape),
                f"{part.wire_bytes:,}",
                _size(bundle, part.head.get("pte")),
                _size(bundle, part.head.get("tflite")),
                _size(bundle, part.tail.get("pte")),
                _err(part.verify_max_abs.get("pte")),
                _err(part.verify_max_abs.get("tflite")),
                _err(f16.get("max_abs_error")) if f16 else "-",
                f"{f16['top1_agreement']:.0%}" if f16.get("top1_agreement") is not None else "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return ["  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in
                      enumerate(zip(r, widths, strict=True))).rstrip() for r in rows]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from carboncp.runtime.artifacts.bundle import MANIFEST, Bundle, section_fault
    from carboncp.runtime.artifacts.consistency import check_consistency
    from carboncp.runtime.decision.sections import check_sections

    bundle = Bundle.load(args.bundle, verify=not args.no_verify)
    check_sections(bundle)
    check_consistency(bundle)  # wire bytes = dtype x shape; head output = wire = tail input
    # Descriptive fields (tools, tolerances, weights) of a hand-edited manifest: one line too.
    with section_fault(bundle.path / MANIFEST, "rebuild it with 'carboncp export'"):
        _show(bundle, args)
    return 0


def _show(bundle: Any, args: argparse.Namespace) -> None:
    m = bundle.manifest
    model = m["model"]
    weights = model.get("weights", {})
    wdesc = (
        f"file {weights.get('file')} sha256 {str(weights.get('sha256'))[:12]}"
        if weights.get("kind") == "file"
        else f"random, seed {weights.get('seed')}"
    )
    print(f"bundle   {bundle.path}  (format {m['format']} v{m['format_version']})")
    print(f"model    {model['name']}  [{model.get('factory', '?')}]  weights: {wdesc}")
    inp, out = m["input"], m["output"]
    print(
        f"input    {inp['dtype']} {inp['shape']} {inp.get('layout', '')}  ->  output "
        f"{out['dtype']} {out['shape']}"
    )
    tools = m.get("tools", {})
    if tools:
        print("tools    " + ", ".join(f"{k} {v}" for k, v in tools.items()))
    if "created" in m:
        print(f"created  {m['created']}")
    ver = m.get("verification", {})
    if ver:
        print(
            f"verified {ver.get('samples')} random inputs per partition and format, "
            f"tolerance {ver.get('tolerance_max_abs', float('nan')):.1e} max abs"
        )
    print(f"\npartitions p = 0..{bundle.last} (wire in parentheses: p = P sends nothing)")
    for line in table(bundle):
        print("  " + line)
    sections = m.get("sections", {})
    print("\nsections " + (", ".join(f"{k} ({v})" for k, v in sections.items()) or "none"))
    built = bundle.section("build") if "build" in sections else None
    if isinstance(built, dict) and isinstance(built.get("mixture"), dict):
        mix = built["mixture"]
        print(
            f"built on {mix.get('n_components')} component(s), {mix.get('n_events')} events: "
            f"device zones {', '.join(map(str, mix.get('device_zones', [])))}; server zones "
            f"{', '.join(map(str, mix.get('server_zones', [])))}; links "
            f"{', '.join(map(str, mix.get('bandwidth_traces', [])))} at x"
            f"{', x'.join(f'{k:g}' for k in mix.get('bandwidth_scales', []))} (build.json)"
        )
    status = "verified" if not args.no_verify else "not verified (--no-verify)"
    print(
        f"files    {len(m['files'])}, {sum(f['bytes'] for f in m['files'].values()):,} bytes, {status}"
    )
