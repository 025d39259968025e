"""`edgemerge export` decides before exporting: opsets it cannot export or self-check, `--engine`
where no engine can be built; one line, exit 2, no bundle and no temp directory left."""

from __future__ import annotations

import importlib.util

import pytest

from cli_helpers import one_line_error, refuse_work, run_cli, tree
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.export import bundle


@pytest.fixture
def no_export(monkeypatch):
    refuse_work(monkeypatch, bundle, "build_reference", "the export")


@pytest.mark.parametrize("opset, words", [("99", "opsets 17..25"), ("26", "opsets 17..25"), ("16", "too old")])
def test_opset_refused_before_export(tmp_path, no_export, opset, words):
    msg = one_line_error(run_cli("export", "-m", "segformer-b0", "-v", "fast", "-r", "128x128", "--opset", opset,
                                 "-o", tmp_path / "b"))
    assert words in msg and opset in msg
    assert tree(tmp_path) == []


def test_opset_onnxruntime_cannot_run(monkeypatch):
    import onnxruntime

    def too_new(*a, **k):
        raise RuntimeError("ValidateOpsetForDomain: opset 25 is under development")

    monkeypatch.setattr(onnxruntime, "InferenceSession", too_new)
    with pytest.raises(EdgemergeError, match="newer than this ONNX Runtime"):
        bundle.check_opset(25)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engine_without_tensorrt_refused_before_export(tmp_path, no_export):
    msg = one_line_error(run_cli("export", "-m", "segformer-b0", "-v", "fast", "-r", "128x128", "--engine",
                                 "-o", tmp_path / "b"))
    assert "TensorRT is not installed" in msg
    assert "pip install -e '.[trt]'" in msg and "NVIDIA GPU" in msg  # fits the README's source checkout
    assert tree(tmp_path) == []


def test_engine_without_gpu_refused_before_export(tmp_path, no_export, monkeypatch):
    from edgemerge.trt import record

    monkeypatch.setattr(record, "current_environment",
                        lambda: record.Environment(tensorrt_version="10.3.0", gpu_name=None, compute_capability=None))
    msg = one_line_error(run_cli("export", "-m", "segformer-b0", "-v", "fast", "-r", "128x128", "--engine",
                                 "-o", tmp_path / "b"))
    assert "no GPU is visible" in msg and "build_on_device.sh" in msg
    assert tree(tmp_path) == []


def test_ctrl_c_while_writing_the_bundle_exits_130_and_leaves_nothing(tmp_path, monkeypatch):
    """Interrupted once the temporary bundle folder exists (the device script being written):
    exit 130, one line, neither the bundle nor its temporary folder left."""
    from edgemerge.trt import device_script

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(device_script, "write_build_script", interrupted)
    res = run_cli("export", "-m", "segformer-b0", "-v", "fast", "-r", "128x128", "-o", tmp_path / "b")
    assert res.exit_code == 130, res.output
    assert res.stderr.splitlines()[-1] == "edgemerge: interrupted" and "error" not in res.stderr
    assert all(ln.startswith("edgemerge: ") for ln in res.stderr.splitlines())  # progress, then that line
    assert "Traceback" not in res.output and tree(tmp_path) == []


@pytest.mark.parametrize("args, words", [
    (["--num-classes", "0"], "needs at least 2 classes"),
    (["--checkpoint", "missing.pth"], "checkpoint not found: "),
])
def test_bad_model_options_refused_before_any_progress(tmp_path, no_export, args, words):
    """One line, not 'building the PyTorch model' and then the error."""
    args = [str(tmp_path / a) if a.endswith(".pth") else a for a in args]
    msg = one_line_error(run_cli("export", "-m", "segformer-b0", "-v", "fast", "-r", "128x128", *args,
                                 "-o", tmp_path / "b"))
    assert words in msg
    assert tree(tmp_path) == []
