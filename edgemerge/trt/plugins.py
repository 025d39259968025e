"""TensorRT plugins for the edgemerge ops: the C++ library loader and the Python plugins.

- `load_plugin_library(path)`: the C++ IPluginV3 library (`libedgemerge_plugins.so`, the only
  option on TensorRT 10.3 / JetPack 6).
- `register_python_plugins()`: `tensorrt.plugin` registrations for TensorRT >= 10.6, generated
  from the one table in `edgemerge.contracts.opspec`. On >= 10.9 with nvcc (no newer than the driver)
  the AOT implementation compiles the shared kernels `plugins/kernels/*.cu`
  to PTX, which TensorRT embeds in the engine (no Python needed when the engine runs). Otherwise
  the JIT implementation runs the op with torch on TensorRT's stream (Python needed at run time).
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts import opspec
from edgemerge.device.gpu import cuda_arch
from edgemerge.trt.lib import has_aot_plugins, has_python_plugins, require_tensorrt, trt_version

log = logging.getLogger(__name__)

# ---- the C++ library ---------------------------------------------------------------------------


def registered_creators(trt) -> set[tuple[str, str]]:
    """(name, namespace) of every plugin creator TensorRT knows."""
    registry = trt.get_plugin_registry()
    creators = getattr(registry, "all_creators", None)  # TRT >= 10.0: V2 and V3 creators
    if creators is None:
        creators = registry.plugin_creator_list
    found = set()
    for c in creators:
        found.add((c.name, getattr(c, "plugin_namespace", "")))
    return found


def missing_ops(found: set[tuple[str, str]]) -> list[str]:
    return [name for name in opspec.OPS if (name, opspec.DOMAIN) not in found]


def load_plugin_library(path: str | os.PathLike) -> Path:
    """Load `libedgemerge_plugins.so` (RTLD_GLOBAL) and check that the four creators registered."""
    lib = Path(path)
    if not lib.is_file():
        raise EdgemergeError(f"plugin library {lib} not found (build it: see build_on_device.sh)")
    trt = require_tensorrt()
    try:
        ctypes.CDLL(str(lib.resolve()), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise EdgemergeError(f"cannot load plugin library {lib}: {e}") from None
    missing = missing_ops(registered_creators(trt))
    registry = trt.get_plugin_registry()
    if missing and hasattr(registry, "load_library"):
        # A library exporting getCreators()/getPluginCreators() instead of static registration.
        registry.load_library(str(lib.resolve()))
        missing = missing_ops(registered_creators(trt))
    if missing:
        raise EdgemergeError(
            f"plugin library {lib} loaded but does not register {', '.join(missing)} in namespace "
            f"{opspec.DOMAIN!r}: a stale or foreign build?")
    return lib


# ---- kernel sources and PTX -------------------------------------------------------------------


def plugin_source_dir() -> Path | None:
    """The plugin sources (CUDA kernels, C++ plugins, CMakeLists.txt): the copy a bundle carries
    (EDGEMERGE_PLUGINS_DIR), `plugins/` of a source checkout, an installed wheel's, or a share dir;
    None when there are none. The one finder: the JIT kernels and the bundle's copy use it."""
    import sys

    import edgemerge

    env = os.environ.get("EDGEMERGE_PLUGINS_DIR")
    package = Path(edgemerge.__file__).resolve().parent
    candidates = [Path(env)] if env else []
    candidates += [package.parent / "plugins", package / "plugin_sources", Path(sys.prefix) / "share" / "edgemerge" / "plugins"]
    for c in candidates:
        if (c / "kernels").is_dir():
            return c
    return None


_C_TYPE = {"float32": "float", "float16": "__half", "int32": "int"}


def aot_entry(op: opspec.OpSpec, dtype: str) -> str:
    return f"em_aot_{op.name}_{'f16' if dtype == 'float16' else 'f32'}"


def aot_source(op: opspec.OpSpec, dtype: str, kernel_dir: Path | None = None) -> tuple[str, str]:
    """(kernel name, CUDA source) of the AOT wrapper for `op` at element type `dtype`.

    The wrapper `#include`s the shared kernel file (so its `__device__` body is in the same
    translation unit) and reorders the arguments into the AOT convention
    (inputs, int32 scalars, outputs).
    """
    abi = op.kernel
    if abi is None:
        raise EdgemergeError(f"{op.name} has no single-launch kernel: its Python plugin is JIT only")
    kernel_dir = kernel_dir or (plugin_source_dir() or Path("plugins")) / "kernels"
    src_file = Path(kernel_dir) / abi.source
    ctype = _C_TYPE[dtype]

    def port_type(port: opspec.Port) -> str:
        return ctype if port.like or len(port.dtypes) > 1 else _C_TYPE[port.dtypes[0]]

    params = [f"{port_type(p)} const* {p.name}" for p in op.inputs]
    params += [f"int {s}" for s in abi.scalars]
    params += [f"{port_type(p)}* {p.name}" for p in op.outputs]
    entry = aot_entry(op, dtype)
    source = (f'#include "{src_file}"\n'
              f'extern "C" __global__ void {entry}({", ".join(params)})\n'
              f"{{\n    {abi.body.format(T=ctype)}({', '.join(abi.body_args)});\n}}\n")
    return entry, source


def _nvcc_path() -> str | None:
    """nvcc on PATH, else $CUDACXX, else /usr/local/cuda/bin/nvcc (JetPack keeps it off PATH)."""
    for cand in (shutil.which("nvcc"), os.environ.get("CUDACXX"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


def nvcc_version(nvcc: str) -> tuple[int, int] | None:
    """(12, 6) from `nvcc --version` ("Cuda compilation tools, release 12.6, V12.6.68")."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def driver_cuda_version() -> tuple[int, int] | None:
    """The CUDA version the driver supports (cuDriverGetVersion: 12060 -> (12, 6)); None without one."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if cuda.cuDriverGetVersion(ctypes.byref(v)) != 0 or v.value <= 0:
            return None
    except (OSError, AttributeError):
        return None
    return v.value // 1000, v.value % 1000 // 10


def cuda_compiler() -> str | None:
    """The nvcc that makes the AOT plugins' PTX, or None when there is none, or when it is newer
    than the driver: PTX of a newer ISA than the driver knows cannot be loaded (the driver JITs
    PTX up to its own CUDA version). NVRTC is not used: the kernel files hold host launchers and
    include cuda_runtime.h, which NVRTC cannot compile."""
    nvcc = _nvcc_path()
    if nvcc is None:
        return None
    compiler, driver = nvcc_version(nvcc), driver_cuda_version()
    if compiler and driver and compiler > driver:
        log.warning("nvcc is CUDA %d.%d but the driver supports %d.%d: its PTX would not load; "
                    "the Python plugins run JIT", *compiler, *driver)
        return None
    return nvcc


@lru_cache(maxsize=64)
def compile_ptx(source: str, arch: str | None = None) -> bytes:
    """PTX for `source` with nvcc, the compiler of the C++ plugin too."""
    arch = arch or cuda_arch()
    nvcc = cuda_compiler()
    if nvcc is None:
        raise EdgemergeError("no usable nvcc for the AOT plugins (set CUDACXX; it must not be newer than the driver)")
    with tempfile.TemporaryDirectory(prefix="edgemerge-ptx-") as tmp:
        cu, ptx = Path(tmp) / "k.cu", Path(tmp) / "k.ptx"
        cu.write_text(source)
        cmd = [nvcc, "-ptx", "-O3", "-std=c++17", f"-arch=compute_{arch}", str(cu), "-o", str(ptx)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise EdgemergeError(f"nvcc -ptx failed: {run.stderr.strip().splitlines()[-1:]}")
        return ptx.read_bytes()


# ---- tensorrt.plugin registration --------------------------------------------------------------

_TRT_TYPE = {"float32": "FP32", "float16": "FP16", "int32": "INT32"}


def _attr_annotation(kind: str) -> Any:
    """The attribute types `tensorrt.plugin` serializes (`SERIALIZABLE_BUILTIN_TYPES` and
    `numpy.typing.NDArray[dtype]` in plugin/_validate.py, v10.9.0 to v11.1)."""
    import numpy as np
    import numpy.typing as npt

    return {"int": int, "float": float, "string": str, "ints": npt.NDArray[np.int32]}[kind]


def _signed(name: str, params: list[str], annotations: dict[str, Any], returns: Any, body: Any) -> Any:
    """A function whose signature is exactly `params` (what tensorrt.plugin inspects with
    `inspect.signature`, which honours `__signature__`), passing its arguments to `body` as keywords.

    tensorrt.plugin calls these functions positionally and by keyword (plugin/_plugin_class.py,
    v10.15: `register_function(*input_descs, **attrs)`, `impl_function(*ins, *attrs, outputs,
    stream=stream)`), so the arguments are bound against the signature before the call."""
    sig = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           annotation=annotations.get(p, inspect.Parameter.empty)) for p in params],
        return_annotation=inspect.Signature.empty if returns is None else returns)

    def function(*args: Any, **kwargs: Any) -> Any:
        return body(**sig.bind(*args, **kwargs).arguments)

    function.__signature__ = sig  # type: ignore[attr-defined]
    function.__name__ = function.__qualname__ = name
    return function


def plugin_signatures(op: opspec.OpSpec) -> dict[str, list[str]]:
    """Parameter names of the register / autotune / impl / aot_impl functions for `op`."""
    ins = [p.name for p in op.inputs]
    attrs = [a.name for a in op.plugin_attributes()]
    return {
        "register": ins + attrs,
        "autotune": ins + ["outputs"],
        "impl": ins + attrs + ["outputs", "stream"],
        "aot_impl": ins + attrs + ["outputs", "tactic"],
    }


def autotune_combination(op: opspec.OpSpec) -> str:
    """'FP32|FP16, FP32|FP16, INT32, ...' over inputs then outputs (positions align per option)."""
    return ", ".join("|".join(_TRT_TYPE[d] for d in p.dtypes) for p in op.inputs + op.outputs)


def _output_descs(trtp, trt, op: opspec.OpSpec, args: dict):
    ins = {p.name: args[p.name] for p in op.inputs}
    dims: dict[str, Any] = {}
    for p in op.inputs:
        for i, sym in enumerate(p.shape):
            if sym != "1":
                dims.setdefault(sym, ins[p.name].shape_expr[i])
    if "num_out" in args:
        dims["M"] = int(args["num_out"])
    descs = []
    for p in op.outputs:
        shape = tuple(1 if s == "1" else dims[s] for s in p.shape)
        dtype = ins[p.like].dtype if p.like else getattr(trt, p.dtypes[0])
        descs.append(trtp.from_shape_expr(shape, dtype=dtype))
    return descs[0] if len(descs) == 1 else tuple(descs)


def _launch_dims(op: opspec.OpSpec, args: dict, outputs) -> dict[str, Any]:
    """Shape symbols (as TensorRT shape expressions) and int attributes for the kernel scalars."""
    dims: dict[str, Any] = {}
    for p, desc in list(zip(op.inputs, [args[p.name] for p in op.inputs])) + list(zip(op.outputs, outputs)):
        for i, sym in enumerate(p.shape):
            if sym != "1":
                dims.setdefault(sym, desc.shape_expr[i])
    for a in op.plugin_attributes():
        if a.kind == "int":
            dims[a.name] = int(args[a.name])
    if "num_out" in args:
        dims["M"] = int(args["num_out"])
    return dims


_registered: str | None = None


def register_python_plugins(mode: str = "auto") -> str:
    """Register the ops with `tensorrt.plugin`; returns "aot+jit" (TokenMerge/TokenMergeCell/TokenUnmerge
    AOT, the match ops JIT) or "jit".

    mode "auto": AOT when TensorRT >= 10.9 and a CUDA compiler and the kernel sources are here,
    else JIT. Only one implementation is registered per op, so which one TensorRT's ONNX parser
    takes is never ambiguous. Idempotent: a second call returns the first call's mode.
    """
    global _registered
    if _registered is not None:
        return _registered
    version = trt_version()
    if version is None:
        require_tensorrt()  # raises the install hint
    if not has_python_plugins(version):
        raise EdgemergeError(
            f"TensorRT {'.'.join(map(str, version))} has no Python plugins (needs >= 10.6): "
            f"build the C++ plugin library and pass --plugins libedgemerge_plugins.so")
    aot_ok = has_aot_plugins(version) and cuda_compiler() is not None and plugin_source_dir() is not None
    if mode == "aot" and not aot_ok:
        raise EdgemergeError("AOT Python plugins need TensorRT >= 10.9, nvcc no newer than the driver, and plugins/kernels/")
    use_aot = aot_ok if mode == "auto" else mode == "aot"

    import tensorrt as trt
    import tensorrt.plugin as trtp

    for op in opspec.OPS.values():
        _register_op(op, use_aot and op.kernel is not None, trtp, trt)
    # The match ops have no single-launch kernel, so they are JIT (torch) even in "aot" mode.
    _registered = "aot+jit" if use_aot else "jit"
    return _registered


def _register_op(op: opspec.OpSpec, use_aot: bool, trtp, trt) -> None:
    """register + autotune, then either aot_impl (kernel PTX) or impl (torch), for one op.

    tensorrt.plugin reads the functions' signatures: parameter names in a fixed order, annotations
    on register (mandatory) and on aot_impl's return (checked: (str|bytes, str|bytes,
    KernelLaunchParams, SymExprs)); so they are generated with exactly those."""
    from typing import Tuple, Union

    sigs = plugin_signatures(op)
    ann: dict[str, Any] = {p.name: trtp.TensorDesc for p in op.inputs}
    ann.update({a.name: _attr_annotation(a.kind) for a in op.plugin_attributes()})
    ret = trtp.TensorDesc if len(op.outputs) == 1 else Tuple[tuple([trtp.TensorDesc] * len(op.outputs))]
    base = op.name

    desc = _signed(f"{base}_desc", sigs["register"], ann, ret, lambda **a: _output_descs(trtp, trt, op, a))
    trtp.register(op.plugin_id)(desc)

    combo = autotune_combination(op)
    tune = _signed(f"{base}_autotune", sigs["autotune"], {}, None, lambda **a: [trtp.AutoTuneCombination(combo)])
    trtp.autotune(op.plugin_id)(tune)

    if use_aot:
        def aot_body(**a):
            outputs = a["outputs"]
            first = a[op.inputs[0].name]
            dtype = "float16" if first.dtype == trt.float16 else "float32"
            name, source = aot_source(op, dtype)
            ptx = compile_ptx(source)
            dims = _launch_dims(op, a, outputs)
            params = trtp.KernelLaunchParams()
            params.grid_x, params.grid_y = op.kernel.grid(dims, trtp.cdiv)
            params.block_x = op.kernel.block
            params.shared_mem = op.kernel.shared_mem(dims)
            extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(dims[s]) for s in op.kernel.scalars])
            return name.encode(), ptx, params, extra

        aot_ret = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]
        trtp.aot_impl(op.plugin_id)(_signed(f"{base}_aot_impl", sigs["aot_impl"], {}, aot_ret, aot_body))
    else:
        def jit_body(**a):
            import torch

            from edgemerge.trt import torch_impl

            with torch.cuda.stream(torch.cuda.ExternalStream(a["stream"])):
                ins = [torch.as_tensor(a[p.name], device="cuda") for p in op.inputs]
                outs = [torch.as_tensor(t, device="cuda") for t in a["outputs"]]
                attrs = {x.name: a[x.name] for x in op.plugin_attributes()}
                results = torch_impl.run(op.name, ins, attrs)
                for o, r in zip(outs, results):
                    o.copy_(r)

        trtp.impl(op.plugin_id)(_signed(f"{base}_impl", sigs["impl"], {}, None, jit_body))
