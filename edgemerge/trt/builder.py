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
from datetime import datetime, timezone
from pathlib import Path

from edgemerge import __version__
from edgemerge.errors import EdgemergeError
from edgemerge.trt._trt import has_python_plugins, parse_version, require_tensorrt
from edgemerge.trt.record import (
    NO_PLUGINS, PYTHON_PLUGINS, BuildRecord, Environment, atomic_write_bytes, check_record,
    current_environment, query_gpu, read_record, sha256_file, write_record,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


# ---- pure steps -------------------------------------------------------------------------------

def read_manifest(onnx_path: str | os.PathLike) -> dict:
    """The bundle's manifest.json beside the ONNX file; an ONNX file alone is refused, because the
    engine's record must name the bundle it was built from and the precision it was exported at."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EdgemergeError(f"{onnx_path}: ONNX file not found")
    mpath = onnx_path.with_name(MANIFEST)
    if not mpath.is_file():
        raise EdgemergeError(
            f"{onnx_path}: no {MANIFEST} beside it; build from an `edgemerge export` bundle directory")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise EdgemergeError(f"{mpath}: not valid JSON ({e.msg}, line {e.lineno})") from None
    precision = manifest.get("precision")
    if precision not in ("fp32", "fp16"):
        raise EdgemergeError(f"{mpath}: precision must be 'fp32' or 'fp16', not {precision!r}")
    return manifest


def check_onnx_matches_manifest(onnx_path: Path, manifest: dict) -> str:
    """sha256 of the ONNX file, refusing one that is not the file the manifest describes."""
    digest = sha256_file(onnx_path)
    want = manifest.get("onnx_sha256")
    if want and want != digest:
        raise EdgemergeError(
            f"{onnx_path}: sha256 differs from {MANIFEST} (edited or from another export): re-export the bundle")
    return digest


def onnx_has_fp16(onnx_path: str | os.PathLike) -> bool:
    """Whether the graph is fp16-typed: float16 inputs, outputs, initializers, value_info or Casts."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    F16 = onnx.TensorProto.FLOAT16
    g = model.graph
    if any(v.type.tensor_type.elem_type == F16 for v in list(g.input) + list(g.output) + list(g.value_info)):
        return True
    if any(t.data_type == F16 for t in g.initializer):
        return True
    for node in g.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == F16 for a in node.attribute):
            return True
        if node.op_type == "Constant" and any(a.t.data_type == F16 for a in node.attribute if a.type == 4):
            return True
    return False


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
    """Load what the build needs: (record label, sha256, python plugin mode)."""
    from edgemerge.trt.plugins import load_plugin_library, register_python_plugins

    if plugins:
        libs = [load_plugin_library(p) for p in plugins]
        return _plugin_label(libs[0], plan_dir), sha256_file(libs[0]), None
    if manifest.get("merge_ops") == "native":
        return NO_PLUGINS, None, None
    if has_python_plugins(version):
        mode = register_python_plugins()
        return PYTHON_PLUGINS, None, mode
    log.warning("TensorRT %s has no Python plugins and no --plugins library was given: the merge ops "
                "are built from their ONNX function bodies (slower); build libedgemerge_plugins.so "
                "for the plugin path", ".".join(map(str, version)))
    return NO_PLUGINS, None, None


def build_engine(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None, *,
                 plugins: list[str] | None = None, workspace_mib: int | None = None,
                 timing_cache: str | os.PathLike | None = None) -> BuildRecord:
    """Build `model.onnx` of a bundle into `model.plan` + `model.plan.json`; returns the record."""
    onnx_path = Path(onnx_path)
    manifest = read_manifest(onnx_path)
    onnx_sha = check_onnx_matches_manifest(onnx_path, manifest)
    out = Path(out_path) if out_path is not None else onnx_path.with_suffix(".plan")

    trt = require_tensorrt()
    version = parse_version(trt.__version__)
    label, lib_sha, py_mode = prepare_plugins(manifest, plugins, out.parent, version)
    typing = choose_typing(version, manifest["precision"], onnx_has_fp16(onnx_path),
                           hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    log.info("%s", typing.reason)

    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath

    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=typing.strongly_typed or None)
    pools = {trt.MemoryPoolType.WORKSPACE: int(workspace_mib) << 20} if workspace_mib else None
    config = CreateConfig(fp16=typing.fp16_flag or None, memory_pool_limits=pools,
                          load_timing_cache=str(timing_cache) if timing_cache and Path(timing_cache).is_file() else None)
    start = time.perf_counter()
    engine_bytes = EngineBytesFromNetwork(network, config,
                                          save_timing_cache=str(timing_cache) if timing_cache else None)()
    if engine_bytes is None:
        raise EdgemergeError(f"TensorRT could not build {onnx_path} (see the TensorRT log above)")
    data = bytes(engine_bytes)
    seconds = time.perf_counter() - start

    atomic_write_bytes(out, data)
    gpu_name, cc = query_gpu()
    record = BuildRecord(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name or "unknown",
        compute_capability=cc or "unknown",
        plugins=label,
        plugins_sha256=lib_sha,
        onnx_sha256=onnx_sha,
        engine_sha256=sha256_file(out),
        engine_size=len(data),
        edgemerge_version=__version__,
        build_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        precision=manifest["precision"],
        strongly_typed=typing.strongly_typed,
        fp16_flag=typing.fp16_flag,
        build_seconds=round(seconds, 1),
        extra={k: manifest[k] for k in ("model", "variant", "merge_ops") if k in manifest}
        | ({"python_plugins": py_mode} if py_mode else {}),
    )
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


def record_engine(plan_path: str | os.PathLike, onnx_path: str | os.PathLike, *,
                  tensorrt_version: str | None = None, plugins: str | None = None) -> BuildRecord:
    """Write the build record for an engine built outside edgemerge (trtexec in
    build_on_device.sh). Needs no TensorRT Python when `tensorrt_version` is given."""
    plan, onnx_path = Path(plan_path), Path(onnx_path)
    manifest = read_manifest(onnx_path)
    onnx_sha = check_onnx_matches_manifest(onnx_path, manifest)
    if not plan.is_file():
        raise EdgemergeError(f"{plan}: engine file not found")
    if tensorrt_version is None:
        tensorrt_version = require_tensorrt().__version__
    if plugins:
        lib = Path(plugins)
        if not lib.is_file():
            raise EdgemergeError(f"plugin library {lib} not found")
        label, lib_sha = _plugin_label(lib, plan.parent), sha256_file(lib)
    else:
        label, lib_sha = NO_PLUGINS, None
    typing = choose_typing(parse_version(tensorrt_version), manifest["precision"], onnx_has_fp16(onnx_path))
    gpu_name, cc = query_gpu()
    record = BuildRecord(
        tensorrt_version=tensorrt_version, gpu_name=gpu_name or "unknown",
        compute_capability=cc or "unknown", plugins=label, plugins_sha256=lib_sha,
        onnx_sha256=onnx_sha, engine_sha256=sha256_file(plan), engine_size=plan.stat().st_size,
        edgemerge_version=__version__,
        build_time=datetime.fromtimestamp(plan.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        precision=manifest["precision"], strongly_typed=typing.strongly_typed, fp16_flag=typing.fp16_flag,
        extra={k: manifest[k] for k in ("model", "variant", "merge_ops") if k in manifest} | {"built_by": "trtexec"},
    )
    write_record(plan, record)
    return record
