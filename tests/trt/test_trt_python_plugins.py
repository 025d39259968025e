"""The Python plugins' registrations against `tensorrt.plugin`'s documented schema (fake_trtp),
without TensorRT: signatures, output descriptors, and the AOT path down to real PTX (nvcc)."""

from __future__ import annotations

import numpy as np
import pytest

import fake_trtp as F
from edgemerge.contracts import opspec
from edgemerge.trt.plugins import _register_op, cuda_compiler, plugin_source_dir

KERNEL_OPS = [name for name, op in opspec.OPS.items() if op.kernel is not None]
ATTRS = {"r": 3, "src": np.array([0, 2, 4], np.int32), "dst": np.array([1, 3], np.int32), "protect": 0,
         "height": 2, "width": 2, "k": 1, "num_out": 7, "sy": 1, "sx": 2}


@pytest.fixture(autouse=True)
def _clean_registry():
    F.registry.clear()
    yield
    F.registry.clear()


def _inputs(op: opspec.OpSpec, dtype: F.DataType) -> dict:
    dims = {"B": "B", "N": "N", "C": "C", "M": "M", "1": 1}
    return {p.name: F.TensorDesc(dtype if len(p.dtypes) > 1 else getattr(F.trt, p.dtypes[0]),
                                 tuple(dims[s] for s in p.shape)) for p in op.inputs}


def _attrs(op: opspec.OpSpec) -> dict:
    return {a.name: ATTRS[a.name] for a in op.plugin_attributes()}


@pytest.mark.parametrize("name", sorted(opspec.OPS))
def test_jit_registration_follows_the_schema(name):
    op = opspec.OPS[name]
    _register_op(op, False, F.trtp, F.trt)
    entry = F.registry[op.plugin_id]
    assert "impl" in entry and "aot_impl" not in entry and "autotune" in entry
    assert entry["inputs"] == [p.name for p in op.inputs]
    assert list(entry["attrs"]) == [a.name for a in op.plugin_attributes()]
    assert entry["num_outputs"] == len(op.outputs)


@pytest.mark.parametrize("name", sorted(opspec.OPS))
def test_output_descriptors(name):
    op = opspec.OPS[name]
    _register_op(op, False, F.trtp, F.trt)
    outs = F.registry[op.plugin_id]["desc"](**_inputs(op, F.trt.float16), **_attrs(op))
    outs = outs if isinstance(outs, tuple) else (outs,)
    for port, desc in zip(op.outputs, outs):
        want = F.trt.float16 if port.like else getattr(F.trt, port.dtypes[0])
        assert desc.dtype is want, port.name
        shape = [s if isinstance(s, int) else s.text for s in desc.shape_expr]
        assert shape == [{"M": ATTRS["num_out"], "1": 1}.get(s, s) for s in port.shape], port.name


@pytest.mark.skipif(cuda_compiler() is None or plugin_source_dir() is None,
                    reason="needs nvcc and plugins/kernels to compile the AOT kernels")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", KERNEL_OPS)
def test_aot_registration_compiles_and_launches_the_kernel(name, dtype):
    """aot_impl is registered (and no JIT impl), and returns the wrapper's name, its PTX, launch
    dimensions built from shape expressions, and one scalar per kernel scalar."""
    op = opspec.OPS[name]
    _register_op(op, True, F.trtp, F.trt)
    entry = F.registry[op.plugin_id]
    assert "aot_impl" in entry and "impl" not in entry
    inputs = _inputs(op, getattr(F.trt, dtype))
    outs = entry["desc"](**inputs, **_attrs(op))
    outs = outs if isinstance(outs, tuple) else (outs,)
    kernel_name, ptx, launch, extra = entry["aot_impl"](**inputs, **_attrs(op), outputs=outs, tactic=0)
    assert f".entry {kernel_name.decode()}(" in ptx.decode()
    assert ("f16" if dtype == "float16" else "f32") in kernel_name.decode()
    assert launch.block_x.value == op.kernel.block
    assert isinstance(launch.grid_x.value, (int, F.Expr)) and isinstance(launch.shared_mem.value, (int, F.Expr))
    assert len(extra) == len(op.kernel.scalars) and all(isinstance(e, F.SymInt32) for e in extra)


def test_no_ptx_from_an_nvcc_newer_than_the_driver(monkeypatch):
    """PTX of a newer CUDA than the driver's cannot load: the AOT route is then not offered."""
    import edgemerge.trt.plugins as P

    monkeypatch.setattr(P, "_nvcc_path", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(P, "nvcc_version", lambda nvcc: (13, 0))
    monkeypatch.setattr(P, "driver_cuda_version", lambda: (12, 6))
    assert P.cuda_compiler() is None
    monkeypatch.setattr(P, "driver_cuda_version", lambda: (13, 1))
    assert P.cuda_compiler() == "/usr/local/cuda/bin/nvcc"


def test_nvcc_version_parses_the_banner(tmp_path):
    import edgemerge.trt.plugins as P

    fake = tmp_path / "nvcc"
    fake.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.68'\n")
    fake.chmod(0o755)
    assert P.nvcc_version(str(fake)) == (12, 6)
