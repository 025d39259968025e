"""Build a TensorRT engine from an edgemerge bundle, and load one back only where it can run.

Small composable steps in polygraphy's shape: polygraphy's own `NetworkFromOnnxPath`,
`CreateConfig`, `EngineBytesFromNetwork`, `EngineFromBytes`, plus `CheckedBytesFromPath` here.
Everything that can be decided without TensorRT (manifest, typing, record checks) is a pure
function, so it is tested on machines without a GPU.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path


from edgemerge import __version__
from edgemerge.device.layers import inspect_layers
from edgemerge.device.parser import graph_for
from edgemerge.device.record import make_record
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.graphs import onnx_has_fp16
from edgemerge.contracts.manifest import MANIFEST, manifest_path
from edgemerge.contracts.manifest import read_manifest
from edgemerge.trt.lib import has_python_plugins, require_tensorrt
from edgemerge.device.parser import parse_version
from edgemerge.device.record import NO_PLUGINS, PYTHON_PLUGINS, BuildRecord, layers_path, write_record
from edgemerge.trt.record import Environment, check_record, current_environment, read_record
from edgemerge.contracts.files import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)



# ---- pure steps -------------------------------------------------------------------------------

def check_bundle_onnx(onnx_path: str | os.PathLike) -> Path:
    """An ONNX file with its bundle's manifest beside it; an ONNX file alone is refused, because the
    engine's record must name the bundle it was built from and the precision it was exported at."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EdgemergeError(f"{onnx_path}: ONNX file not found")
    if not manifest_path(onnx_path).is_file():
        raise EdgemergeError(
            f"{onnx_path}: no {MANIFEST} beside it; build from an `edgemerge export` bundle directory")
    return onnx_path


def check_onnx_matches_manifest(onnx_path: Path, manifest: dict) -> str:
    """sha256 of the ONNX file, refusing one that is not the file the manifest describes."""
    digest = sha256_file(onnx_path)
    want = manifest.get("onnx_sha256")
    if want and want != digest:
        raise EdgemergeError(
            f"{onnx_path}: sha256 differs from {MANIFEST} (edited or from another export): re-export the bundle")
    return digest


@dataclass(frozen=True)
class Typing:
    strongly_typed: bool
    fp16_flag: bool
    reason: str


def choose_typing(version: tuple[int, int, int], precision: str, onnx_fp16: bool,
                  strongly_typed_available: bool = True) -> Typing:
    """How to build a bundle of `precision` on TensorRT `version`.

    - 11.x: strongly typed only (the FP16 flag is gone): the ONNX decides. An "fp16" bundle whose
      ONNX has no float16 tensor would silently become an fp32 engine, so it is refused.
    - 10.x, fp16-typed ONNX: strongly typed (available since 10.0) so TensorRT keeps exactly the
      types the exporter chose and ORT validated: the matching, the merge sums and the norms stay
      fp32. A weakly typed FP16 build may move those to fp16 (or the fp16 parts to fp32).
    - 10.x, fp16 bundle with an fp32-typed ONNX: weakly typed + BuilderFlag.FP16; TensorRT picks
      per layer (the match plugins declare fp32 only, so matching stays fp32).
    - fp32 bundle: an fp32 engine (no flag), weakly typed on 10.x.
    """
    if version < (10, 0, 0):
        raise EdgemergeError(f"TensorRT {'.'.join(map(str, version))} is too old: edgemerge needs >= 10.3")
    if version >= (11, 0, 0):
        if precision == "fp16" and not onnx_fp16:
            raise EdgemergeError(
                "manifest says fp16 but model.onnx has no float16 tensors, and TensorRT 11 builds "
                "only the types in the ONNX: re-export with --precision fp16")
        return Typing(True, False, "TensorRT 11: strongly typed, precision from the ONNX")
    if precision == "fp16" and onnx_fp16 and strongly_typed_available:
        return Typing(True, False, "TensorRT 10: fp16-typed ONNX built strongly typed (keeps the exported types)")
    if precision == "fp16":
        return Typing(False, True, "TensorRT 10: fp32-typed ONNX with BuilderFlag.FP16 (weak typing)")
    return Typing(False, False, "fp32 bundle: fp32 engine")


def check_engine(plan_path: str | os.PathLike, env: Environment, plugins: list[str] | None = None) -> tuple[BuildRecord, str]:
    """Record checks without TensorRT: (record, plugins to load) or a one-line EdgemergeError."""
    record = read_record(plan_path)
    return record, check_record(record, plan_path, env, plugins)


# ---- steps that need TensorRT ---------------------------------------------------------------------

def _plugin_label(lib: Path, plan_dir: Path) -> str:
    """The library path as recorded: relative to the engine when it lives beside it (bundles move)."""
    lib = lib.resolve()
    try:
        return str(lib.relative_to(plan_dir.resolve()))
    except ValueError:
        return str(lib)


def prepare_plugins(manifest: dict, plugins: list[str] | None, plan_dir: Path,
                    version: tuple[int, int, int]) -> tuple[str, str | None, str | None]:
    """Load what the build needs: (record label, sha256, python plugin mode); NO_PLUGINS when the
    bundle is native or no plugin can be had here."""
    from edgemerge.trt.plugins import load_plugin_library, register_python_plugins

    if manifest.get("merge_ops") == "native":
        return NO_PLUGINS, None, None
    if plugins:
        libs = [load_plugin_library(p) for p in plugins]
        return _plugin_label(libs[0], plan_dir), sha256_file(libs[0]), None
    if has_python_plugins(version):
        mode = register_python_plugins()
        return PYTHON_PLUGINS, None, mode
    return NO_PLUGINS, None, None


def engine_layer_info(trt, engine_bytes: bytes) -> dict:
    """The engine inspector's JSON ({"Layers": [...], "Bindings": [...]}), as trtexec's
    --exportLayerInfo writes it (IEngineInspector::getEngineInformation(kJSON),
    NvInferRuntime.h v10.3.0; trtexec's printLayerInfo calls the same)."""
    from polygraphy.backend.trt import EngineFromBytes

    engine = EngineFromBytes(engine_bytes)()
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def build_engine(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None, *,
                 plugins: list[str] | None = None, workspace_mib: int | None = None,
                 timing_cache: str | os.PathLike | None = None, allow_body_only: bool = False) -> BuildRecord:
    """Build a bundle's `model.onnx` into `model.plan` + `model.plan.json`; returns the record.

    The same route as build_on_device.sh: the graph from `edgemerge.device.parser.graph_for` (TensorRT's
    parser rule), TF32 off (as trtexec --noTF32), detailed layer information written beside the
    engine and counted against the manifest's merge sites. A plugin bundle built without a plugin
    is refused unless `allow_body_only`; so is an engine whose plugin layers fall short.
    """
    onnx_path = Path(onnx_path)
    manifest = read_manifest(check_bundle_onnx(onnx_path))
    check_onnx_matches_manifest(onnx_path, manifest)
    out = Path(out_path) if out_path is not None else onnx_path.with_suffix(".plan")

    trt = require_tensorrt()
    version = parse_version(trt.__version__)
    label, lib_sha, py_mode = prepare_plugins(manifest, plugins, out.parent, version)
    uses_plugins = label != NO_PLUGINS
    if manifest.get("merge_ops") == "plugin" and not uses_plugins and not allow_body_only:
        raise EdgemergeError(
            f"TensorRT {trt.__version__} has no Python plugins (< 10.6) and no --plugins library was given: "
            "build libedgemerge_plugins.so and pass --plugins, or --allow-body-only for an engine "
            "built from the merge ops' standard-op bodies")
    graph_file, graph_kind = graph_for(onnx_path.parent, version, uses_plugins)
    graph_path = onnx_path.parent / graph_file
    typing = choose_typing(version, manifest["precision"], onnx_has_fp16(graph_path),
                           hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    log.info("%s; graph %s (%s)", typing.reason, graph_file, graph_kind)

    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath

    network = NetworkFromOnnxPath(str(graph_path), strongly_typed=typing.strongly_typed or None)
    pools = {trt.MemoryPoolType.WORKSPACE: int(workspace_mib) << 20} if workspace_mib else None
    config = CreateConfig(fp16=typing.fp16_flag or None, tf32=False, memory_pool_limits=pools,
                          profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
                          load_timing_cache=str(timing_cache) if timing_cache and Path(timing_cache).is_file() else None)
    start = time.perf_counter()
    engine_bytes = EngineBytesFromNetwork(network, config,
                                          save_timing_cache=str(timing_cache) if timing_cache else None)()
    if engine_bytes is None:
        raise EdgemergeError(f"TensorRT could not build {graph_path} (see the TensorRT log above)")
    data = bytes(engine_bytes)
    seconds = time.perf_counter() - start
    info = engine_layer_info(trt, data)
    atomic_write_bytes(layers_path(out), json.dumps(info, indent=1).encode(), mode=0o644)
    # refuses a plugin build whose engine holds too few plugin layers
    layers = inspect_layers(info, manifest, uses_plugins=uses_plugins, allow_body_only=allow_body_only)
    atomic_write_bytes(out, data, mode=0o644)
    record = make_record(
        out, onnx_path, manifest, tensorrt_version=trt.__version__, plugins=label, plugins_sha256=lib_sha,
        strongly_typed=typing.strongly_typed, fp16_flag=typing.fp16_flag, graph=graph_kind,
        plugin_layers=layers, edgemerge_version=__version__, build_seconds=round(seconds, 1),
        extra={"python_plugins": py_mode} if py_mode else None, tf32=False)  # CreateConfig(tf32=False) above
    write_record(out, record)
    return record


class CheckedBytesFromPath:
    """Polygraphy-style loader: the engine bytes, after the build record says they can run here
    (and with the plugins they need loaded). Compose: `EngineFromBytes(CheckedBytesFromPath(p))`."""

    def __init__(self, plan_path: str | os.PathLike, plugins: list[str] | None = None,
                 env: Environment | None = None):
        self.plan_path = Path(plan_path)
        self.plugins = plugins
        self.env = env

    def __call__(self) -> bytes:
        from edgemerge.trt.plugins import load_plugin_library, register_python_plugins

        read_record(self.plan_path)  # a missing record is refused before anything else
        env = self.env or current_environment()
        _, needs = check_engine(self.plan_path, env, self.plugins)
        if needs == PYTHON_PLUGINS:
            register_python_plugins()
        elif needs != NO_PLUGINS:
            load_plugin_library(needs)
        return self.plan_path.read_bytes()


def load_engine(plan_path: str | os.PathLike, *, plugins: list[str] | None = None):
    """A deserialized `trt.ICudaEngine`, refused with one line when its record does not fit here."""
    read_record(plan_path)
    require_tensorrt()
    from polygraphy.backend.trt import EngineFromBytes

    engine = EngineFromBytes(CheckedBytesFromPath(plan_path, plugins))()
    if engine is None:
        raise EdgemergeError(f"{plan_path}: TensorRT could not deserialize the engine")
    return engine
