"""Which files a validation is about: the artifact the user named, its bundle and manifest.

An artifact is a bundle directory, its `model.onnx`, or an engine (`model.plan`); every one needs
the bundle's manifest.json beside it, because the manifest says how to rebuild the reference and
which ONNX file the engine must have been built from. Needs no torch and no TensorRT.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.manifest import MANIFEST, read_manifest
from edgemerge.contracts.files import sha256_file
from edgemerge.contracts.identity import check_onnx_file

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


@dataclass
class Artifact:
    """What is validated (`kind` "onnx" or "engine") and the bundle around it."""

    path: Path  # the ONNX file or engine that runs
    kind: str
    bundle: Path
    manifest: dict
    onnx_path: Path | None  # the bundle's ONNX file (for an engine: the file it was built from)
    hashes: dict = field(default_factory=dict)

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")


def _tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def find_artifact(path: str | Path) -> Artifact:
    """Resolve a bundle directory, an ONNX file or an engine, and check the ONNX file's sha256.

    A directory means its engine when `model.plan` is there and TensorRT can be imported, else its
    `model.onnx`; name the file to choose.
    """
    path = Path(path)
    if not path.exists():
        raise EdgemergeError(f"artifact not found: {path}")
    manifest = read_manifest(path)
    bundle = path if path.is_dir() else path.parent
    if path.is_dir():
        plan = path / "model.plan"
        kind = "engine" if plan.is_file() and _tensorrt_importable() else "onnx"
        path = plan if kind == "engine" else path / "model.onnx"
        if not path.is_file():
            raise EdgemergeError(f"{bundle}: bundle has no model.onnx")
    elif path.suffix.lower() == ".onnx":
        kind = "onnx"
    elif path.suffix.lower() in ENGINE_SUFFIXES:
        kind = "engine"
    else:
        raise EdgemergeError(f"{path}: not an ONNX file (.onnx) or engine ({', '.join(ENGINE_SUFFIXES)})")

    onnx_path = path if kind == "onnx" else bundle / "model.onnx"
    hashes: dict = {"manifest_sha256": sha256_file(bundle / MANIFEST)}
    want = manifest["onnx_sha256"]
    if onnx_path.is_file():
        hashes["onnx_sha256"] = check_onnx_file(manifest, onnx_path, bundle / MANIFEST)  # cut short, edited
    elif kind == "onnx":
        raise EdgemergeError(f"ONNX file not found: {onnx_path}")
    else:
        onnx_path = None
    if kind == "engine":
        from edgemerge.trt.record import read_record

        record = read_record(path)  # one line when the build record is missing
        hashes["engine_sha256"] = sha256_file(path)
        if record.onnx_sha256 != want:
            raise EdgemergeError(f"{path}: built from an ONNX file with sha256 {record.onnx_sha256[:16]}, "
                                 f"not this bundle's ({want[:16]}): rebuild the engine from this bundle")
    return Artifact(path=path, kind=kind, bundle=bundle, manifest=manifest, onnx_path=onnx_path, hashes=hashes)
