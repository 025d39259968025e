"""The Python plugins' functions against `tensorrt.plugin`'s own validation code, as NVIDIA ships
it: the pure-Python part of the plugin API (`tensorrt_bindings/plugin/*.py`) from the PyPI wheels
`tensorrt-cu12-bindings`, one per TensorRT minor from 10.6 (the first with `tensorrt.plugin`, where
edgemerge's Python plugin route starts) to the newest on PyPI.

Those files run as they are; only the compiled `tensorrt` module below them is a stand-in (every
attribute a placeholder class, plus `QuickPluginCreationRequest` so that AOT is enabled, as
_export.py checks). The wheels are downloaded once (`pip download --no-deps`, about 1.2 MB each)
into $EDGEMERGE_CACHE/trt-wheels (default ~/.cache/edgemerge/trt-wheels); only the plugin/*.py
files are kept. Without network the tests skip, naming what they need; with CI=true they fail."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import types
import warnings
import zipfile
from pathlib import Path

import pytest

from edgemerge.contracts import opspec
from edgemerge.trt.plugins import _register_op

PACKAGE = "tensorrt-cu12-bindings"
# One release per minor, 10.6 .. the newest on PyPI (`pip index versions tensorrt-cu12-bindings`, 2026-12).
VERSIONS = ["10.6.0", "10.7.0", "10.8.0.43", "10.9.0.34", "10.10.0.31", "10.11.0.33", "10.12.0.36", "10.13.3.9",
            "10.14.1.48.post1", "10.15.1.29", "10.16.1.11", "11.0.0.114", "11.1.0.106", "11.2.1.2", "11.3.0.99",
            "11.4.0.106"]
PLUGIN_DIR = "tensorrt_bindings/plugin/"
FILES = ("_validate", "_utils", "_export", "_tensor", "_autotune")
# The .py files are the same in every wheel of a release; this tag picks one deterministically
# (a cp311 manylinux wheel exists for every version above), whatever the machine running the test.
WHEEL_TAG = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64"]


def cache_dir() -> Path:
    root = os.environ.get("EDGEMERGE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "edgemerge") / "trt-wheels"


def _missing(version: str, why: str):
    msg = (f"needs the PyPI wheel {PACKAGE}=={version} (its {PLUGIN_DIR}*.py) in {cache_dir() / version}: "
           f"`{sys.executable} -m pip download --no-deps {' '.join(WHEEL_TAG)} {PACKAGE}=={version}` failed "
           f"({why}); run it where PyPI is reachable, or set EDGEMERGE_CACHE to a cache that has it")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)  # a green CI must mean the vendor check ran
    pytest.skip(msg)


def plugin_sources(version: str) -> Path:
    """<cache>/<version>/tensorrt/plugin/ holding the wheel's plugin/*.py (downloaded once)."""
    dest = cache_dir() / version
    done = dest / ".complete"
    if done.is_file():
        return dest / "tensorrt" / "plugin"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *WHEEL_TAG,
                                   f"{PACKAGE}=={version}", "-d", tmp], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            _missing(version, str(e))
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            _missing(version, (proc.stderr.strip().splitlines() or ["no wheel"])[-1])
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=dest.parent if dest.parent.is_dir()
                                        else _mkdir(dest.parent)))
        with zipfile.ZipFile(wheels[0]) as whl:
            names = [n for n in whl.namelist() if n.startswith(PLUGIN_DIR) and n.endswith(".py")
                     and "/" not in n[len(PLUGIN_DIR):]]
            if not names:
                _missing(version, f"{wheels[0].name} has no {PLUGIN_DIR}*.py")
            pkg = staging / "tensorrt" / "plugin"
            pkg.mkdir(parents=True)
            for name in names:
                (pkg / Path(name).name).write_bytes(whl.read(name))
        (staging / ".complete").write_text(wheels[0].name + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        try:
            staging.rename(dest)
        except OSError:  # another run got there first
            shutil.rmtree(staging, ignore_errors=True)
    return dest / "tensorrt" / "plugin"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Placeholder(type):
    """Any attribute of the stand-in `tensorrt` module: a class whose attributes are classes."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


def _vendor_package(version: str, dest: Path) -> types.ModuleType:
    """Import `tensorrt.plugin._validate` of `version` (a copy of the cached files in `dest`)."""
    src = plugin_sources(version)
    pkg = dest / version / "tensorrt" / "plugin"
    pkg.mkdir(parents=True)
    for name in FILES:
        if not (src / f"{name}.py").is_file():
            pytest.fail(f"{PACKAGE}=={version} has no {PLUGIN_DIR}{name}.py")
        shutil.copyfile(src / f"{name}.py", pkg / f"{name}.py")
    (pkg / "__init__.py").write_text("")  # the wheel's __init__ imports the compiled parts

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
            tensor = importlib.import_module("tensorrt.plugin._tensor")
            for name in ("SymIntExprs", "KernelLaunchParams"):  # AOT-era classes (10.9+)
                if not hasattr(validate, name) and hasattr(tensor, name):
                    setattr(validate, name, getattr(tensor, name))
        return validate
    finally:
        for k in [k for k in sys.modules if k == "tensorrt" or k.startswith("tensorrt.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module", params=VERSIONS)
def vendor(request, tmp_path_factory):
    module = _vendor_package(request.param, tmp_path_factory.mktemp("trtp"))
    module.EDGEMERGE_TEST_VERSION = tuple(int(p) for p in request.param.split(".")[:3])
    return module


def test_aot_validation_exists_exactly_where_edgemerge_offers_aot(vendor):
    from edgemerge.trt.lib import has_aot_plugins

    assert hasattr(vendor, "_validate_aot_impl") == has_aot_plugins(vendor.EDGEMERGE_TEST_VERSION)


def test_the_oldest_python_plugin_release_is_covered():
    """edgemerge offers Python plugins from 10.6 (trtlib.has_python_plugins) and AOT from 10.9: the
    vendor check covers every minor from there."""
    from edgemerge.trt.lib import has_python_plugins

    minors = {tuple(int(p) for p in v.split(".")[:2]) for v in VERSIONS}
    assert not has_python_plugins((10, 5, 0)) and has_python_plugins((10, 6, 0))
    assert {(10, m) for m in range(6, 17)} <= minors and (11, 0) in minors


def _captured(vendor, op: opspec.OpSpec, aot: bool) -> dict:
    """Run our registration with decorators that only keep the functions, and the vendor's classes."""
    got: dict = {}

    def keep(kind):
        return lambda plugin_id: (lambda fn: got.setdefault(kind, fn))

    trtp = types.SimpleNamespace(
        TensorDesc=vendor.TensorDesc, KernelLaunchParams=getattr(vendor, "KernelLaunchParams", None),
        SymIntExprs=getattr(vendor, "SymIntExprs", None),
        AutoTuneCombination=vendor.AutoTuneCombination,
        register=keep("register"), autotune=keep("autotune"), impl=keep("impl"), aot_impl=keep("aot_impl"))
    _register_op(op, aot, trtp, types.SimpleNamespace())
    return got


# The match ops have no single-launch kernel, so they are registered JIT only.
CASES = [(name, False) for name in sorted(opspec.OPS)] + [
    (name, True) for name, op in sorted(opspec.OPS.items()) if op.kernel is not None]


@pytest.mark.parametrize("name,aot", CASES, ids=[f"{n}-{'aot' if a else 'jit'}" for n, a in CASES])
def test_vendor_validation_accepts_our_functions(vendor, name, aot):
    if aot and not hasattr(vendor, "_validate_aot_impl"):
        pytest.skip("no @trtp.aot_impl in this release (AOT plugins start at 10.9)")
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
