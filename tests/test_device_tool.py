"""edgemerge/device_tool.py: TensorRT's parser rule, the graph each TensorRT route gets, function
stripping without onnx, plugin-layer counting, the GPU architecture; all on the standard library."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgemerge import device_tool as D
from edgemerge.export.functions import OPS
from trt.trt_helpers import op_model

TOOL = Path(D.__file__)
ROUTES = [(10, 3, 0), (10, 6, 1), (10, 7, 0), (10, 14, 1), (10, 15, 1), (11, 1, 0)]


@pytest.mark.parametrize("version,registered,namespace,function,override,expect", [
    # <= 10.6: built-in, then local function, then plugin (ModelImporter.cpp release/10.1-GA)
    ((10, 3, 0), True, True, True, False, D.FUNCTION),
    ((10, 3, 0), True, True, False, False, D.PLUGIN),
    ((10, 3, 0), False, True, True, False, D.FUNCTION),
    ((10, 3, 0), False, True, False, False, D.UNSUPPORTED),
    # 10.7 .. 10.14: a registered plugin beats the local function (Changelog 10.7 GA)
    ((10, 7, 0), True, True, True, False, D.PLUGIN),
    ((10, 14, 1), True, False, True, False, D.PLUGIN),
    ((10, 14, 1), False, True, True, False, D.FUNCTION),
    # >= 10.15: plugin first only for plugin_namespace or the override flag (Changelog 10.15 GA)
    ((10, 15, 1), True, True, True, False, D.PLUGIN),
    ((11, 1, 0), True, False, True, False, D.FUNCTION),
    ((11, 1, 0), True, False, True, True, D.PLUGIN),
    ((11, 1, 0), True, False, False, False, D.PLUGIN),
    ((11, 1, 0), False, True, False, False, D.UNSUPPORTED),
])
def test_parser_rule(version, registered, namespace, function, override, expect):
    assert D.parser_implementation(version, plugin_registered=registered, plugin_namespace=namespace,
                                   local_function=function, plugin_override=override) == expect


def bundle_of(directory: Path, op_type: str, merge_ops: str = "plugin") -> Path:
    directory.mkdir(parents=True)
    model = op_model(op_type)
    onnx.save(model, str(directory / "model.onnx"))
    from edgemerge.graphs import merge_sites

    (directory / "manifest.json").write_text(json.dumps({"merge_ops": merge_ops, "merge_sites": merge_sites(model)}))
    return directory


def implementations(model: onnx.ModelProto, version, plugins: bool) -> list[str]:
    functions = {f.name for f in model.functions if f.domain == D.DOMAIN}
    return [D.parser_implementation(version, plugin_registered=plugins,
                                    plugin_namespace=any(a.name == "plugin_namespace" for a in n.attribute),
                                    local_function=n.op_type in functions)
            for n in model.graph.node if n.domain == D.DOMAIN]


@pytest.mark.parametrize("op_type", list(OPS))
@pytest.mark.parametrize("version", ROUTES, ids=lambda v: ".".join(map(str, v)))
def test_every_route_hands_the_parser_the_intended_graph(tmp_path, op_type, version):
    """With plugins every merge node reaches the plugin (before 10.7: no shadowing function left);
    without, the graph holds the bodies only, inlined (no edgemerge node, no function)."""
    bundle = bundle_of(tmp_path / "b", op_type)
    for plugins in (True, False):
        name, kind = D.graph_for(bundle, version, plugins)
        model = onnx.load(str(bundle / name))
        impls = implementations(model, version, plugins)
        if plugins:
            assert impls == [D.PLUGIN], (name, impls)
            assert all(a.name != "plugin_namespace" or a.s == b"edgemerge"
                       for n in model.graph.node for a in n.attribute)
            assert (kind == D.STRIP) == (version < (10, 7, 0))
        else:
            assert kind == D.NATIVE and impls == [] and not model.functions
            assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}


def test_strip_functions_equals_onnx_without_them():
    model = op_model("TokenMerge")
    model.functions.append(onnx.helper.make_function("other", "Keep", ["a"], ["b"],
                                                     [onnx.helper.make_node("Identity", ["a"], ["b"])],
                                                     [onnx.helper.make_opsetid("", 17)]))
    stripped, dropped = D.strip_functions(model.SerializeToString())
    assert dropped == 1
    want = onnx.ModelProto()
    want.CopyFrom(model)
    del want.functions[:]
    want.functions.append(model.functions[1])
    assert stripped == want.SerializeToString()


def test_strip_refuses_what_is_not_onnx():
    with pytest.raises(D.DeviceError, match="not an ONNX file"):
        D.strip_functions(b"\x0a\xff\xff\xff")


def test_tool_needs_only_the_standard_library(tmp_path):
    """The bundle's copy runs under `python3 -I -S` (no site-packages): import, help, strip route."""
    bundle = bundle_of(tmp_path / "b", "TokenUnmerge")
    copy = bundle / "edgemerge_device.py"
    copy.write_bytes(TOOL.read_bytes())
    py = [sys.executable, "-I", "-S", str(copy)]
    assert subprocess.run(py + ["--help"], capture_output=True, text=True).returncode == 0
    proc = subprocess.run(py + ["graph", "--bundle", str(bundle), "--trt-version", "10.3.0", "--plugins", "yes"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["model.trt.onnx", D.STRIP]
    assert not onnx.load(str(bundle / "model.trt.onnx")).functions
    # the inlined graph needs onnx: without site-packages that is one line, exit 2
    proc = subprocess.run(py + ["graph", "--bundle", str(bundle), "--trt-version", "10.3.0", "--plugins", "no"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "onnx onnxscript" in proc.stderr


# ---- layer information ------------------------------------------------------------------------------

SITES = {"TokenMatchWindow": ["TokenMatchWindow_0"], "TokenMerge": ["TokenMerge_0", "TokenMerge_1"]}


def layer(name, kind="PluginV3"):
    return {"Name": name, "LayerType": kind, "Inputs": [], "Outputs": [], "Metadata": f"[ONNX Layer: {name}]"}


def test_plugin_engine_passes():
    info = {"Layers": [layer("conv", "CaskConvolution"), layer("TokenMatchWindow_0"), layer("TokenMerge_0"),
                       layer("TokenMerge_1", "PluginV2")], "Bindings": ["images", "logits"]}
    counts = D.count_plugin_layers(info, SITES)
    assert counts == {"TokenMatchWindow": 1, "TokenMerge": 2}
    D.check_plugin_layers(counts, SITES, allow_body_only=False)
    assert D.plugin_layer_summary(counts, SITES) == "TokenMatchWindow 1/1, TokenMerge 2/2"


def test_body_only_engine_fails_with_the_message():
    info = {"Layers": [layer("__edgemerge_TokenMerge_0_0", "MatrixMultiply"), layer("TokenMatchWindow_0"),
                       layer("TokenMerge_1", "ElementWise")], "Bindings": []}
    counts = D.count_plugin_layers(info, SITES)
    with pytest.raises(D.DeviceError) as e:
        D.check_plugin_layers(counts, SITES, allow_body_only=False)
    assert e.value.exit_code == 1
    assert "fewer plugin layers than merge sites (TokenMatchWindow 1/1, TokenMerge 0/2)" in str(e.value)
    D.check_plugin_layers(counts, SITES, allow_body_only=True)  # asked for: accepted


def test_names_only_layer_information_is_refused():
    with pytest.raises(D.DeviceError, match="profilingVerbosity=detailed"):
        D.count_plugin_layers({"Layers": ["TokenMerge_0"], "Bindings": []}, SITES)


# ---- the GPU's architecture -------------------------------------------------------------------------

def fake_smi(tmp_path, monkeypatch, answer: str) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{answer}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(D, "_gpu_from_driver", lambda: None)
    monkeypatch.setattr(D, "_gpu_from_tegra", lambda root="/": None)


def test_arch_from_a_desktop_nvidia_smi(tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, "NVIDIA H200, 9.0")
    assert D.cuda_arch() == "90"


@pytest.mark.parametrize("answer", ["Orin (nvgpu), [N/A]", "N/A, N/A", ""])
def test_arch_on_jetson_falls_back_to_orin(tmp_path, monkeypatch, answer):
    fake_smi(tmp_path, monkeypatch, answer)
    assert D.cuda_arch() == "87"


def test_arch_from_the_device_tree(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/compatible").write_bytes(b"nvidia,p3737-0000+p3701-0005\0nvidia,tegra234\0")
    assert D._gpu_from_tegra(str(tmp_path)) == ("Orin (nvgpu)", "8.7")


def test_the_standalone_constants_are_the_op_specs():
    """edgemerge_device.py cannot import the op spec (standard library only): its copies must agree."""
    from edgemerge import opspec

    assert D.MERGE_OPS == tuple(opspec.OPS) and D.DOMAIN == opspec.DOMAIN
