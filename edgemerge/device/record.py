"""The build record written beside every engine (model.plan.json): what it was built from and for."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.files import atomic_write_bytes, sha256_file
from edgemerge.contracts.manifest import MANIFEST
from edgemerge.device.gpu import query_gpu
from edgemerge.device.layers import _summary, layer_types, merge_sites, site_layer_types
from edgemerge.device.parser import AS_IS

RECORD_SCHEMA = 2
PYTHON_PLUGINS = "python-plugins"
NO_PLUGINS = "none"


# ---- the build record -----------------------------------------------------------------------------

@dataclass
class BuildRecord:
    """What an engine was built from and for; stored as `<engine>.json` (model.plan.json)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    plugins: str  # a library path, PYTHON_PLUGINS or NO_PLUGINS
    plugins_sha256: str | None
    onnx_sha256: str
    engine_sha256: str
    engine_size: int
    edgemerge_version: str
    build_time: str  # ISO 8601, UTC
    precision: str = "fp32"  # the bundle's manifest precision
    strongly_typed: bool = False
    fp16_flag: bool = False
    tf32: bool | None = None  # what the build used; None: not stated by the builder (never assumed)
    build_seconds: float | None = None
    graph: str = AS_IS  # what the parser was given: AS_IS, STRIP or NATIVE
    # per merge op: {"sites": n, "plugin_layers": k}; None when the layers were not inspected
    plugin_layers: dict | None = None
    # the LayerType strings the engine's layer information holds ({type: count}) and, per merge op,
    # those of the layers named after its merge sites; None when the layers were not inspected
    layer_types: dict | None = None
    site_layer_types: dict | None = None
    schema: int = RECORD_SCHEMA
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "BuildRecord":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as e:
            raise EdgemergeError(f"build record is incomplete ({e})") from None

    def plugin_summary(self) -> str:
        """'TokenMerge 12/12, ...' or why there is none."""
        if self.plugin_layers is None:
            return "not inspected (engine built without layer information)"
        return _summary({op: (v["plugin_layers"], v["sites"]) for op, v in self.plugin_layers.items()})

    def engine_build(self) -> dict:
        """What the engine holds, for validate's and bench's reports: the merge ops as plugins, or
        their bodies."""
        return {"graph": self.graph, "plugins": self.plugins, "plugin_layers": self.plugin_layers,
                "summary": self.plugin_summary()}


def record_path(plan_path: str | os.PathLike) -> Path:
    """model.plan -> model.plan.json"""
    p = Path(plan_path)
    return p.with_name(p.name + ".json")


def layers_path(plan_path: str | os.PathLike) -> Path:
    """model.plan -> model.plan.layers.json (the engine inspector's JSON)"""
    p = Path(plan_path)
    return p.with_name(p.name + ".layers.json")


def write_record(plan_path: str | os.PathLike, record: BuildRecord) -> Path:
    return atomic_write_bytes(record_path(plan_path), record.to_json().encode(), mode=0o644)


def make_record(plan: Path, onnx_path: Path, manifest: dict, *, tensorrt_version: str, plugins: str,
                plugins_sha256: str | None, strongly_typed: bool, fp16_flag: bool, graph: str,
                plugin_layers: dict | None, edgemerge_version: str, build_seconds: float | None = None,
                extra: dict | None = None, tf32: bool | None = None, layer_info=None) -> BuildRecord:
    """The record of an engine built from `onnx_path` (the bundle's model.onnx) with `graph`.

    `tf32`: what the build used (trtexec: `trtexec_tf32` of its arguments; a builder config: its
    flag); None records that the caller did not say. `layer_info`: the engine inspector's JSON;
    when None, the layer file beside the engine (model.plan.layers.json) if there is one, so
    every route records the LayerType strings it saw."""
    if not plan.is_file():
        raise EdgemergeError(f"{plan}: engine file not found")
    onnx_sha = sha256_file(onnx_path)
    want = manifest.get("onnx_sha256")
    if want and want != onnx_sha:
        raise EdgemergeError(f"{onnx_path}: sha256 differs from {MANIFEST} (edited or from another export): "
                          "re-export the bundle")
    if layer_info is None and layers_path(plan).is_file():
        try:
            layer_info = json.loads(layers_path(plan).read_text())
        except (OSError, json.JSONDecodeError):
            layer_info = None
    types = sites_types = None
    if layer_info is not None:
        try:
            types = layer_types(layer_info)
            sites_types = site_layer_types(layer_info, merge_sites(manifest))
        except EdgemergeError:  # not an inspector JSON: nothing to record, the count refused it already
            types = sites_types = None
    gpu_name, cc = query_gpu()
    return BuildRecord(
        tensorrt_version=tensorrt_version, gpu_name=gpu_name or "unknown", compute_capability=cc or "unknown",
        plugins=plugins, plugins_sha256=plugins_sha256, onnx_sha256=onnx_sha,
        engine_sha256=sha256_file(plan), engine_size=plan.stat().st_size, edgemerge_version=edgemerge_version,
        build_time=datetime.fromtimestamp(plan.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        precision=manifest.get("precision", "fp32"), strongly_typed=strongly_typed, fp16_flag=fp16_flag,
        tf32=tf32, build_seconds=build_seconds, graph=graph, plugin_layers=plugin_layers,
        layer_types=types, site_layer_types=sites_types,
        extra={k: manifest[k] for k in ("model", "variant", "merge_ops") if k in manifest} | (extra or {}))


def trtexec_tf32(argv: list[str]) -> bool:
    """Whether trtexec builds with TF32, from its arguments: on unless `--noTF32` (sampleOptions.h
    `bool tf32{true}` and sampleOptions.cpp `getAndDelNegOption(arguments, "--noTF32", tf32)`:
    NVIDIA/TensorRT v10.3.0 lines 213 / 1225, v11.1 lines 253 / 1213)."""
    return "--noTF32" not in argv
