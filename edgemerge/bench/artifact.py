"""What `edgemerge bench` measures: an artifact (bundle dir, model.onnx, model.plan) and its manifest.

Needs no torch: the device side reads the manifest and runs the file it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgemerge.errors import EdgemergeError

MANIFEST = "manifest.json"
BACKENDS = ("trt", "onnxruntime", "torch")


@dataclass(frozen=True)
class Artifact:
    """One model to time: the file a backend loads, and the manifest of its bundle."""

    path: Path  # model.onnx or model.plan (for the torch backend: the bundle's ONNX or plan, unused)
    kind: str  # 'onnx' | 'plan'
    manifest: dict

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
        inputs = self.manifest.get("inputs") or []
        if inputs:
            i = inputs[0]
            return i["name"], tuple(i["shape"]), i.get("dtype", "float32")
        H, W = self.manifest["resolution"]
        dtype = "float16" if self.manifest.get("precision") == "fp16" else "float32"
        return "pixel_values", (int(self.manifest.get("batch", 1)), 3, H, W), dtype

    @property
    def gflops(self) -> dict | None:
        return (self.manifest.get("plan") or {}).get("gflops")


def read_artifact(path: str | Path) -> Artifact:
    """A bundle dir (its model.plan if present and asked for, else model.onnx), an ONNX or a plan file."""
    p = Path(path)
    if p.is_dir():
        onnx_path = p / "model.onnx"
        if not (p / MANIFEST).is_file():
            raise EdgemergeError(f"{p}: no {MANIFEST} in this directory; bench an `edgemerge export` bundle")
        if not onnx_path.is_file():
            raise EdgemergeError(f"{p}: bundle has no model.onnx")
        p = onnx_path
    elif not p.is_file():
        raise EdgemergeError(f"artifact not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".onnx", ".plan", ".engine"):
        raise EdgemergeError(f"{p}: not a bundle directory, .onnx or .plan file")
    mpath = p.with_name(MANIFEST)
    if not mpath.is_file():
        raise EdgemergeError(f"{p}: no {MANIFEST} beside it; bench an `edgemerge export` bundle")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise EdgemergeError(f"{mpath}: not valid JSON ({e.msg}, line {e.lineno})") from None
    for key in ("model", "variant", "resolution"):
        if key not in manifest:
            raise EdgemergeError(f"{mpath}: manifest has no {key!r}")
    if (p.parent / "model.onnx").is_file():
        from edgemerge.identity import check_manifest

        check_manifest(manifest, p.parent / "model.onnx", mpath)  # the label and --unmerged trust it
    return Artifact(p, "onnx" if suffix == ".onnx" else "plan", manifest)


def default_backend(artifact: Artifact) -> str:
    return "trt" if artifact.kind == "plan" else "onnxruntime"
