"""Export a model as a CarbonCP bundle: every head as ExecuTorch .pte (XNNPACK) and TFLite, every
tail as .pte, each verified against the full model, plus a manifest (docs/BUNDLE.md).

Your own model (--model package.module:factory, importable from the current folder): the
factory returns an nn.Module taking one normalised float NCHW image. Optional attributes:
input_shape (default (1, 3, 224, 224)), input_mean / input_std (default ImageNet's), and
cut_stages() -> [(name, module), ...] to name the cut points yourself; without it they are found
on the torch.export graph where exactly one tensor is live (never inside a residual block).
The device sends uint8 images; normalisation runs inside the heads and the p = 0 tail.

Examples:
  carboncp export --model resnet18                      # -> models/resnet18/
  carboncp export --model mobilenet_v2 --weights mobilenet_v2.pth --out bundles/mnv2
  carboncp export --model mypkg.nets:make_net --formats tflite

Triton (docs/TRITON.md): --triton-repo DIR also writes a model repository a stock Triton
Inference Server loads, one model per tail (and per float16 tail), named as the device asks
for them. Given an existing BUNDLE, only the repository is written (the tails are converted to
.tflite from the model the manifest records and verified against the bundle's .pte tails):
  carboncp export --triton-repo triton-repo models/resnet18
  carboncp export --model resnet18 --triton-repo triton-repo   # bundle, then repository
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "export a model's heads and tails (.pte, .tflite) as a verified bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="resnet18",
        help="resnet18 (default), mobilenet_v2, or your own as package.module:factory",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="state_dict saved with torch.save (e.g. a torchvision .pth); default: random "
        "weights with a fixed seed",
    )
    parser.add_argument(
        "--formats", default="pte,tflite", help="comma-separated head formats (default pte,tflite)"
    )
    parser.add_argument("--out", metavar="DIR", help="bundle folder (default models/<name>/)")
    parser.add_argument(
        "--no-float16",
        action="store_true",
        help="skip measuring the output error of float16 activations on the wire",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights and inputs")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes exporting artifacts in parallel (default: up to 2)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--triton-repo",
        metavar="DIR",
        help="also write a Triton model repository of the tails there (docs/TRITON.md)",
    )
    parser.add_argument(
        "--triton-threads",
        type=int,
        default=0,
        metavar="N",
        help="interpreter threads per Triton model (default 0: every core of the server)",
    )
    parser.add_argument(
        "bundle",
        nargs="?",
        metavar="BUNDLE",
        help="with --triton-repo: an existing bundle to write the repository from (no export)",
    )


def run(args: argparse.Namespace) -> int:
    from carboncp.runtime.errors import ConfigError
    from carboncp.tooling.export import export_bundle

    if args.bundle is not None:
        if not args.triton_repo:
            raise ConfigError(
                f"BUNDLE {args.bundle}: give --triton-repo DIR to write its Triton repository "
                "(an export takes --model, not a bundle)"
            )
        return _triton(args, args.bundle)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    root = export_bundle(
        args.model,
        args.out,
        weights=args.weights,
        formats=formats,
        float16=not args.no_float16,
        progress=not args.quiet,
        seed=args.seed,
        workers=max(1, args.jobs),
    )
    print(root)
    sys.stdout.flush()
    if args.triton_repo:
        return _triton(args, root)
    return 0


def _triton(args: argparse.Namespace, bundle: object) -> int:
    from carboncp.tooling.triton_repo import write_triton_repo

    repo = write_triton_repo(
        str(bundle),
        args.triton_repo,
        weights=args.weights,
        num_threads=max(0, args.triton_threads),
        progress=not args.quiet,
        seed=args.seed,
    )
    print(repo)
    sys.stdout.flush()
    return 0
