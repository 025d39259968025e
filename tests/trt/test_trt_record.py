"""The build-record checks, with the environment as a parameter: no TensorRT or GPU needed."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.manifest import read_manifest
from edgemerge.trt.builder import check_bundle_onnx, check_engine, choose_typing
from edgemerge.device.record import NO_PLUGINS, PYTHON_PLUGINS, BuildRecord, record_path, write_record
from edgemerge.trt.record import Environment
from edgemerge.contracts.files import sha256_file
from trt_helpers import write_bundle

import tempfile

from edgemerge.device import zipapp

TOOL = Path(tempfile.mkdtemp(prefix="edgemerge-device-")) / "edgemerge_device.py"  # what a bundle carries
TOOL.write_bytes(zipapp.build())

ORIN = Environment("10.3.0.30", "Orin", "8.7")


def make_engine(tmp_path, plugins=NO_PLUGINS, data=b"\x01engine-bytes" * 100):
    plan = tmp_path / "model.plan"
    plan.write_bytes(data)
    write_record(plan, BuildRecord(
        tensorrt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7", plugins=plugins,
        plugins_sha256=None, onnx_sha256="0" * 64, engine_sha256=sha256_file(plan),
        engine_size=len(data), edgemerge_version="0.1.0", build_time="2025-01-01T00:00:00+00:00"))
    return plan


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_matching_engine_passes(tmp_path):
    record, plugins = check_engine(make_engine(tmp_path), ORIN)
    assert plugins == NO_PLUGINS and record.gpu_name == "Orin"


def test_record_round_trips(tmp_path):
    plan = make_engine(tmp_path)
    data = json.loads(record_path(plan).read_text())
    assert data["tensorrt_version"] == "10.3.0.30" and data["engine_sha256"] == sha256_file(plan)


def test_missing_record(tmp_path):
    plan = make_engine(tmp_path)
    record_path(plan).unlink()
    with pytest.raises(EdgemergeError) as e:
        check_engine(plan, ORIN)
    assert "no build record" in one_line(e)


def test_other_tensorrt_version(tmp_path):
    with pytest.raises(EdgemergeError) as e:
        check_engine(make_engine(tmp_path), Environment("11.4.1", "Orin", "8.7"))
    msg = one_line(e)
    assert "TensorRT 10.3.0.30" in msg and "11.4.1" in msg


def test_patch_build_of_same_version_is_accepted(tmp_path):
    check_engine(make_engine(tmp_path), Environment("10.3.0", "Orin", "8.7"))


def test_other_compute_capability(tmp_path):
    with pytest.raises(EdgemergeError) as e:
        check_engine(make_engine(tmp_path), Environment("10.3.0.30", "NVIDIA H100", "9.0"))
    assert "compute capability 8.7" in one_line(e) and "9.0" in str(e.value)


def test_other_gpu_same_capability(tmp_path):
    with pytest.raises(EdgemergeError) as e:
        check_engine(make_engine(tmp_path), Environment("10.3.0.30", "Orin Nano", "8.7"))
    assert "'Orin Nano'" in one_line(e)


def test_truncated_engine(tmp_path):
    plan = make_engine(tmp_path)
    data = plan.read_bytes()
    plan.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgemergeError) as e:
        check_engine(plan, ORIN)
    assert "truncated" in one_line(e)


def test_same_size_corrupted_engine(tmp_path):
    plan = make_engine(tmp_path)
    data = bytearray(plan.read_bytes())
    data[7] ^= 0xFF
    plan.write_bytes(bytes(data))
    with pytest.raises(EdgemergeError) as e:
        check_engine(plan, ORIN)
    assert "sha256" in one_line(e)


def test_missing_plugin_library(tmp_path):
    plan = make_engine(tmp_path, plugins="build/plugins/libedgemerge_plugins.so")
    with pytest.raises(EdgemergeError) as e:
        check_engine(plan, ORIN)
    assert "libedgemerge_plugins.so" in one_line(e) and "not found" in str(e.value)


def test_given_plugin_library_missing(tmp_path):
    plan = make_engine(tmp_path, plugins="build/plugins/libedgemerge_plugins.so")
    with pytest.raises(EdgemergeError) as e:
        check_engine(plan, ORIN, plugins=[str(tmp_path / "nope.so")])
    assert "nope.so not found" in one_line(e)


def test_recorded_plugin_library_found_beside_engine(tmp_path):
    plan = make_engine(tmp_path, plugins="build/plugins/libedgemerge_plugins.so")
    lib = tmp_path / "build/plugins/libedgemerge_plugins.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF")
    _, plugins = check_engine(plan, ORIN)
    assert plugins == str(lib)


def test_python_plugins_record(tmp_path):
    _, plugins = check_engine(make_engine(tmp_path, plugins=PYTHON_PLUGINS), ORIN)
    assert plugins == PYTHON_PLUGINS


def test_onnx_without_manifest(tmp_path):
    onnx_path = write_bundle(tmp_path, manifest=False)
    with pytest.raises(EdgemergeError) as e:
        check_bundle_onnx(onnx_path)
    assert "manifest.json" in one_line(e)


def test_onnx_missing(tmp_path):
    with pytest.raises(EdgemergeError) as e:
        check_bundle_onnx(tmp_path / "model.onnx")
    assert "not found" in one_line(e)


def test_edited_onnx_is_refused(tmp_path):
    from edgemerge.trt.builder import check_onnx_matches_manifest

    onnx_path = write_bundle(tmp_path)
    manifest = read_manifest(onnx_path)
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(EdgemergeError) as e:
        check_onnx_matches_manifest(onnx_path, manifest)
    assert "sha256" in one_line(e)


@pytest.mark.parametrize("version, precision, fp16_onnx, expect", [
    ((10, 3, 0), "fp16", True, (True, False)),
    ((10, 3, 0), "fp16", False, (False, True)),
    ((10, 3, 0), "fp32", False, (False, False)),
    ((11, 4, 1), "fp16", True, (True, False)),
    ((11, 4, 1), "fp32", False, (True, False)),
])
def test_choose_typing(version, precision, fp16_onnx, expect):
    t = choose_typing(version, precision, fp16_onnx)
    assert (t.strongly_typed, t.fp16_flag) == expect


def test_trt11_refuses_fp16_bundle_with_fp32_onnx():
    with pytest.raises(EdgemergeError, match="re-export"):
        choose_typing((11, 4, 1), "fp16", False)


def test_onnx_has_fp16(tmp_path):
    from edgemerge.contracts.graphs import onnx_has_fp16

    assert onnx_has_fp16(write_bundle(tmp_path / "a", precision="fp16"))
    assert not onnx_has_fp16(write_bundle(tmp_path / "b", precision="fp32"))


def test_device_tool_record_is_one_the_loader_accepts(tmp_path, monkeypatch):
    """build_on_device.sh's `python3 edgemerge_device.py record` after trtexec: the record it
    writes passes check_engine on the same device, names the plugin library by hash and states
    the plugin layers against the merge sites."""
    onnx_path = write_bundle(tmp_path, precision="fp16")
    (tmp_path / "model.plan").write_bytes(b"\x02trtexec-engine" * 64)
    lib = tmp_path / "build" / "plugins" / "libedgemerge_plugins.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF fake plugin library")
    layers = {"Layers": [{"Name": "TokenUnmerge_0", "LayerType": "PluginV3", "Inputs": [], "Outputs": [],
                          "ParameterType": "Plugin", "TacticValue": "0x0000000000000000"}],
              "Bindings": ["merged", "slot", "out"]}
    (tmp_path / "layers.json").write_text(json.dumps(layers))
    cmd = [sys.executable, str(TOOL), "record", "--trt-version", "10.3.0", "--graph", "strip-functions",
           "--layers", "layers.json", "--plugins", "build/plugins/libedgemerge_plugins.so", "--strongly-typed"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "plugin layers: TokenUnmerge 1/1" in proc.stdout
    data = json.loads(record_path(tmp_path / "model.plan").read_text())
    assert data["tensorrt_version"] == "10.3.0" and data["plugins_sha256"] == sha256_file(lib)
    assert data["onnx_sha256"] == sha256_file(onnx_path) and data["strongly_typed"] is True
    assert data["plugin_layers"] == {"TokenUnmerge": {"sites": 1, "plugin_layers": 1}}
    assert data["layer_types"] == {"PluginV3": 1} and data["site_layer_types"] == {"TokenUnmerge": {"PluginV3": 1}}
    assert "layer types: PluginV3 1" in proc.stdout and "merge-site layer types: TokenUnmerge PluginV3 1" in proc.stdout
    assert data["tf32"] is None and "tf32 not stated" in proc.stdout  # no --trtexec-args/--tf32: not assumed
    here = Environment("10.3.0", data["gpu_name"], data["compute_capability"])
    monkeypatch.chdir(tmp_path)
    record, plugins = check_engine(tmp_path / "model.plan", here)
    assert record.engine_sha256 == sha256_file(tmp_path / "model.plan") and plugins.endswith("libedgemerge_plugins.so")


def test_device_tool_record_bad_input_is_one_line(tmp_path):
    write_bundle(tmp_path)
    cmd = [sys.executable, str(TOOL), "record", "--trt-version", "10.3.0", "--graph", "model.onnx"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "engine file not found" in proc.stderr
    assert not record_path(tmp_path / "model.plan").exists()


def _record(tmp_path, *extra):
    write_bundle(tmp_path)
    (tmp_path / "model.plan").write_bytes(b"\x02engine")
    cmd = [sys.executable, str(TOOL), "record", "--trt-version", "10.3.0", "--graph", "model.onnx", "--allow-body-only",
           *extra]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)


@pytest.mark.parametrize("extra,tf32", [
    (["--trtexec-args", "--onnx=model.onnx --saveEngine=model.plan --noTF32 --skipInference"], False),
    (["--trtexec-args", "--onnx=model.onnx --saveEngine=model.plan --skipInference"], True),  # trtexec's default
    (["--tf32", "off"], False),
    (["--tf32", "on"], True),
    ([], None),
])
def test_record_states_the_tf32_the_build_used(tmp_path, extra, tf32):
    """TF32 in the record is what the build used (the trtexec arguments, or what the builder
    says), never a constant; unstated is recorded as null."""
    proc = _record(tmp_path, *extra)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(record_path(tmp_path / "model.plan").read_text())["tf32"] is tf32


def test_record_refuses_contradicting_tf32(tmp_path):
    proc = _record(tmp_path, "--trtexec-args=--noTF32", "--tf32", "on")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "contradicts" in proc.stderr


def test_make_record_reads_layer_types_beside_the_engine(tmp_path):
    """The polygraphy route writes model.plan.layers.json before the record: the record keeps its
    LayerType strings without being handed them."""
    from edgemerge.device.record import layers_path, make_record

    onnx_path = write_bundle(tmp_path)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x03engine")
    layers_path(plan).write_text(json.dumps({"Layers": [{"Name": "TokenUnmerge_0", "LayerType": "PluginV3"},
                                                        {"Name": "x", "LayerType": "Shuffle"}], "Bindings": []}))
    record = make_record(plan, onnx_path, read_manifest(onnx_path), tensorrt_version="10.3.0", plugins=NO_PLUGINS,
                         plugins_sha256=None, strongly_typed=False, fp16_flag=False, graph="model.onnx",
                         plugin_layers=None, edgemerge_version="0", tf32=False)
    assert record.layer_types == {"PluginV3": 1, "Shuffle": 1} and record.tf32 is False
    assert record.site_layer_types == {"TokenUnmerge": {"PluginV3": 1}}
