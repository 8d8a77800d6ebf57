"""The device's inputs: random images, or a folder of .npy / PNG / JPEG files cycled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from carboncp.runtime.errors import ConfigError


def iter_inputs(
    source: str, count: int, shape: tuple[int, ...], seed: int = 0
) -> Iterator[np.ndarray]:
    """`count` uint8 images of `shape`: random, or cycled from a folder of .npy/PNG/JPEG."""
    if source == "random":
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield rng.integers(0, 256, size=shape, dtype=np.uint8)
        return
    folder = Path(source)
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".npy", ".png", ".jpg", ".jpeg")
    )
    if not files:
        raise ConfigError(f"setting 'input': {folder} has no .npy, .png or .jpg files")
    images = [_load_image(p, shape) for p in files]
    for i in range(count):
        yield images[i % len(images)]


def _load_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"input {path}: not a readable .npy array ({exc})") from None
    else:
        try:
            from PIL import Image
        except ImportError:
            raise ConfigError(
                f"input {path}: PNG/JPEG inputs need Pillow (pip install pillow); or convert "
                "the images to .npy uint8 arrays"
            ) from None
        _, c, h, w = shape
        try:
            with Image.open(path) as im:
                img = im.convert("RGB" if c == 3 else "L").resize((w, h))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # not an image
            raise ConfigError(f"input {path}: not a readable image ({exc})") from None
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]
    if arr.dtype != np.uint8:
        raise ConfigError(f"input {path}: dtype {arr.dtype}, the model takes uint8 images")
    if arr.shape == shape[1:]:
        arr = arr[None]
    if tuple(arr.shape) != tuple(shape):
        raise ConfigError(f"input {path}: shape {list(arr.shape)}, the model takes {list(shape)}")
    return np.ascontiguousarray(arr)
