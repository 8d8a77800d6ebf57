"""The bundle: the one contract between tooling and runtime (docs/BUNDLE.md).

A folder with `manifest.json` and the artifacts it names. Loading verifies the format
version, the required keys, and every listed file's size and sha256, and names the file
and what to do in every error. JSON and .npy only, never pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carboncp.runtime.errors import BundleError

FORMAT = "carboncp-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WIRE_DTYPES = {"uint8": 1, "float16": 2, "float32": 4}

_REBUILD = "rebuild it with 'carboncp export' (or 'carboncp build')"


@dataclass(frozen=True)
class Partition:
    """Partition p: the device runs stages 1..p (the head), the server the rest (the tail).

    `wire_*` describe the tensor that crosses the link (for p = P: the model output, which
    does not cross). `head`/`tail` map an artifact format ("pte", "tflite") to a file.
    """

    p: int
    cut: str
    wire_dtype: str
    wire_shape: tuple[int, ...]
    wire_bytes: int
    head: dict[str, str] = field(default_factory=dict)
    tail: dict[str, str] = field(default_factory=dict)
    verify_max_abs: dict[str, float] = field(default_factory=dict)
    float16: dict[str, float] | None = None  # {"bytes", "max_abs_error", "top1_agreement"}


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    partitions: list[Partition]

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def last(self) -> int:
        """P: the all-on-device partition."""
        return len(self.partitions) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input"]["shape"])

    @property
    def input_dtype(self) -> str:
        return str(self.manifest["input"]["dtype"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["output"]["shape"])

    def file(self, rel: str) -> Path:
        """Absolute path of a file the manifest lists (verified at load)."""
        if rel not in self.manifest["files"]:
            raise BundleError(f"{self.path / MANIFEST}: '{rel}' is not listed under 'files'")
        return self.path / rel

    def section(self, name: str) -> dict[str, Any] | None:
        """A JSON section added by later tooling steps (e.g. 'profile', 'table'), or None."""
        rel = self.manifest.get("sections", {}).get(name)
        if rel is None:
            return None
        if not isinstance(rel, str):
            raise BundleError(
                f"{self.path / MANIFEST}: 'sections.{name}' must be a file name, got {rel!r}"
            )
        return _read_json(self.file(rel))

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> Bundle:
        root = Path(path)
        mpath = root / MANIFEST
        if not root.is_dir():
            raise BundleError(f"{root}: no such bundle folder; {_REBUILD}")
        if not mpath.is_file():
            raise BundleError(f"{mpath}: missing manifest; is {root} a CarbonCP bundle? {_REBUILD}")
        manifest = _read_json(mpath)
        _check_header(mpath, manifest)
        partitions = [_partition(mpath, i, d) for i, d in enumerate(manifest["partitions"])]
        bundle = cls(root, manifest, partitions)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check that every listed file exists with its recorded size and sha256."""
        for rel, meta in self.manifest["files"].items():
            fpath = self.path / rel
            if not fpath.is_file():
                raise BundleError(f"{fpath}: listed in the manifest but missing; {_REBUILD}")
            size = fpath.stat().st_size
            want = _req(self.path / MANIFEST, meta, "bytes", f"files.{rel}")
            if size != want:
                raise BundleError(
                    f"{fpath}: {size} bytes but the manifest says {want} (truncated or "
                    f"replaced?); {_REBUILD}"
                )
            digest = sha256_file(fpath)
            if digest != meta.get("sha256"):
                raise BundleError(
                    f"{fpath}: sha256 mismatch (file changed since export); {_REBUILD}"
                )
        for part in self.partitions:
            for rel in (*part.head.values(), *part.tail.values()):
                if rel not in self.manifest["files"]:
                    raise BundleError(
                        f"{self.path / MANIFEST}: artifact '{rel}' of p={part.p} is not in 'files'"
                    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def register_file(manifest: dict[str, Any], root: Path, rel: str) -> None:
    """Record (or refresh) a file's size and sha256 in the manifest. Used by the tooling."""
    fpath = Path(root) / rel
    manifest.setdefault("files", {})[rel] = {
        "sha256": sha256_file(fpath),
        "bytes": fpath.stat().st_size,
    }


def save_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json atomically (a crash never leaves a half-written manifest)."""
    root = Path(root)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, root / MANIFEST)
    return root / MANIFEST


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{path}: malformed JSON at line {exc.lineno} ({exc.msg}); {_REBUILD}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text; {_REBUILD}") from exc
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object at the top level; {_REBUILD}")
    return data


@contextlib.contextmanager
def section_fault(path: Path | str, fix: str, where: str = "") -> Iterator[None]:
    """Turn a wrong type or shape met while reading a bundle file (a KeyError, IndexError,
    TypeError, ValueError or AttributeError from the parsing code) into one BundleError that
    names the file, the part being read and what to do, instead of a traceback."""
    try:
        yield
    except BundleError:
        raise
    except KeyError as exc:
        raise BundleError(
            f"{path}: {where + ': ' if where else ''}missing key {exc}; {fix}"
        ) from None
    except (IndexError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(
            f"{path}: {where + ': ' if where else ''}malformed ({exc}); {fix}"
        ) from None


def _req(mpath: Path, obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise BundleError(f"{mpath}: missing key '{where}.{key}' ; {_REBUILD}".replace(" ;", ";"))
    return obj[key]


def _check_header(mpath: Path, m: dict[str, Any]) -> None:
    if m.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not a CarbonCP bundle manifest (format={m.get('format')!r})")
    version = _req(mpath, m, "format_version", "manifest")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: bundle format version {version!r} is not supported by this runtime "
            f"(it reads version {FORMAT_VERSION}); upgrade carboncp or re-export the bundle"
        )
    for key in ("model", "input", "output", "partitions", "files"):
        _req(mpath, m, key, "manifest")
    _req(mpath, m["model"], "name", "model")
    for key in ("shape", "dtype"):
        _req(mpath, m["input"], key, "input")
        _req(mpath, m["output"], key, "output")
    for key, kind in (("model", dict), ("input", dict), ("output", dict), ("files", dict)):
        if not isinstance(m[key], kind):
            raise BundleError(f"{mpath}: '{key}' must be a JSON object; {_REBUILD}")
    for key, obj in (("sections", m), ("tools", m), ("verification", m), ("weights", m["model"])):
        if not isinstance(obj.get(key, {}), dict):
            raise BundleError(f"{mpath}: '{key}' must be a JSON object; {_REBUILD}")
    with section_fault(mpath, _REBUILD):
        for key in ("input", "output"):
            [int(v) for v in m[key]["shape"]]  # a list of integers, or a clear error
    if not isinstance(m["partitions"], list) or len(m["partitions"]) < 2:
        raise BundleError(f"{mpath}: 'partitions' must list at least p = 0 and p = P; {_REBUILD}")


def _float16(d: Any) -> dict[str, Any] | None:
    """The float16-wire record: None, or an object of numbers / booleans / nulls."""
    if d is None:
        return None
    bad = [k for k, v in d.items() if v is not None and not isinstance(v, (bool, int, float))]
    if bad:
        raise ValueError(f"float16.{bad[0]} is not a number")
    return dict(d)


def _partition(mpath: Path, i: int, d: Any) -> Partition:
    where = f"partitions[{i}]"
    wire = _req(mpath, d, "wire", where)
    p = _req(mpath, d, "p", where)
    if p != i:
        raise BundleError(f"{mpath}: {where} has p={p!r}; partitions must be listed in order 0..P")
    dtype = _req(mpath, wire, "dtype", f"{where}.wire")
    if dtype not in WIRE_DTYPES:
        raise BundleError(
            f"{mpath}: {where}.wire.dtype {dtype!r} is not one of {sorted(WIRE_DTYPES)}"
        )
    with section_fault(mpath, _REBUILD, where):
        return Partition(
            p=int(p),
            cut=str(_req(mpath, d, "cut", where)),
            wire_dtype=dtype,
            wire_shape=tuple(int(x) for x in _req(mpath, wire, "shape", f"{where}.wire")),
            wire_bytes=int(_req(mpath, wire, "bytes", f"{where}.wire")),
            head={str(k): str(v) for k, v in (d.get("head") or {}).items()},
            tail={str(k): str(v) for k, v in (d.get("tail") or {}).items()},
            verify_max_abs={k: float(v) for k, v in (d.get("verify") or {}).items()},
            float16=_float16(d.get("float16")),
        )
