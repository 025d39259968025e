"""Lazy access to TensorRT: the package imports without it and fails with one line when used."""

from __future__ import annotations

import importlib

from edgemerge.device.parser import parse_version
from edgemerge.contracts.errors import EdgemergeError

# The README installs from a source checkout (pip install -e .), where 'edgemerge[trt]' means nothing.
MISSING_TRT = ("TensorRT is not installed here (it needs an NVIDIA GPU with its CUDA driver): in a source "
               "checkout run pip install -e '.[trt]' on the GPU machine; on Jetson it comes with JetPack")


def require_tensorrt():
    """Return the `tensorrt` module or raise the one-line install hint."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:  # also OSError-free: a broken libnvinfer surfaces as ImportError
        raise EdgemergeError(MISSING_TRT) from None


def trt_version() -> tuple[int, int, int] | None:
    """The installed TensorRT version, or None when TensorRT cannot be imported."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return None
    return parse_version(trt.__version__)


def has_python_plugins(version: tuple[int, int, int] | None) -> bool:
    """`tensorrt.plugin` (JIT) exists from 10.6."""
    return version is not None and version >= (10, 6, 0)


def has_aot_plugins(version: tuple[int, int, int] | None) -> bool:
    """`@trtp.aot_impl` exists from 10.9."""
    return version is not None and version >= (10, 9, 0)
