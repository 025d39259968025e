"""`edgemerge validate` refuses bad output folders and limits before any work, in one line (exit 2),
leaves nothing behind on a full disk, and exits 130 on Ctrl-C."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")

from cli_helpers import one_line_error, refuse_work, run_cli, tree  # noqa: E402

from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle
from edgemerge.validate import api as validate_api  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b0"
    export_bundle(ExportOptions(model="segformer-b0", variant="fast", resolution=(128, 128), out=str(out)))
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test when validation gets as far as rebuilding the model: refusals come first."""
    refuse_work(monkeypatch, validate_api, "reference_from_manifest", "the work")


def test_out_is_an_existing_file(bundle, tmp_path, no_work):
    f = tmp_path / "report"
    f.write_text("keep")
    msg = one_line_error(run_cli("validate", bundle, "--out", f))
    assert "not a directory" in msg and str(f) in msg
    assert f.read_text() == "keep"


def test_out_below_a_file(bundle, tmp_path, no_work):
    (tmp_path / "afile").write_text("x")
    msg = one_line_error(run_cli("validate", bundle, "--out", tmp_path / "afile" / "rep"))
    assert "afile is not a directory" in msg


def test_out_unwritable(bundle, unwritable, no_work):
    msg = one_line_error(run_cli("validate", bundle, "--out", unwritable / "edgemerge-report"))
    assert "not writable" in msg and "Permission denied" in msg


@pytest.mark.parametrize("args, words", [
    (["--min-agreement", "2"], "--min-agreement"), (["--min-agreement", "-0.1"], "--min-agreement"),
    (["--rtol", "-1"], "--rtol"), (["--atol", "-1"], "--atol"), (["--atol", "nan"], "--atol"),
])
def test_limits_refused_before_work(bundle, tmp_path, no_work, args, words):
    msg = one_line_error(run_cli("validate", bundle, "--out", tmp_path / "rep", *args))
    assert words in msg
    assert not (tmp_path / "rep").exists()


def test_full_disk_leaves_nothing(bundle, tmp_path, full_disk):
    out = tmp_path / "reports" / "rep"
    msg = one_line_error(run_cli("validate", bundle, "-n", "1", "--out", out), after_work=True)
    assert "No space left on device" in msg and "report" in msg
    assert tree(tmp_path) == []  # neither the folders it made nor a temp file


def test_ctrl_c_exits_130(bundle, tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(validate_api, "reference_from_manifest", interrupted)
    res = run_cli("validate", bundle, "--out", tmp_path / "rep")
    assert res.exit_code == 130 and res.stderr.strip().splitlines()[-1] == "edgemerge: interrupted", res.output
    assert "error" not in res.stderr
    assert "Traceback" not in res.output and tree(tmp_path) == []


# ---- a manifest that no longer describes its model.onnx ---------------------------------------------

def _edited_copy(bundle, dst, unstamp: bool = False, **changes):
    import hashlib
    import json
    import shutil

    import onnx

    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("validate_report"))
    manifest = json.loads((dst / "manifest.json").read_text())
    if unstamp:  # restamped to agree with the edited manifest, so the run itself must catch the edit
        from edgemerge.contracts.identity import stamp

        model = onnx.load(str(dst / "model.onnx"))
        stamp(model, {**manifest, **changes})
        onnx.save(model, str(dst / "model.onnx"))
        manifest["onnx_sha256"] = hashlib.sha256((dst / "model.onnx").read_bytes()).hexdigest()
    manifest.update(changes)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("changes, words", [
    ({"variant": "hq"}, "variant 'hq' in the manifest, 'fast' in model.onnx"),
    ({"model": "segformer-b1"}, "model 'segformer-b1' in the manifest"),
    ({"resolution": [256, 256]}, "resolution [256, 256] in the manifest"),
])
def test_edited_manifest_detected(bundle, tmp_path, no_work, changes, words):
    edited = _edited_copy(bundle, tmp_path / "edited", **changes)
    msg = one_line_error(run_cli("validate", edited))
    assert words in msg and "edited after export" in msg
    assert not (edited / "validate_report").exists()


@pytest.mark.parametrize("changes, words", [
    ({"variant": "hq"}, "variant 'hq' in the manifest, 'fast' in model.onnx"),
    ({"resolution": [256, 256]}, "resolution [256, 256] in the manifest"),
])
def test_bench_refuses_an_edited_manifest(bundle, tmp_path, monkeypatch, changes, words):
    """bench trusts the manifest as validate does (input shape, label, the --unmerged baseline): the
    same check, before anything is loaded or timed."""
    from edgemerge.bench import core

    refuse_work(monkeypatch, core, "make_runner", "the benchmark")
    edited = _edited_copy(bundle, tmp_path / "edited", **changes)
    before = tree(tmp_path)
    msg = one_line_error(run_cli("bench", edited, "--unmerged", "--baseline-dir", tmp_path / "base"))
    assert words in msg and "edited after export" in msg
    assert tree(tmp_path) == before


def test_polygraphy_stays_silent(bundle, tmp_path):
    """Without the stamp an edited resolution reaches ONNX Runtime: edgemerge says so in its one
    line; polygraphy prints neither its [!] lines nor its 'colored' module notice."""
    edited = _edited_copy(bundle, tmp_path / "edited", unstamp=True, resolution=[256, 256])
    res = run_cli("validate", edited, "-n", "1")
    assert "ONNX Runtime cannot run it" in one_line_error(res, after_work=True)
    assert "[!]" not in res.output and "colored" not in res.output and "[W]" not in res.output


# ---- labels ------------------------------------------------------------------------------------------

def _folder(root, name, arrays):
    import numpy as np
    from PIL import Image

    folder = root / name
    folder.mkdir()
    for i, a in enumerate(arrays):
        Image.fromarray(np.asarray(a, np.uint8)).save(folder / f"f{i}.png")
    return folder


@pytest.fixture
def frames(tmp_path):
    import numpy as np

    from edgemerge.contracts.images import synthetic_images

    ims = (synthetic_images(3, 90, 120, seed=1).transpose(0, 2, 3, 1) * 255).round()
    return _folder(tmp_path, "frames", ims)


def test_labels_of_another_size_refused(bundle, tmp_path, frames, no_work):
    import numpy as np

    labels = _folder(tmp_path, "labels", [np.zeros((100, 100))] * 3)
    msg = one_line_error(run_cli("validate", bundle, "--images", frames, "--labels", labels))
    assert "100x100" in msg and "90x120" in msg and "their image's size" in msg


def test_all_ignored_labels_warned_and_progress_lines(bundle, tmp_path, frames):
    import numpy as np

    labels = _folder(tmp_path, "labels", [np.full((90, 120), 255)] * 3)
    res = run_cli("validate", bundle, "--images", frames, "--labels", labels, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    warnings = [ln for ln in lines if ln.startswith("edgemerge: warning:")]
    assert len(warnings) == 1 and "3 of 3 label maps" in warnings[0] and "n/a" in warnings[0]
    # progress without a terminal: plain lines, one per step and per batch, no file:line suffix
    assert lines[0].startswith("edgemerge: reading 3 image(s) from")
    assert "edgemerge: PyTorch: batch 1/3" in lines and "edgemerge: PyTorch: batch 3/3" in lines
    assert not any(".py:" in ln for ln in lines)
