"""What `build_on_device.sh` needs besides TensorRT, cmake and CUDA, in Python's standard library.

A stock JetPack 6 shell has `python3` but none of edgemerge's dependencies (no onnx, no numpy in
the system interpreter by default, no torch), so this one file does, with nothing but the standard
library, every step of the device build that is not TensorRT's own:

- `graph`: which ONNX file the parser must see for the intended implementation of the merge ops
  (`parser_implementation` states TensorRT's rule; `choose_graph` applies it) and, for TensorRT
  before 10.7 with our plugins, that file (model.onnx less its `edgemerge` functions);
- `record`: the build record (model.plan.json) with, per merge op, the plugin layers the engine
  holds against the merge sites of the manifest, read from trtexec's `--exportLayerInfo` JSON;
- `arch`: the GPU's compute capability for CMake, robust to Jetson's `nvidia-smi` ([N/A]).

The bundle carries a copy of this file (`edgemerge_device.py`); the package imports the same file
(`edgemerge.files`, `edgemerge.record`, `edgemerge.trt.builder`), so script and `edgemerge build` share one rule,
one record format and one layer count. It must keep importing nothing outside the standard
library: `tests/test_device_tool.py` runs it with `python3 -I -S`.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

DOMAIN = "edgemerge"  # ONNX domain of the merge ops, also their TensorRT plugin namespace
MERGE_OPS = ("TokenMatchBipartite", "TokenMatchWindow", "TokenMerge", "TokenUnmerge")
RECORD_SCHEMA = 2
PYTHON_PLUGINS = "python-plugins"
NO_PLUGINS = "none"


class DeviceError(Exception):
    """A one-line failure of a device step; exit code 2 (bad input) or 1 (a check failed)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


# ---- TensorRT's ONNX parser: which implementation a node gets -----------------------------------

PLUGIN, FUNCTION, UNSUPPORTED = "plugin", "function", "unsupported"


def parse_version(text: str) -> tuple[int, int, int]:
    """'10.3.0.30' -> (10, 3, 0); missing parts are 0."""
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


def parser_implementation(version: tuple[int, int, int], *, plugin_registered: bool,
                          plugin_namespace: bool, local_function: bool,
                          plugin_override: bool = False) -> str:
    """The implementation TensorRT's ONNX parser gives a node in a custom domain (no built-in
    importer exists for our op types): PLUGIN, FUNCTION (the model-local function, inlined) or
    UNSUPPORTED (the parse fails).

    Sources (the parser is onnx/onnx-tensorrt, NVIDIA/TensorRT's submodule parsers/onnx; the
    per-commit table with its citations is tests/trt/fake_trtexec.py PARSER_TABLE, which the tests
    hold this function to):
    - <= 10.6: `ModelImporter.cpp` `parseNode` at release/10.1-GA (commit 96e78110, lines 153-168;
      also v10.0.0's 973d68d and v10.0.1's eb43908): the built-in importer table (keyed by op_type
      alone, the domain is ignored), then `ctx->localFunctions()` (keyed by function name), and only
      then `FallbackPluginImporter`. TensorRT v10.3.0's parser commit 62bdde2a could not be read;
      the change below is the 10.7 GA changelog's, so JetPack 6 keeps this order: a node whose
      function the file carries is always inlined, plugin or not.
    - 10.7 .. 10.14: Changelog 10.7 GA "Now prioritizes using plugins over local functions when a
      corresponding plugin is available in the registry"; `parseNode` at v10.14's parser commit
      c727277 (and the static check at v10.12's ff761af) asks `isNodeInPluginRegistry` (creator by
      op_type, `plugin_version` or "1", `plugin_namespace` or "") before the local function.
    - >= 10.15 (11.x too): `shouldImportAsPlugin` = (`kENABLE_PLUGIN_OVERRIDE` or a
      `plugin_namespace` attribute) and the plugin is registered: plugin first; otherwise built-in,
      local function ("local function will be preferred over plugin if the flag is unset"), and the
      plugin fallback only for a node with neither (read at v10.16's 6bde659 and v11.0's 5ab48c5;
      10.15's fa5aa9f not readable: Changelog 10.15 GA, include/NvOnnxParser.h v10.15:125-129).
    Our nodes always carry `plugin_namespace="edgemerge"` (plugin_version defaults to "1").
    """
    if version < (10, 7, 0):
        if local_function:
            return FUNCTION
        return PLUGIN if plugin_registered else UNSUPPORTED
    if version < (10, 15, 0):
        if plugin_registered:
            return PLUGIN
        return FUNCTION if local_function else UNSUPPORTED
    if plugin_registered and (plugin_namespace or plugin_override or not local_function):
        return PLUGIN
    return FUNCTION if local_function else UNSUPPORTED


AS_IS, STRIP, NATIVE = "model.onnx", "strip-functions", "native"


def choose_graph(version: tuple[int, int, int], plugins: bool) -> str:
    """Which graph to hand the parser for a plugin bundle (model.onnx: `edgemerge` nodes with
    `plugin_namespace` and their model-local functions), so every merge op gets the intended
    implementation: our plugin when `plugins`, else the standard-op bodies.

    AS_IS: model.onnx leads there. STRIP: model.onnx less its `edgemerge` functions (plugins on
    TensorRT < 10.7, where a carried function always wins). NATIVE: the bodies inlined (the graph
    `--merge-ops native` writes): no plugin, and no reliance on the parser's local-function
    importer. Derived from `parser_implementation`, never restated.
    """
    if not plugins:
        return NATIVE
    if parser_implementation(version, plugin_registered=True, plugin_namespace=True,
                             local_function=True) == PLUGIN:
        return AS_IS
    if parser_implementation(version, plugin_registered=True, plugin_namespace=True,
                             local_function=False) == PLUGIN:
        return STRIP
    raise DeviceError(f"TensorRT {'.'.join(map(str, version))}: no graph leads to the edgemerge plugins")


# ---- ONNX without the onnx package: drop model-local functions ----------------------------------

_MODEL_FUNCTIONS = 25  # onnx.proto: ModelProto.functions
_FUNCTION_DOMAIN = 10  # onnx.proto: FunctionProto.domain


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise DeviceError("not an ONNX file (truncated protobuf)")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, start, value start, end) of each top-level protobuf field."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, end = _varint(data, pos)
        elif wire == 1:
            end = pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            end = pos + length
        elif wire == 5:
            end = pos + 4
        else:
            raise DeviceError(f"not an ONNX file (protobuf wire type {wire})")
        if end > len(data) or number == 0:
            raise DeviceError("not an ONNX file (truncated protobuf)")
        yield number, wire, start, pos, end
        pos = end


def _function_domain(body: bytes) -> str:
    for number, wire, _, vstart, end in _fields(body):
        if number == _FUNCTION_DOMAIN and wire == 2:
            return body[vstart:end].decode()
    return ""


def strip_functions(data: bytes, domain: str = DOMAIN) -> tuple[bytes, int]:
    """The serialized ModelProto less its model-local functions of `domain`, and how many went.

    Everything else is kept byte for byte, so the result equals what onnx would serialize for the
    same model with those functions deleted (fields are written in field-number order)."""
    out, dropped = bytearray(), 0
    for number, wire, start, vstart, end in _fields(data):
        if number == _MODEL_FUNCTIONS and wire == 2 and _function_domain(data[vstart:end]) == domain:
            dropped += 1
            continue
        out += data[start:end]
    return bytes(out), dropped


_MODEL_METADATA_PROPS = 14  # onnx.proto: ModelProto.metadata_props (StringStringEntryProto key=1, value=2)
SOURCE_SHA_KEY = "edgemerge.source_onnx_sha256"  # in a derived graph: sha256 of the model.onnx it was made from


def derived_from(data: bytes) -> str | None:
    """The `SOURCE_SHA_KEY` metadata property of a serialized ModelProto (None when absent), read
    without the onnx package: a derived graph is reused only for the model.onnx it was made from."""
    try:
        for number, wire, _, vstart, end in _fields(data):
            if number != _MODEL_METADATA_PROPS or wire != 2:
                continue
            sub = data[vstart:end]
            entry = {n: sub[vs:e] for n, w, _, vs, e in _fields(sub) if w == 2}
            if entry.get(1, b"").decode(errors="replace") == SOURCE_SHA_KEY:
                return entry.get(2, b"").decode(errors="replace")
    except DeviceError:
        return None
    return None


# ---- the engine's layers: plugin layers per merge op -------------------------------------------

def _layers(info) -> list:
    """The layer entries of an engine-inspector JSON (trtexec --exportLayerInfo, or
    IEngineInspector.get_engine_information(LayerInformationFormat.JSON)): {"Layers": [...],
    "Bindings": [...]}; an entry is a dict with profilingVerbosity=detailed, a name otherwise."""
    if isinstance(info, dict):
        info = info.get("Layers", [])
    if not isinstance(info, list):
        raise DeviceError("layer information has no 'Layers' list")
    return info


def _layer_name(layer) -> str:
    return layer if isinstance(layer, str) else str(layer.get("Name", ""))


def is_plugin_layer(layer) -> bool:
    """A plugin layer: a LayerType that starts with "Plugin" (detailed verbosity).

    "PluginV2" is the string TensorRT's own trt-engine-explorer knows (trex/colors.py and
    trex/plotting.py at NVIDIA/TensorRT v10.3.0 and v11.1); the string of an IPluginV3 layer is
    confirmed by no source read so far ("PluginV3" assumed): `layer_types` records every LayerType
    an engine holds, and `site_layer_types` those of the layers named after merge sites, so the
    first real build shows it."""
    return isinstance(layer, dict) and str(layer.get("LayerType", "")).startswith("Plugin")


def layer_types(info) -> dict[str, int]:
    """{LayerType: count} over the engine's layers, as TensorRT wrote them ({} for names only)."""
    counts: dict[str, int] = {}
    for layer in _layers(info):
        if isinstance(layer, dict):
            kind = str(layer.get("LayerType", ""))
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def site_layer_types(info, sites: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Per merge op, {LayerType: count} of the layers named after its merge sites (the plugin
    layers when TensorRT took the plugin, whatever string it gives them)."""
    kinds: dict[str, str] = {}
    for layer in _layers(info):
        if isinstance(layer, dict):
            kinds.setdefault(_layer_name(layer), str(layer.get("LayerType", "")))
    out: dict[str, dict[str, int]] = {}
    for op, names in sites.items():
        seen: dict[str, int] = {}
        for name in names:
            if name in kinds:
                seen[kinds[name]] = seen.get(kinds[name], 0) + 1
        out[op] = dict(sorted(seen.items()))
    return out


def layer_types_summary(types: dict[str, int] | None) -> str:
    """'CaskConvolution 3, PluginV3 2' or why there is none."""
    if not types:
        return "not recorded"
    return ", ".join(f"{kind or '(none)'} {n}" for kind, n in sorted(types.items()))


def count_plugin_layers(info, sites: dict[str, list[str]]) -> dict[str, int]:
    """Per merge op, how many of its nodes (`sites`: op -> ONNX node names) became plugin layers.

    A plugin layer is named after its ONNX node (the parser names layers by node); its
    LayerType says it is a plugin. Needs profilingVerbosity=detailed: names alone do not show
    whether a layer is the plugin or the first layer of an inlined body, so that is refused.
    """
    layers = _layers(info)
    if layers and not any(isinstance(layer, dict) for layer in layers):
        raise DeviceError("layer information has names only: build with --profilingVerbosity=detailed")
    plugin_names = {_layer_name(layer) for layer in layers if is_plugin_layer(layer)}
    return {op: sum(1 for name in names if name in plugin_names) for op, names in sites.items()}


def _summary(layers_and_sites: dict[str, tuple[int, int]]) -> str:
    """'TokenMerge 12/12, TokenUnmerge 4/4' from {op: (plugin layers, merge sites)}."""
    return ", ".join(f"{op} {k}/{n}" for op, (k, n) in sorted(layers_and_sites.items())) or "no merge sites"


def plugin_layer_summary(counts: dict[str, int], sites: dict[str, list[str]]) -> str:
    """'TokenMerge 12/12, TokenUnmerge 4/4' (plugin layers / merge sites)."""
    return _summary({op: (counts.get(op, 0), len(names)) for op, names in sites.items()})


def check_plugin_layers(counts: dict[str, int], sites: dict[str, list[str]], *, allow_body_only: bool) -> None:
    """A plugin build must hold one plugin layer per merge site; fewer is a failed check."""
    short = {op: (counts.get(op, 0), len(names)) for op, names in sites.items() if counts.get(op, 0) < len(names)}
    if short and not allow_body_only:
        raise DeviceError(
            "the engine holds fewer plugin layers than merge sites (" + plugin_layer_summary(counts, sites)
            + "): TensorRT built the function bodies instead of the edgemerge plugins; "
            "rerun with --allow-body-only to accept that", exit_code=1)


# ---- the machine ----------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_beside(path: Path, data: bytes, mode: int | None, temps: list[str]) -> str:
    """`data` in a temp file beside `path` (fsynced, `mode` set), noted in `temps` as soon as it
    exists so that the caller can remove it on failure; renaming it into place is the caller's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temps.append(tmp)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write to a temp file in the same directory, fsync, rename: readers never see half a file."""
    path = Path(path)
    temps: list[str] = []
    try:
        os.replace(write_beside(path, data, mode, temps), path)
    except BaseException:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _gpu_from_driver() -> tuple[str, str] | None:
    """libcuda's driver API through ctypes: present wherever a GPU driver is (Jetson included)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return None
    dev = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), 0) != 0:
        return None
    buf = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    if cuda.cuDeviceGetName(buf, 256, dev) != 0:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if (cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) != 0
            or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev) != 0):
        return None
    return buf.value.decode(errors="replace"), f"{major.value}.{minor.value}"


_CC = re.compile(r"^\d+\.\d+$")


def _gpu_from_nvidia_smi() -> tuple[str, str] | None:
    """Desktop nvidia-smi; Jetson's answers `[N/A]` for most fields, which is not a GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    line = out.strip().splitlines()[0] if out.strip() else ""
    if "," not in line:
        return None
    name, cc = (s.strip() for s in line.rsplit(",", 1))
    return (name, cc) if _CC.match(cc) else None


def _gpu_from_tegra(root: str = "/") -> tuple[str, str] | None:
    """Jetson Orin (tegra234, sm_87) from the device tree when no driver call answers."""
    try:
        compatible = (Path(root) / "proc/device-tree/compatible").read_bytes()
    except OSError:
        return None
    if b"tegra234" in compatible:
        return "Orin (nvgpu)", "8.7"
    return None


def query_gpu() -> tuple[str | None, str | None]:
    """(name, compute capability) of GPU 0 from the CUDA driver, nvidia-smi or Jetson's device tree."""
    for probe in (_gpu_from_driver, _gpu_from_nvidia_smi, _gpu_from_tegra):
        try:
            found = probe()
        except Exception:  # a probe must never break a build; the next one may work
            found = None
        if found:
            return found
    return None, None


def cuda_arch(default: str = "87") -> str:
    """CMake's CUDA architecture for this GPU ("87"); `default` (Orin) when nothing answers."""
    _, cc = query_gpu()
    return cc.replace(".", "") if cc else default


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
            raise DeviceError(f"build record is incomplete ({e})") from None

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


def read_manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    if not path.is_file():
        raise DeviceError(f"{bundle}: no manifest.json; run this from an `edgemerge export` bundle")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DeviceError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def merge_sites(manifest: dict) -> dict[str, list[str]]:
    """op -> the ONNX node names of its merge sites (written by export; [] for older bundles)."""
    return {op: list(names) for op, names in (manifest.get("merge_sites") or {}).items()}


def inspect_layers(layer_info, manifest: dict, *, uses_plugins: bool, allow_body_only: bool) -> dict | None:
    """The record's `plugin_layers`, after refusing a plugin build that holds too few."""
    sites = merge_sites(manifest)
    if layer_info is None:
        return None
    counts = count_plugin_layers(layer_info, sites)
    if uses_plugins:
        check_plugin_layers(counts, sites, allow_body_only=allow_body_only)
    return {op: {"sites": len(names), "plugin_layers": counts[op]} for op, names in sites.items()}


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
        raise DeviceError(f"{plan}: engine file not found")
    onnx_sha = sha256_file(onnx_path)
    want = manifest.get("onnx_sha256")
    if want and want != onnx_sha:
        raise DeviceError(f"{onnx_path}: sha256 differs from manifest.json (edited or from another export): "
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
        except DeviceError:  # not an inspector JSON: nothing to record, the count refused it already
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


# ---- command line (build_on_device.sh) -------------------------------------------------------------

def _cmd_arch(args) -> str:
    return cuda_arch(args.default)


def graph_for(bundle: Path, version: tuple[int, int, int], plugins: bool) -> tuple[str, str]:
    """(file in the bundle to build, graph kind) for this TensorRT and plugin availability; writes
    model.trt.onnx (functions stripped) or model.native.onnx (bodies inlined) when needed."""
    manifest = read_manifest(bundle)
    if manifest.get("merge_ops") == "native":
        return "model.onnx", NATIVE
    choice = choose_graph(version, plugins)
    if choice == AS_IS:
        return "model.onnx", AS_IS
    if choice == STRIP:
        stripped, dropped = strip_functions((bundle / "model.onnx").read_bytes())
        if dropped == 0:
            raise DeviceError("model.onnx carries no edgemerge functions to strip: re-export the bundle")
        atomic_write_bytes(bundle / "model.trt.onnx", stripped, mode=0o644)
        return "model.trt.onnx", STRIP
    native = bundle / "model.native.onnx"
    source_sha = sha256_file(bundle / "model.onnx")
    if not native.is_file() or derived_from(native.read_bytes()) != source_sha:
        try:  # the inliner needs onnx + onnxscript: an edgemerge install without torch is enough
            import onnx

            from edgemerge.graphs import inline_merge_ops
        except ImportError:
            stale = " (the model.native.onnx here was made from another model.onnx)" if native.is_file() else ""
            raise DeviceError(
                "without the plugin library the merge ops are built from their bodies, inlined; making "
                f"that graph here{stale} needs `pip install --no-deps edgemerge && pip install onnx onnxscript`, "
                "or export with --merge-ops native") from None
        inlined = inline_merge_ops(onnx.load(str(bundle / "model.onnx")))
        kept = [p for p in inlined.metadata_props if p.key != SOURCE_SHA_KEY]
        del inlined.metadata_props[:]
        inlined.metadata_props.extend(kept)
        inlined.metadata_props.add(key=SOURCE_SHA_KEY, value=source_sha)
        atomic_write_bytes(native, inlined.SerializeToString(), mode=0o644)
    return native.name, NATIVE


def _cmd_graph(args) -> str:
    path, kind = graph_for(Path(args.bundle), parse_version(args.trt_version), args.plugins == "yes")
    return f"{path} {kind}"


def _cmd_record(args) -> str:
    bundle = Path(args.bundle)
    manifest = read_manifest(bundle)
    plan = bundle / args.plan
    info = None
    if args.layers:
        try:
            info = json.loads(Path(args.layers).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DeviceError(f"{args.layers}: cannot read the layer information ({e})") from None
    uses_plugins = args.plugins is not None
    layers = inspect_layers(info, manifest, uses_plugins=uses_plugins, allow_body_only=args.allow_body_only)
    if uses_plugins:
        lib = Path(args.plugins)
        if not lib.is_file():
            raise DeviceError(f"plugin library {lib} not found")
        label, lib_sha = os.path.relpath(lib.resolve(), bundle.resolve()), sha256_file(lib)
    else:
        label, lib_sha = NO_PLUGINS, None
    record = make_record(plan, bundle / "model.onnx", manifest, tensorrt_version=args.trt_version,
                         plugins=label, plugins_sha256=lib_sha, strongly_typed=args.strongly_typed,
                         fp16_flag=args.fp16, graph=args.graph, plugin_layers=layers,
                         edgemerge_version=manifest.get("versions", {}).get("edgemerge", "unknown"),
                         extra={"built_by": "trtexec"}, tf32=_tf32_of(args), layer_info=info)
    write_record(plan, record)
    sites = "; ".join(f"{op} {layer_types_summary(t)}" for op, t in sorted((record.site_layer_types or {}).items()))
    return (f"{record_path(plan).name}: TensorRT {record.tensorrt_version}, {record.gpu_name} "
            f"({record.compute_capability}), plugins {record.plugins}, tf32 {_on_off(record.tf32)}, "
            f"plugin layers: {record.plugin_summary()}; layer types: {layer_types_summary(record.layer_types)}"
            + (f"; merge-site layer types: {sites}" if sites else ""))


def _on_off(flag: bool | None) -> str:
    return "not stated" if flag is None else ("on" if flag else "off")


def _tf32_of(args) -> bool | None:
    """TF32 as the build used it: --trtexec-args (the trtexec command's arguments) or --tf32."""
    if args.trtexec_args is not None:
        import shlex

        from_args = trtexec_tf32(shlex.split(args.trtexec_args))
        if args.tf32 is not None and (args.tf32 == "on") != from_args:
            raise DeviceError(f"--tf32 {args.tf32} contradicts the trtexec arguments given (--noTF32 "
                              f"{'absent' if from_args else 'present'})")
        return from_args
    return None if args.tf32 is None else args.tf32 == "on"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 edgemerge_device.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("arch", help="CUDA architecture for CMake (87 on Orin)")
    a.add_argument("--default", default="87")
    g = sub.add_parser("graph", help="the ONNX file to build, for this TensorRT and plugin availability")
    g.add_argument("--bundle", default=".")
    g.add_argument("--trt-version", required=True)
    g.add_argument("--plugins", choices=("yes", "no"), required=True)
    r = sub.add_parser("record", help="write model.plan.json (checks the plugin layers)")
    r.add_argument("--bundle", default=".")
    r.add_argument("--plan", default="model.plan")
    r.add_argument("--trt-version", required=True)
    r.add_argument("--graph", required=True, choices=(AS_IS, STRIP, NATIVE))
    r.add_argument("--layers", help="trtexec --exportLayerInfo JSON")
    r.add_argument("--plugins", help="the plugin library the engine was built with")
    r.add_argument("--strongly-typed", action="store_true")
    r.add_argument("--fp16", action="store_true")
    r.add_argument("--trtexec-args",
                   help='the trtexec command\'s arguments as one string (--trtexec-args="..."): TF32 is read from them')
    r.add_argument("--tf32", choices=("on", "off"), help="TF32 as the build used it, when not from --trtexec-args")
    r.add_argument("--allow-body-only", action="store_true",
                   help="accept a plugin build whose engine holds fewer plugin layers than merge sites")
    args = ap.parse_args(argv)
    try:
        print({"arch": _cmd_arch, "graph": _cmd_graph, "record": _cmd_record}[args.command](args))
    except DeviceError as e:
        print(f"edgemerge: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"edgemerge: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
