"""TensorRT side of edgemerge: plugins, engine builds with a build record, device build scripts.

Imports without TensorRT (and without torch); a function that needs TensorRT raises
`EdgemergeError` with an install hint when it is called.
"""

from edgemerge.trtlib import MISSING_TRT, has_aot_plugins, has_python_plugins, require_tensorrt, trt_version
from edgemerge.trt.builder import build_engine, load_engine
from edgemerge.device_script import copy_plugin_sources, write_build_script
from edgemerge.trt.plugins import load_plugin_library, register_python_plugins
from edgemerge.record import BuildRecord, Environment, check_record

__all__ = [
    "MISSING_TRT", "BuildRecord", "Environment", "build_engine", "check_record",
    "copy_plugin_sources", "has_aot_plugins", "has_python_plugins", "load_engine",
    "load_plugin_library", "register_python_plugins", "require_tensorrt", "trt_version",
    "write_build_script",
]
