"""Output files of `bench --report`, `show -o` and `calibrate -o`: checked before the work starts (one
line, exit 2) and written all or nothing (a full disk leaves no file, no temp file, no folder)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cli_helpers import one_line_error, refuse_work, run_cli, tree
from edgemerge.contracts.images import synthetic_images
from edgemerge.merge import calibrate as calibrate_mod


@pytest.fixture
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, im in enumerate(synthetic_images(3, 64, 64, seed=3)):
        Image.fromarray((im.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


# ---- calibrate -------------------------------------------------------------------------------------

@pytest.fixture
def no_calibration(monkeypatch):
    refuse_work(monkeypatch, calibrate_mod, "calibrate", "the calibration")


def test_calibrate_unwritable_refused_before_the_run(image_dir, unwritable, no_calibration):
    msg = one_line_error(run_cli("calibrate", "-m", "segmenter-vit-t", "-i", image_dir, "-r", "64x64",
                                 "-o", unwritable / "cal.json"))
    assert "calibration file" in msg and "not writable" in msg


def test_calibrate_out_is_a_directory(image_dir, tmp_path, no_calibration):
    msg = one_line_error(run_cli("calibrate", "-m", "segmenter-vit-t", "-i", image_dir, "-o", tmp_path))
    assert "is a directory" in msg


def test_calibrate_full_disk_leaves_nothing(image_dir, tmp_path, full_disk):
    msg = one_line_error(run_cli("calibrate", "-m", "segmenter-vit-t", "-i", image_dir, "-r", "64x64",
                                 "-o", tmp_path / "cal" / "algm.json"), after_work=True)
    assert "No space left on device" in msg and "algm.json" in msg
    assert tree(tmp_path) == []


# ---- show ------------------------------------------------------------------------------------------

def _show(image, out, *extra):
    return run_cli("show", "-m", "segformer-b0", "-v", "fast", "-i", image, "-r", "128x128", "-o", out, *extra)


def test_show_unwritable(image_dir, unwritable, monkeypatch):
    import edgemerge.export.bundle as bundle

    refuse_work(monkeypatch, bundle, "build_reference", "building the model")
    msg = one_line_error(_show(image_dir / "img0.png", unwritable / "merges.png"))
    assert "not writable" in msg


def test_show_out_below_a_file(image_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    msg = one_line_error(_show(image_dir / "img0.png", tmp_path / "afile" / "merges.png"))
    assert "afile is not a directory" in msg


@pytest.mark.slow
def test_show_full_disk_leaves_nothing(image_dir, tmp_path, full_disk):
    msg = one_line_error(_show(image_dir / "img0.png", tmp_path / "pics" / "merges.png"))
    assert "No space left on device" in msg
    assert tree(tmp_path) == []  # not site 0 without the others, no temp file, no folder


# ---- bench -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from edgemerge.contracts.manifest import ExportOptions
    from edgemerge.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bench") / "b0"
    export_bundle(ExportOptions(model="segformer-b0", variant="fast", resolution=(128, 128), out=str(out)))
    return out


@pytest.mark.slow
def test_bench_json_unwritable(bundle, unwritable, monkeypatch):
    import edgemerge.bench.core as bench

    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("the benchmark ran before the output was refused")))
    msg = one_line_error(run_cli("bench", bundle, "--report", unwritable / "bench.json"))
    assert "bench report" in msg and "not writable" in msg


@pytest.mark.slow
def test_bench_plot_below_a_file(bundle, tmp_path):
    (tmp_path / "afile").write_text("x")
    msg = one_line_error(run_cli("bench", bundle, "--report", tmp_path / "b.json", "--plot", tmp_path / "afile" / "p.png"))
    assert "latency plot" in msg and "afile is not a directory" in msg


@pytest.mark.slow
def test_bench_full_disk_leaves_nothing(bundle, tmp_path, full_disk):
    res = run_cli("bench", bundle, "--iterations", "2", "--warmup", "0", "--report", tmp_path / "out" / "b.json")
    assert "No space left on device" in one_line_error(res, after_work=True)
    assert tree(tmp_path) == []
