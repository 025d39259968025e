"""The build record written beside every engine, and the checks `load_engine` makes against it.

Engines are not portable across GPUs or TensorRT versions, and a plugin engine is useless without
its plugin library. The checks are pure functions of (record, engine file, environment) so they are
tested without TensorRT; `current_environment()` is the only part that asks the machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.files import sha256_file
from edgemerge.device.gpu import query_gpu
from edgemerge.device.record import NO_PLUGINS, PYTHON_PLUGINS, BuildRecord, record_path


@dataclass(frozen=True)
class Environment:
    """The machine an engine is about to run on."""

    tensorrt_version: str
    gpu_name: str | None
    compute_capability: str | None


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
    except EdgemergeError as e:
        raise EdgemergeError(f"{rp}: {e}") from None


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

def current_environment() -> Environment:
    from edgemerge.trt.lib import require_tensorrt

    trt = require_tensorrt()
    name, cc = query_gpu()
    return Environment(tensorrt_version=trt.__version__, gpu_name=name, compute_capability=cc)
