"""One-op engines through TensorRT, for each op, against the PyTorch reference (skipped without
TensorRT and a CUDA GPU). Each op is built three ways: with the Python plugins, with the C++
plugin library (build/plugins), and without any plugin (TensorRT inlines the function body)."""

from pathlib import Path

import numpy as np
import pytest

from edgemerge.trt.lib import trt_version
from trt_helpers import op_case, op_model, write_bundle

pytest.importorskip("torch", reason="the reference outputs come from edgemerge.merge.ops (torch)")


def _have_gpu():
    if trt_version() is None:
        return False
    from edgemerge.device.gpu import query_gpu

    return query_gpu()[1] is not None


pytestmark = [pytest.mark.tensorrt,
              pytest.mark.skipif(not _have_gpu(), reason="needs TensorRT and a CUDA GPU")]

LIB = Path(__file__).resolve().parents[2] / "build" / "plugins" / "libedgemerge_plugins.so"
OPS = ["TokenMatchBipartite", "TokenMatchCell", "TokenMatchWindow", "TokenMerge", "TokenMergeCell", "TokenUnmerge"]
CASES = [(op, p) for op in OPS for p in (("fp32", "fp16") if op in ("TokenMerge", "TokenMergeCell", "TokenUnmerge") else ("fp32",))]


def _build_and_run(tmp_path, op, precision, merge_ops, plugins):
    from polygraphy.backend.trt import TrtRunner

    from edgemerge.trt.builder import build_engine, load_engine

    dtype = np.float16 if precision == "fp16" else np.float32
    feeds, _, expected = op_case(op, dtype)
    onnx_path = write_bundle(tmp_path, precision=precision, merge_ops=merge_ops, model=op_model(op, dtype))
    record = build_engine(onnx_path, plugins=plugins)
    with TrtRunner(load_engine(tmp_path / "model.plan", plugins=plugins)) as runner:
        out = runner.infer(feeds)
    names = [o.name for o in op_model(op, dtype).graph.output]
    for name, want in zip(names, expected):
        got = np.asarray(out[name])
        assert got.dtype == want.dtype, name
        if want.dtype.kind == "i" or op == "TokenUnmerge":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            tol = 1e-5 if precision == "fp32" else 1e-3
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)
    return record


@pytest.mark.parametrize("op,precision", CASES)
def test_python_plugins(tmp_path, op, precision):
    from edgemerge.trt.lib import has_python_plugins

    if not has_python_plugins(trt_version()):
        pytest.skip("TensorRT < 10.6 has no Python plugins")
    assert _build_and_run(tmp_path, op, precision, "plugin", None).plugins == "python-plugins"


@pytest.mark.parametrize("op,precision", CASES)
def test_cpp_plugin(tmp_path, op, precision):
    if not LIB.is_file():  # checked after TensorRT, so a machine without it says that first
        pytest.skip(f"C++ plugin library not built ({LIB}): cmake -S plugins -B build/plugins -DTENSORRT_ROOT=...")
    assert _build_and_run(tmp_path, op, precision, "plugin", [str(LIB)]).plugins_sha256


@pytest.mark.parametrize("op,precision", CASES)
def test_native_function_body(tmp_path, op, precision):
    assert _build_and_run(tmp_path, op, precision, "native", None).plugins == "none"
