"""Friction a new user meets: a resolution the plan cannot divide names the nearest that work;
bench takes trtexec's --iterations."""

from __future__ import annotations

import pytest

from cli_helpers import one_line_error, run_cli


@pytest.mark.parametrize("model, variant, res, near", [
    ("segformer-b0", "fast", "360x480", "384x512, 256x384"),  # CamVid frames
    ("segformer-b0", "fast", "64x64", "128x128"),  # nothing smaller works
    ("vit-t", "tome", "230x230", "240x240, 224x224"),
])
def test_undividable_resolution_suggests_the_nearest(model, variant, res, near):
    msg = one_line_error(run_cli("plan", "-m", model, "-v", variant, "-r", res))
    assert msg.endswith(f"nearest resolutions that work: {near}")
    for hw in near.split(", "):  # and they do work
        assert run_cli("plan", "-m", model, "-v", variant, "-r", hw, "--json").exit_code == 0


def test_bench_accepts_iterations():
    res = run_cli("bench", "--help")
    assert res.exit_code == 0 and "--iterations" in res.output and "not trtexec's milliseconds" in res.output


@pytest.mark.parametrize("kw, name", [
    ({}, "segformer-b0-fast"),
    ({"resolution": (512, 512)}, "segformer-b0-fast"),  # the model's own resolution
    ({"resolution": (128, 128)}, "segformer-b0-fast-128x128"),
    ({"precision": "fp16", "merge_ops": "native", "batch": 2}, "segformer-b0-fast-fp16-native-b2"),
])
def test_default_bundle_name_says_what_differs(kw, name):
    from edgemerge.contracts.manifest import ExportOptions
    from edgemerge.export.bundle import default_out

    assert str(default_out(ExportOptions(model="segformer-b0", variant="fast", **kw))) == name


@pytest.mark.slow
def test_export_names_the_checkpoint_and_says_when_it_replaces(tmp_path, monkeypatch):
    import torch

    from edgemerge.models.registry import build_model

    torch.save(build_model("segformer-b0", num_classes=19).state_dict(), tmp_path / "b0.pth")
    monkeypatch.chdir(tmp_path)
    args = ["export", "-m", "segformer-b0", "-v", "fast", "-r", "128x128"]
    first = run_cli(*args, "-c", "b0.pth")
    assert first.exit_code == 0, first.output
    assert "bundle: segformer-b0-fast-128x128/\n" in first.stdout  # nothing replaced
    assert "checkpoint  " in first.stdout and "19 classes" in first.stdout
    from edgemerge.contracts.manifest import read_manifest
    from edgemerge.merge.flops import gflops
    from edgemerge.models.registry import configure

    # the manifest counts the checkpoint's 19-class head, not the zoo's 150
    counted = read_manifest(tmp_path / "segformer-b0-fast-128x128")["plan"]["gflops"]
    assert counted == gflops(configure("segformer-b0", num_classes=19), "fast", (128, 128))
    assert counted["unmerged"] < gflops("segformer-b0", "fast", (128, 128))["unmerged"]
    second = run_cli(*args)
    assert second.exit_code == 0, second.output
    assert "bundle: segformer-b0-fast-128x128/  (replaced the bundle that was there)" in second.stdout
