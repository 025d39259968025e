"""The Python plugins' functions against `tensorrt.plugin`'s own validation code, read from
NVIDIA/TensorRT at the tags that have it (python/packaging/bindings_wheel/tensorrt/plugin/
_validate.py, _utils.py, _export.py, _tensor.py and _autotune.py at v10.9.0, v10.15 and v11.1).

Those five files run as they are; only the compiled `tensorrt` module below them is a stand-in
(every attribute a placeholder class, plus `QuickPluginCreationRequest` so that AOT is enabled,
as _export.py checks). Needs a fetched NVIDIA/TensorRT git directory ($EDGEMERGE_TRT_GIT,
default the workplace mirror)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from edgemerge import opspec
from edgemerge.trt.plugins import _register_op

GIT = Path(os.environ.get("EDGEMERGE_TRT_GIT", "/work/.mirror/NVIDIA+TensorRT/repo"))
PLUGIN_DIR = "python/packaging/bindings_wheel/tensorrt/plugin"
FILES = ("_validate", "_utils", "_export", "_tensor", "_autotune")
TAGS = ["v10.9.0", "v10.15", "v11.1"]


class _Placeholder(type):
    """Any attribute of the stand-in `tensorrt` module: a class whose attributes are classes."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


def _vendor_package(tag: str, dest: Path) -> types.ModuleType | None:
    """Import `tensorrt.plugin._validate` of `tag` from `dest`, or None when the sources are absent."""
    if not (GIT / "HEAD").exists():
        return None
    pkg = dest / tag / "tensorrt" / "plugin"
    pkg.mkdir(parents=True)
    for name in FILES:
        show = subprocess.run(["git", "--git-dir", str(GIT), "show", f"{tag}:{PLUGIN_DIR}/{name}.py"],
                              capture_output=True, text=True)
        if show.returncode != 0:
            return None
        (pkg / f"{name}.py").write_text(show.stdout)
    (pkg / "__init__.py").write_text("")

    fake = types.ModuleType("tensorrt")
    fake.__path__ = [str(pkg.parent)]
    cache: dict[str, type] = {}
    fake.__getattr__ = lambda name: cache.setdefault(name, _Placeholder(name, (), {}))  # PEP 562
    saved = {k: v for k, v in sys.modules.items() if k == "tensorrt" or k.startswith("tensorrt.")}
    for k in saved:
        del sys.modules[k]
    sys.modules["tensorrt"] = fake
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "\\s" in the vendor's docstrings
            validate = importlib.import_module("tensorrt.plugin._validate")
            validate.SymIntExprs = importlib.import_module("tensorrt.plugin._tensor").SymIntExprs
        return validate
    finally:
        for k in [k for k in sys.modules if k == "tensorrt" or k.startswith("tensorrt.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module", params=TAGS)
def vendor(request, tmp_path_factory):
    v = _vendor_package(request.param, tmp_path_factory.mktemp("trtp"))
    if v is None:
        pytest.skip(f"needs NVIDIA/TensorRT {request.param} sources (fetch it; $EDGEMERGE_TRT_GIT)")
    return v


def _captured(vendor, op: opspec.OpSpec, aot: bool) -> dict:
    """Run our registration with decorators that only keep the functions, and the vendor's classes."""
    got: dict = {}

    def keep(kind):
        return lambda plugin_id: (lambda fn: got.setdefault(kind, fn))

    trtp = types.SimpleNamespace(
        TensorDesc=vendor.TensorDesc, KernelLaunchParams=vendor.KernelLaunchParams,
        SymIntExprs=vendor.SymIntExprs,
        AutoTuneCombination=vendor.AutoTuneCombination,
        register=keep("register"), autotune=keep("autotune"), impl=keep("impl"), aot_impl=keep("aot_impl"))
    _register_op(op, aot, trtp, types.SimpleNamespace())
    return got


# The match ops have no single-launch kernel, so they are registered JIT only.
CASES = [(name, False) for name in sorted(opspec.OPS)] + [
    (name, True) for name, op in sorted(opspec.OPS.items()) if op.kernel is not None]


@pytest.mark.parametrize("name,aot", CASES, ids=[f"{n}-{'aot' if a else 'jit'}" for n, a in CASES])
def test_vendor_validation_accepts_our_functions(vendor, name, aot):
    op = opspec.OPS[name]
    got = _captured(vendor, op, aot)
    tensors, attrs, _, _ = vendor._parse_register_inputs(got["register"], False)
    assert tensors == [p.name for p in op.inputs]
    assert list(attrs) == [a.name for a in op.plugin_attributes()]
    assert vendor._parse_register_return(got["register"]) == len(op.outputs)
    plugin_def = types.SimpleNamespace(input_tensor_names=tensors, input_attrs=attrs)
    vendor._validate_autotune(got["autotune"], plugin_def)
    if aot:
        vendor._validate_aot_impl(got["aot_impl"], plugin_def)
    else:
        vendor._validate_impl(got["impl"], plugin_def)


def test_vendor_validation_refuses_a_wrong_signature(vendor):
    """The check can fail: an impl function with its attributes after `outputs` is refused."""
    from edgemerge.trt.plugins import _signed

    op = opspec.OPS["TokenMerge"]
    got = _captured(vendor, op, False)
    tensors, attrs, _, _ = vendor._parse_register_inputs(got["register"], False)
    plugin_def = types.SimpleNamespace(input_tensor_names=tensors, input_attrs=attrs)
    wrong = _signed("wrong", tensors + ["outputs"] + list(attrs) + ["stream"], {}, None, lambda **a: None)
    with pytest.raises(ValueError, match="does not match"):
        vendor._validate_impl(wrong, plugin_def)
