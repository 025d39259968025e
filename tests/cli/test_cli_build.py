"""`edgemerge build` takes a bundle directory as validate and bench do (or its model.onnx), and
without TensorRT says how to get it in a source checkout and that it needs an NVIDIA GPU."""

from __future__ import annotations

import json

import pytest

import edgemerge.cli.build as build_cli
from cli_helpers import one_line_error, run_cli, tree


def bundle(folder, onnx=True, manifest=True):
    folder.mkdir()
    if onnx:
        (folder / "model.onnx").write_bytes(b"not parsed before TensorRT")
    if manifest:
        (folder / "manifest.json").write_text(json.dumps({"model": "segformer-b0", "variant": "none", "resolution": [64, 64], "precision": "fp32", "onnx_sha256": "00"}))
    return folder


@pytest.mark.parametrize("which", ["dir", "onnx"])
def test_build_without_tensorrt_hints_source_checkout_and_gpu(tmp_path, monkeypatch, which):
    monkeypatch.setattr(build_cli, "tensorrt_importable", lambda: False)
    b = bundle(tmp_path / "b")
    before = tree(tmp_path)
    msg = one_line_error(run_cli("build", b if which == "dir" else b / "model.onnx"))
    assert "pip install -e '.[trt]'" in msg and "JetPack" in msg and "NVIDIA GPU" in msg
    assert tree(tmp_path) == before


@pytest.mark.parametrize("which", ["dir", "onnx"])
def test_build_takes_the_bundle_directory_or_its_onnx(tmp_path, monkeypatch, which):
    from edgemerge.trt import builder

    calls = []

    class Record:
        strongly_typed, fp16_flag, tensorrt_version, gpu_name = True, False, "10.3.0", "GPU"
        compute_capability, precision, plugins, engine_size, build_seconds, graph = "8.7", "fp32", "python", 2**20, 1.0, "g"

        def plugin_summary(self):
            return "4/4"

    def fake_build(model, engine, **kw):
        calls.append((model, engine))
        return Record()

    monkeypatch.setattr(build_cli, "tensorrt_importable", lambda: True)
    monkeypatch.setattr(builder, "build_engine", fake_build)
    b = bundle(tmp_path / "b")
    res = run_cli("build", b if which == "dir" else b / "model.onnx")
    assert res.exit_code == 0, res.output
    assert calls == [(b / "model.onnx", b / "model.plan")]
    assert res.stdout.startswith(f"{b / 'model.plan'}: TensorRT 10.3.0")
    out = tmp_path / "e.plan"
    assert run_cli("build", b, "--save-engine", out).exit_code == 0 and calls[-1] == (b / "model.onnx", out)


@pytest.mark.parametrize("onnx, manifest, says", [
    (False, True, "bundle has no model.onnx"),
    (True, False, "no manifest.json in this directory"),
])
def test_build_refuses_an_incomplete_bundle_directory(tmp_path, monkeypatch, onnx, manifest, says):
    monkeypatch.setattr(build_cli, "tensorrt_importable", lambda: True)
    msg = one_line_error(run_cli("build", bundle(tmp_path / "b", onnx=onnx, manifest=manifest)))
    assert says in msg


def test_build_refuses_an_engine_and_a_missing_path(tmp_path):
    b = bundle(tmp_path / "b")
    (b / "model.plan").write_bytes(b"")
    assert "already an engine" in one_line_error(run_cli("build", b / "model.plan"))
    assert "no such bundle directory or ONNX file" in one_line_error(run_cli("build", tmp_path / "nope"))


def test_build_refuses_an_unwritable_engine_path_first(tmp_path, monkeypatch, unwritable):
    monkeypatch.setattr(build_cli, "tensorrt_importable", lambda: False)  # the path is checked before
    msg = one_line_error(run_cli("build", bundle(tmp_path / "b"), "--out", unwritable / "e.plan"))
    assert msg.startswith("edgemerge: error: cannot write engine")
