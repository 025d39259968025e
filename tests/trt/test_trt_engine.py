"""One-op engines through TensorRT (skipped without TensorRT and a CUDA GPU)."""

from pathlib import Path

import numpy as np
import pytest

from edgemerge.trt import trt_version
from trt_helpers import write_bundle


def _have_gpu():
    if trt_version() is None:
        return False
    from edgemerge.trt.record import query_gpu

    return query_gpu()[1] is not None


pytestmark = [pytest.mark.tensorrt,
              pytest.mark.skipif(not _have_gpu(), reason="needs TensorRT and a CUDA GPU")]

LIB = Path(__file__).resolve().parents[2] / "build" / "plugins" / "libedgemerge_plugins.so"


def _inputs(dtype):
    g = np.random.default_rng(0)
    merged = g.standard_normal((2, 3, 4)).astype(dtype)
    slot = g.integers(0, 3, (2, 5)).astype(np.int32)
    return merged, slot, np.take_along_axis(merged, slot[..., None].astype(np.int64), 1)


def _run(plan_path, plugins, feed):
    from polygraphy.backend.trt import TrtRunner

    from edgemerge.trt.builder import load_engine

    with TrtRunner(load_engine(plan_path, plugins=plugins)) as runner:
        return runner.infer(feed)["x"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_unmerge_python_plugins(tmp_path, precision):
    from edgemerge.trt._trt import has_python_plugins
    from edgemerge.trt.builder import build_engine

    if not has_python_plugins(trt_version()):
        pytest.skip("TensorRT < 10.6 has no Python plugins")
    dtype = np.float16 if precision == "fp16" else np.float32
    onnx_path = write_bundle(tmp_path, precision=precision)
    record = build_engine(onnx_path)
    assert record.plugins == "python-plugins"
    merged, slot, ref = _inputs(dtype)
    np.testing.assert_array_equal(_run(tmp_path / "model.plan", None, {"merged": merged, "slot": slot}), ref)


@pytest.mark.skipif(not LIB.is_file(), reason=f"C++ plugin library not built ({LIB})")
def test_unmerge_cpp_plugin(tmp_path):
    from edgemerge.trt.builder import build_engine

    onnx_path = write_bundle(tmp_path)
    record = build_engine(onnx_path, plugins=[str(LIB)])
    assert record.plugins_sha256
    merged, slot, ref = _inputs(np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "model.plan", [str(LIB)], {"merged": merged, "slot": slot}), ref)


def test_unmerge_native_function_body(tmp_path):
    from edgemerge.trt.builder import build_engine

    onnx_path = write_bundle(tmp_path, merge_ops="native")
    assert build_engine(onnx_path).plugins == "none"
    merged, slot, ref = _inputs(np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "model.plan", None, {"merged": merged, "slot": slot}), ref)
