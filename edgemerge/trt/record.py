"""The build record written beside every engine, and the checks `load_engine` makes against it.

Engines are not portable across GPUs or TensorRT versions, and a plugin engine is useless without
its plugin library. The checks are pure functions of (record, engine file, environment) so they are
tested without TensorRT; `current_environment()` is the only part that asks the machine.
"""

from __future__ import annotations

from edgemerge.files import atomic_write_bytes, sha256_file  # noqa: F401  (re-exported)

import ctypes
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgemerge.errors import EdgemergeError

RECORD_SCHEMA = 1
PYTHON_PLUGINS = "python-plugins"
NO_PLUGINS = "none"


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
    build_seconds: float | None = None
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


@dataclass(frozen=True)
class Environment:
    """The machine an engine is about to run on."""

    tensorrt_version: str
    gpu_name: str | None
    compute_capability: str | None


def record_path(plan_path: str | os.PathLike) -> Path:
    """model.plan -> model.plan.json"""
    p = Path(plan_path)
    return p.with_name(p.name + ".json")


def write_record(plan_path: str | os.PathLike, record: BuildRecord) -> Path:
    return atomic_write_bytes(record_path(plan_path), record.to_json().encode())


def read_record(plan_path: str | os.PathLike) -> BuildRecord:
    rp = record_path(plan_path)
    if not rp.is_file():
        raise EdgemergeError(
            f"{plan_path}: no build record {rp.name} beside the engine; an engine without a record "
            f"cannot be checked against this GPU and TensorRT: rebuild it with `edgemerge build`")
    try:
        return BuildRecord.from_dict(json.loads(rp.read_text()))
    except json.JSONDecodeError as e:
        raise EdgemergeError(f"{rp}: build record is not valid JSON ({e.msg}, line {e.lineno})") from None


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:3])


def check_record(record: BuildRecord, plan_path: str | os.PathLike, env: Environment,
                 plugins: list[str] | None = None) -> str:
    """Refuse, with one line, an engine that cannot run here. Returns the plugin library to load
    (a path), PYTHON_PLUGINS or NO_PLUGINS.

    Order: engine bytes first (a truncated copy is the most common failure after a transfer),
    then TensorRT version, GPU, plugins.
    """
    plan = Path(plan_path)
    if not plan.is_file():
        raise EdgemergeError(f"{plan}: engine file not found")
    size = plan.stat().st_size
    if size != record.engine_size:
        raise EdgemergeError(
            f"{plan}: engine is {size} bytes but its build record says {record.engine_size} "
            f"(truncated or replaced copy?): copy it again or rebuild")
    if sha256_file(plan) != record.engine_sha256:
        raise EdgemergeError(
            f"{plan}: engine sha256 does not match its build record (corrupted or replaced): "
            f"copy it again or rebuild")
    # TensorRT refuses engines across versions (except with version-compatible builds we do not make).
    if _major_minor(env.tensorrt_version) != _major_minor(record.tensorrt_version):
        raise EdgemergeError(
            f"{plan}: built with TensorRT {record.tensorrt_version}, this machine has TensorRT "
            f"{env.tensorrt_version}: engines are not portable across TensorRT versions, rebuild here")
    if env.compute_capability is not None and env.compute_capability != record.compute_capability:
        raise EdgemergeError(
            f"{plan}: built for {record.gpu_name} (compute capability {record.compute_capability}), "
            f"this GPU is {env.gpu_name} (compute capability {env.compute_capability}): rebuild here")
    if env.gpu_name is not None and env.gpu_name != record.gpu_name:
        raise EdgemergeError(
            f"{plan}: built for GPU {record.gpu_name!r}, this GPU is {env.gpu_name!r}: "
            f"engines are tuned per GPU, rebuild here")
    return resolve_plugins(record, plan, plugins)


def resolve_plugins(record: BuildRecord, plan: Path, plugins: list[str] | None) -> str:
    """Which plugins to load for this engine: the given library, the recorded one, or none."""
    if record.plugins in (NO_PLUGINS, PYTHON_PLUGINS):
        return record.plugins
    if plugins:
        for lib in plugins:
            if not Path(lib).is_file():
                raise EdgemergeError(f"plugin library {lib} not found")
        return plugins[0]
    recorded = Path(record.plugins)
    candidates = [recorded] if recorded.is_absolute() else [plan.parent / recorded, recorded]
    for c in candidates:
        if c.is_file():
            return str(c)
    raise EdgemergeError(
        f"{plan}: engine needs the plugin library {record.plugins}, which is not found: "
        f"build it (build_on_device.sh) and pass --plugins PATH")


# ---- the current machine ----------------------------------------------------------------------

def _gpu_from_torch() -> tuple[str, str] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


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


def _gpu_from_nvidia_smi() -> tuple[str, str] | None:
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
    return name, cc


def query_gpu() -> tuple[str | None, str | None]:
    """(name, compute capability) of GPU 0 from torch, the CUDA driver or nvidia-smi; else Nones."""
    for probe in (_gpu_from_torch, _gpu_from_driver, _gpu_from_nvidia_smi):
        try:
            found = probe()
        except Exception:  # a probe must never break a build; the next one may work
            found = None
        if found:
            return found
    return None, None


def current_environment() -> Environment:
    from edgemerge.trt._trt import require_tensorrt

    trt = require_tensorrt()
    name, cc = query_gpu()
    return Environment(tensorrt_version=trt.__version__, gpu_name=name, compute_capability=cc)
