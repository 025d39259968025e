"""What `edgemerge bench` measures: an artifact (bundle dir, model.onnx, model.plan) and its manifest.

Needs no torch: the device side reads the manifest and runs the file it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.identity import check_onnx_file
from edgemerge.contracts.manifest import MANIFEST, Manifest, read_manifest

BACKENDS = ("trt", "onnxruntime", "torch")


@dataclass(frozen=True)
class Artifact:
    """One model to time: the file a backend loads, and the manifest of its bundle."""

    path: Path  # model.onnx or model.plan (for the torch backend: the bundle's ONNX or plan, unused)
    kind: str  # 'onnx' | 'plan'
    manifest: Manifest

    @property
    def bundle(self) -> Path:
        return self.path.parent

    @property
    def label(self) -> str:
        m = self.manifest
        res = "x".join(str(v) for v in m.get("resolution", []))
        return f"{m.get('model', '?')}-{m.get('variant', '?')} {res} {m.get('precision', '')}".strip()

    def input_spec(self) -> tuple[str, tuple[int, ...], str]:
        """(name, shape, numpy dtype name) of the model input, from the manifest."""
        return self.manifest.input_spec()

    @property
    def gflops(self) -> dict | None:
        return (self.manifest.get("plan") or {}).get("gflops")


def read_artifact(path: str | Path) -> Artifact:
    """A bundle dir (its model.plan if present and asked for, else model.onnx), an ONNX or a plan file."""
    p = Path(path)
    if p.is_dir():
        onnx_path = p / "model.onnx"
        if not onnx_path.is_file():
            raise EdgemergeError(f"{p}: bundle has no model.onnx")
        p = onnx_path
    elif not p.is_file():
        raise EdgemergeError(f"artifact not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".onnx", ".plan", ".engine"):
        raise EdgemergeError(f"{p}: not a bundle directory, .onnx or .plan file")
    manifest = read_manifest(p)
    onnx_path = p.parent / "model.onnx"  # a plan's bundle too: its manifest must still describe the export
    if onnx_path.is_file():  # a copy cut short, an edit, a manifest edited after export: before any work
        check_onnx_file(manifest, onnx_path, p.parent / MANIFEST)
    return Artifact(p, "onnx" if suffix == ".onnx" else "plan", manifest)


def default_backend(artifact: Artifact) -> str:
    return "trt" if artifact.kind == "plan" else "onnxruntime"
