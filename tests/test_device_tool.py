"""edgemerge.device: TensorRT's parser rule, the graph each TensorRT route gets, function
stripping without onnx, plugin-layer counting, the GPU architecture; all on the standard library."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgemerge.contracts import files
from edgemerge.contracts import opspec
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.device import gpu
from edgemerge.device import layers
from edgemerge.device import onnxwire
from edgemerge.device import parser
from edgemerge.device import record
from edgemerge.device import zipapp
from edgemerge.export.functions import OPS
from trt import fake_trtexec
from trt.trt_helpers import op_model

ROUTES = [(10, 3, 0), (10, 6, 1), (10, 7, 0), (10, 14, 1), (10, 15, 1), (11, 1, 0)]


# The parser rule is judged against the stand-in's own table (tests/trt/fake_trtexec.py), written
# from onnx-tensorrt's ModelImporter.cpp at each readable parser commit and the changelogs, never
# from edgemerge.device.tool: a wrong rule must not be confirmed by its own copy.
CASES = [dict(hit=h, has_ns=n, function=f, override=o)
         for h in (False, True) for n in (False, True) for f in (False, True) for o in (False, True)]
TABLE_VERSIONS = [row[0] for row in fake_trtexec.PARSER_TABLE] + [(10, 6, 1), (10, 14, 1), (10, 15, 1), (11, 1, 5)]


def test_fake_trtexec_imports_nothing_of_edgemerge():
    text = Path(fake_trtexec.__file__).read_text()
    assert not re.search(r"^\s*(from|import)\s+edgemerge", text, re.M)


@pytest.mark.parametrize("version", TABLE_VERSIONS, ids=lambda v: ".".join(map(str, v)))
def test_parser_rule_matches_the_vendor_table(version):
    for case in CASES:
        want = fake_trtexec.parser_rule(version, **case)
        got = parser.parser_implementation(version, plugin_registered=case["hit"], plugin_namespace=case["has_ns"],
                                      local_function=case["function"], plugin_override=case["override"])
        assert got == want, (version, case)


@pytest.mark.parametrize("version,row", [((10, 3, 0), "function-first"), ((10, 6, 0), "function-first"),
                                         ((10, 7, 0), "plugin-before-function"),
                                         ((10, 14, 1), "plugin-before-function"),
                                         ((10, 15, 0), "namespace-or-override"), ((11, 1, 0), "namespace-or-override")])
def test_vendor_table_rows(version, row):
    """The boundaries of the table itself (10.7 GA and 10.15 GA changelog entries, the sources read
    at 10.1, 10.14, 10.16 and 11.0), and a spot check of each rule by hand."""
    assert fake_trtexec.parser_row(version)[1] == row
    rule = lambda **k: fake_trtexec.parser_rule(version, **k)  # noqa: E731
    carried = rule(hit=True, has_ns=True, function=True)
    assert carried == (parser.FUNCTION if row == "function-first" else parser.PLUGIN)
    assert rule(hit=True, has_ns=False, function=True) == (parser.FUNCTION if row != "plugin-before-function" else parser.PLUGIN)
    assert rule(hit=False, has_ns=True, function=False) == parser.UNSUPPORTED
    with pytest.raises(KeyError):
        fake_trtexec.parser_row((9, 3, 0))
    with pytest.raises(KeyError):
        fake_trtexec.parser_row((11, 2, 0))  # no parser source read: refused, not extrapolated


@pytest.mark.parametrize("version", TABLE_VERSIONS, ids=lambda v: ".".join(map(str, v)))
def test_choose_graph_against_the_vendor_table(version):
    """model.onnx when the table gives our namespaced, registered nodes the plugin despite their
    function; else the graph without functions when that reaches the plugin; never the bodies."""
    with_function = fake_trtexec.parser_rule(version, hit=True, has_ns=True, function=True)
    without = fake_trtexec.parser_rule(version, hit=True, has_ns=True, function=False)
    want = parser.AS_IS if with_function == parser.PLUGIN else parser.STRIP if without == parser.PLUGIN else None
    assert parser.choose_graph(version, True) == want
    assert parser.choose_graph(version, False) == parser.NATIVE


def bundle_of(directory: Path, op_type: str, merge_ops: str = "plugin") -> Path:
    directory.mkdir(parents=True)
    model = op_model(op_type)
    onnx.save(model, str(directory / "model.onnx"))
    from edgemerge.contracts.graphs import merge_sites

    (directory / "manifest.json").write_text(json.dumps({
        "model": "test", "variant": "none", "resolution": [1, 1], "precision": "fp32",
        "onnx_sha256": files.sha256_file(directory / "model.onnx"), "merge_ops": merge_ops,
        "merge_sites": merge_sites(model)}))
    return directory


def implementations(model: onnx.ModelProto, version, plugins: bool) -> list[str]:
    """What the vendor table (not device_tool) gives each edgemerge node of `model`."""
    functions = {f.name for f in model.functions}  # by name alone, as the parser keys them
    return [fake_trtexec.parser_rule(version, hit=plugins,
                                     has_ns=any(a.name == "plugin_namespace" for a in n.attribute),
                                     function=n.op_type in functions)
            for n in model.graph.node if n.domain == opspec.DOMAIN]


@pytest.mark.parametrize("op_type", list(OPS))
@pytest.mark.parametrize("version", ROUTES, ids=lambda v: ".".join(map(str, v)))
def test_every_route_hands_the_parser_the_intended_graph(tmp_path, op_type, version):
    """With plugins every merge node reaches the plugin (before 10.7: no shadowing function left);
    without, the graph holds the bodies only, inlined (no edgemerge node, no function)."""
    bundle = bundle_of(tmp_path / "b", op_type)
    for plugins in (True, False):
        name, kind = parser.graph_for(bundle, version, plugins)
        model = onnx.load(str(bundle / name))
        impls = implementations(model, version, plugins)
        if plugins:
            assert impls == [parser.PLUGIN], (name, impls)
            assert all(a.name != "plugin_namespace" or a.s == b"edgemerge"
                       for n in model.graph.node for a in n.attribute)
            assert (kind == parser.STRIP) == (version < (10, 7, 0))
        else:
            assert kind == parser.NATIVE and impls == [] and not model.functions
            assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}


def test_strip_functions_equals_onnx_without_them():
    model = op_model("TokenMerge")
    model.functions.append(onnx.helper.make_function("other", "Keep", ["a"], ["b"],
                                                     [onnx.helper.make_node("Identity", ["a"], ["b"])],
                                                     [onnx.helper.make_opsetid("", 17)]))
    stripped, dropped = onnxwire.strip_functions(model.SerializeToString())
    assert dropped == 1
    want = onnx.ModelProto()
    want.CopyFrom(model)
    del want.functions[:]
    want.functions.append(model.functions[1])
    assert stripped == want.SerializeToString()


def test_strip_refuses_what_is_not_onnx():
    with pytest.raises(EdgemergeError, match="not an ONNX file"):
        onnxwire.strip_functions(b"\x0a\xff\xff\xff")


def test_tool_needs_only_the_standard_library(tmp_path):
    """The bundle's copy runs under `python3 -I -S` (no site-packages): import, help, strip route."""
    bundle = bundle_of(tmp_path / "b", "TokenUnmerge")
    copy = bundle / "edgemerge_device.py"
    copy.write_bytes(zipapp.build())
    py = [sys.executable, "-I", "-S", str(copy)]
    assert subprocess.run(py + ["--help"], capture_output=True, text=True).returncode == 0
    proc = subprocess.run(py + ["graph", "--bundle", str(bundle), "--trt-version", "10.3.0", "--plugins", "yes"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["model.trt.onnx", parser.STRIP]
    assert not onnx.load(str(bundle / "model.trt.onnx")).functions
    # the inlined graph needs onnx: without site-packages that is one line, exit 2
    proc = subprocess.run(py + ["graph", "--bundle", str(bundle), "--trt-version", "10.3.0", "--plugins", "no"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "onnx onnxscript" in proc.stderr


def test_native_graph_is_rederived_for_another_model_onnx(tmp_path):
    """model.native.onnx is reused only for the model.onnx it was made from (its sha256 is in the
    derived file's metadata): a stale one from another export is made again, not built."""
    bundle = bundle_of(tmp_path / "b", "TokenMerge")
    name, kind = parser.graph_for(bundle, (10, 3, 0), False)
    first = onnx.load(str(bundle / name))
    assert kind == parser.NATIVE and onnxwire.derived_from((bundle / name).read_bytes()) == files.sha256_file(bundle / "model.onnx")
    assert {p.key: p.value for p in first.metadata_props}[onnxwire.SOURCE_SHA_KEY] == files.sha256_file(bundle / "model.onnx")
    again = parser.graph_for(bundle, (10, 3, 0), False)  # same model.onnx: reused as it is
    assert again == (name, kind) and onnx.load(str(bundle / name)) == first
    onnx.save(op_model("TokenUnmerge"), str(bundle / "model.onnx"))  # another export into the same folder
    parser.graph_for(bundle, (10, 3, 0), False)
    rebuilt = onnx.load(str(bundle / name))
    assert [i.name for i in rebuilt.graph.input] == [i.name for i in op_model("TokenUnmerge").graph.input]
    assert onnxwire.derived_from((bundle / name).read_bytes()) == files.sha256_file(bundle / "model.onnx")


def test_untied_native_graph_without_onnx_is_refused(tmp_path):
    """Under `python3 -I -S` (no onnx to re-derive it) a model.native.onnx not made from this
    model.onnx is refused with one line, never built."""
    bundle = bundle_of(tmp_path / "b", "TokenUnmerge")
    (bundle / "model.native.onnx").write_bytes(op_model("TokenMerge").SerializeToString())  # no tie
    copy = bundle / "edgemerge_device.py"
    copy.write_bytes(zipapp.build())
    proc = subprocess.run([sys.executable, "-I", "-S", str(copy), "graph", "--bundle", str(bundle), "--trt-version",
                           "10.3.0", "--plugins", "no"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "from another model.onnx" in proc.stderr


# ---- layer information ------------------------------------------------------------------------------

SITES = {"TokenMatchWindow": ["TokenMatchWindow_0"], "TokenMerge": ["TokenMerge_0", "TokenMerge_1"]}


def test_cell_sites_are_counted_like_the_others():
    """A b0 bundle with cell-local MixFFN sites: the device route counts TokenMatchCell's plugin
    layers per site, and refuses a build that inlined one of them."""
    sites = {"TokenMatchBipartite": ["TokenMatchBipartite_0"], "TokenMatchCell": ["TokenMatchCell_0", "TokenMatchCell_1"],
             "TokenMerge": ["TokenMerge_0"], "TokenMergeCell": ["TokenMergeCell_0", "TokenMergeCell_1"]}
    info = {"Layers": [layer("TokenMatchBipartite_0"), layer("TokenMatchCell_0"), layer("TokenMatchCell_1", "PluginV2"),
                       layer("TokenMerge_0"), layer("TokenMergeCell_0"), layer("TokenMergeCell_1")], "Bindings": []}
    counts = layers.count_plugin_layers(info, sites)
    assert counts == {"TokenMatchBipartite": 1, "TokenMatchCell": 2, "TokenMerge": 1, "TokenMergeCell": 2}
    layers.check_plugin_layers(counts, sites, allow_body_only=False)
    assert layers.plugin_layer_summary(counts, sites) == \
        "TokenMatchBipartite 1/1, TokenMatchCell 2/2, TokenMerge 1/1, TokenMergeCell 2/2"
    inlined = {"Layers": [layer("TokenMatchBipartite_0"), layer("__edgemerge_TokenMatchCell_0_7", "TopK"),
                          layer("TokenMatchCell_1"), layer("TokenMerge_0"), layer("TokenMergeCell_0"),
                          layer("__edgemerge_TokenMergeCell_1_12", "Reduce")], "Bindings": []}
    counts = layers.count_plugin_layers(inlined, sites)
    assert counts["TokenMatchCell"] == 1 and counts["TokenMergeCell"] == 1
    with pytest.raises(EdgemergeError, match="TokenMatchCell 1/2.*TokenMergeCell 1/2"):
        layers.check_plugin_layers(counts, sites, allow_body_only=False)


def tensor(name, fmt="Row major linear FP32"):
    return {"Name": name, "Location": "Device", "Dimensions": [2, 40, 24], "Format/Datatype": fmt}


def layer(name, kind="PluginV3", parameter_type=None):
    """An entry as trtexec --exportLayerInfo writes it with detailed verbosity (IEngineInspector's
    JSON; the fields of trt-engine-explorer's example resnet.onnx.engine.graph.json at NVIDIA/TensorRT
    v10.3.0). "PluginV3" is an assumed string: no source read shows an IPluginV3 layer's LayerType."""
    return {"Name": name, "LayerType": kind, "Inputs": [tensor(f"{name}:in")], "Outputs": [tensor(f"{name}:out")],
            "ParameterType": parameter_type or ("Plugin" if kind.startswith("Plugin") else kind),
            "TacticValue": "0x0000000000000000"}


def test_plugin_engine_passes():
    info = {"Layers": [layer("conv", "CaskConvolution"), layer("TokenMatchWindow_0"), layer("TokenMerge_0"),
                       layer("TokenMerge_1", "PluginV2")], "Bindings": ["images", "logits"]}
    counts = layers.count_plugin_layers(info, SITES)
    assert counts == {"TokenMatchWindow": 1, "TokenMerge": 2}
    layers.check_plugin_layers(counts, SITES, allow_body_only=False)
    assert layers.plugin_layer_summary(counts, SITES) == "TokenMatchWindow 1/1, TokenMerge 2/2"


def test_body_only_engine_fails_with_the_message():
    info = {"Layers": [layer("__edgemerge_TokenMerge_0_0", "MatrixMultiply"), layer("TokenMatchWindow_0"),
                       layer("TokenMerge_1", "ElementWise")], "Bindings": []}
    counts = layers.count_plugin_layers(info, SITES)
    with pytest.raises(EdgemergeError) as e:
        layers.check_plugin_layers(counts, SITES, allow_body_only=False)
    assert e.value.exit_code == 1
    assert "fewer plugin layers than merge sites (TokenMatchWindow 1/1, TokenMerge 0/2)" in str(e.value)
    layers.check_plugin_layers(counts, SITES, allow_body_only=True)  # asked for: accepted


def test_layer_types_are_recorded_as_seen():
    """Whatever string TensorRT gives a plugin layer, the record keeps every LayerType and those of
    the layers named after merge sites: a string other than Plugin* shows up there."""
    info = {"Layers": [layer("Conv_0 + Relu_1", "CaskConvolution"), layer("Conv_3 + Relu_4", "CaskConvolution"),
                       layer("TokenMatchWindow_0", "PluginV3"),
                       layer("TokenMerge_0", "Mystery"), layer("Reformatting CopyNode for Input Tensor 0 to x",
                                                                "Reformat")],
            "Bindings": ["images", "logits"]}
    assert layers.layer_types(info) == {"CaskConvolution": 2, "Mystery": 1, "PluginV3": 1, "Reformat": 1}
    assert layers.site_layer_types(info, SITES) == {"TokenMatchWindow": {"PluginV3": 1}, "TokenMerge": {"Mystery": 1}}
    assert layers.count_plugin_layers(info, SITES) == {"TokenMatchWindow": 1, "TokenMerge": 0}
    assert layers.layer_types_summary(layers.layer_types(info)) == "CaskConvolution 2, Mystery 1, PluginV3 1, Reformat 1"
    assert layers.layer_types({"Layers": ["a", "b"], "Bindings": []}) == {}


def test_trtexec_tf32_is_read_from_its_arguments():
    """trtexec builds with TF32 unless --noTF32 (sampleOptions.h v10.3.0:213 `bool tf32{true}`)."""
    assert record.trtexec_tf32(["--onnx=model.onnx", "--noTF32"]) is False
    assert record.trtexec_tf32(["--onnx=model.onnx", "--stronglyTyped"]) is True


def test_names_only_layer_information_is_refused():
    with pytest.raises(EdgemergeError, match="profilingVerbosity=detailed"):
        layers.count_plugin_layers({"Layers": ["TokenMerge_0"], "Bindings": []}, SITES)


# ---- the GPU's architecture -------------------------------------------------------------------------

def fake_smi(tmp_path, monkeypatch, answer: str) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{answer}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gpu, "_gpu_from_driver", lambda: None)
    monkeypatch.setattr(gpu, "_gpu_from_tegra", lambda root="/": None)


def test_arch_from_a_desktop_nvidia_smi(tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, "NVIDIA H200, 9.0")
    assert gpu.cuda_arch() == "90"


@pytest.mark.parametrize("answer", ["Orin (nvgpu), [N/A]", "N/A, N/A", ""])
def test_arch_on_jetson_falls_back_to_orin(tmp_path, monkeypatch, answer):
    fake_smi(tmp_path, monkeypatch, answer)
    assert gpu.cuda_arch() == "87"


def test_arch_from_the_device_tree(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/compatible").write_bytes(b"nvidia,p3737-0000+p3701-0005\0nvidia,tegra234\0")
    assert gpu._gpu_from_tegra(str(tmp_path)) == ("Orin (nvgpu)", "8.7")


def test_the_device_package_imports_only_the_standard_library():
    """What the zipapp runs on a bare JetPack python3: the device modules and the contracts they
    use import nothing outside the standard library at module level (onnx is imported only inside
    graph_for, for the inlined graph, and refused with one line when absent)."""
    import ast

    import edgemerge

    root = Path(edgemerge.__file__).parent
    allowed = {"edgemerge.contracts.errors", "edgemerge.contracts.files", "edgemerge.contracts.manifest",
               "edgemerge.contracts.opspec"}
    checked, bad = [], []
    todo = [f"edgemerge.device.{p.stem}" for p in (root / "device").glob("*.py")]
    while todo:
        mod = todo.pop()
        if mod in checked:
            continue
        checked.append(mod)
        tree = ast.parse((root.parent / (mod.replace(".", "/") + ".py")).read_text())
        for node in tree.body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                if name.startswith("edgemerge.device") or name in allowed:
                    todo.append(name)
                elif name == "edgemerge" or name.split(".")[0] in sys.stdlib_module_names or name == "__future__":
                    continue
                else:
                    bad.append(f"{mod}: {name}")
    assert not bad, bad
    assert set(allowed) <= set(checked) | allowed


def test_zipapp_is_deterministic_and_carries_the_package():
    """The same sources give the same bytes (bundles are compared byte for byte), and the archive
    holds every module of edgemerge.device."""
    import io
    import zipfile

    import edgemerge

    data = zipapp.build()
    assert data == zipapp.build()
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    device = {f"edgemerge/device/{p.name}" for p in (Path(edgemerge.__file__).parent / "device").glob("*.py")}
    assert device <= names and "__main__.py" in names
