import subprocess
import sys

import pytest

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.trt.lib import MISSING_TRT, trt_version
from edgemerge.trt.builder import build_engine
from trt_helpers import write_bundle

no_trt = pytest.mark.skipif(trt_version() is not None, reason="TensorRT is installed here")


def test_package_imports_without_tensorrt_or_torch():
    code = ("import sys, edgemerge.trt, edgemerge.trt.builder, edgemerge.trt.plugins, "
            "edgemerge.trt.device_script, edgemerge.contracts.opspec, edgemerge.cli.build; "
            "print('tensorrt' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@no_trt
def test_trt_version_is_none():
    assert trt_version() is None


@no_trt
def test_build_engine_without_tensorrt_is_one_line(tmp_path):
    onnx_path = write_bundle(tmp_path / "bundle")
    with pytest.raises(EdgemergeError) as e:
        build_engine(onnx_path)
    assert str(e.value) == MISSING_TRT
    assert "\n" not in str(e.value)


@no_trt
def test_register_python_plugins_without_tensorrt():
    from edgemerge.trt.plugins import register_python_plugins

    with pytest.raises(EdgemergeError, match="TensorRT is not installed"):
        register_python_plugins()
