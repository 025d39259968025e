"""What a new user hits, round three (issue 21, the items round two left): signals, outputs that
are not plain folders, a second export to the same folder, out of memory, train-metric's options
and labels, manifests of a newer edgemerge, bench's copies and baselines, colour off a terminal.

Every refusal: exit code 2, one line on stderr, no traceback, nothing left behind, before the work.
Three tiny exports (vit-t at 64x64, ~7 s each) are the only real work here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import one_line_error, refuse_work, run_cli, tree
from edgemerge.contracts.errors import EdgemergeError

REPO = Path(__file__).resolve().parents[2]
TINY = ["-m", "vit-t", "-v", "tome", "-r", "64x64"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """One real bundle (never modified: tests copy it)."""
    out = tmp_path_factory.mktemp("bundle") / "vit-t-tome"
    res = run_cli("export", *TINY, "-o", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def no_export(monkeypatch):
    from edgemerge.export import bundle as bundle_mod

    refuse_work(monkeypatch, bundle_mod, "build_reference", "the export")


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _terminate_here(*a, **k):
    """What a `kill PID` does to the running command: SIGTERM, delivered while it works."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(20)
    raise AssertionError("SIGTERM did not stop the command")


# --- 1. signals, leftovers, one export per folder ----------------------------------------------

def test_sigterm_mid_export_cleans_up_like_ctrl_c_and_stale_leftovers_go(tmp_path, monkeypatch):
    """SIGTERM once the temporary bundle folder exists: exit 143, one line, that folder removed. The
    export first removed the leftovers of a killed export to the same folder (a dead pid in their
    names), and kept those of a live one."""
    from edgemerge.trt import device_script

    dead = _dead_pid()
    stale_tmp = tmp_path / f".b.tmp-{dead}-ab12_x"
    stale_tmp.mkdir()
    (stale_tmp / "model.onnx").write_bytes(b"\x08\x07partial")
    (tmp_path / f".b.old-{dead}").mkdir()
    live = tmp_path / f".b.tmp-{os.getpid()}-zz9"  # a running export's (this process is alive)
    live.mkdir()
    other = tmp_path / f".bb.tmp-{dead}-ab12"  # another bundle's: not ours to remove
    other.mkdir()
    monkeypatch.setattr(device_script, "write_build_script", _terminate_here)
    res = run_cli("export", *TINY, "-o", tmp_path / "b")
    assert res.exit_code == 143, res.output
    assert res.stderr.splitlines()[-1] == "edgemerge: terminated (SIGTERM)" and "error" not in res.stderr
    assert "Traceback" not in res.output
    assert tree(tmp_path) == sorted([live.name, other.name])  # its own temp folder, the stale ones, the lock: gone
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back after the command


def test_interrupt_mid_replay_is_not_masked_by_unused_decisions():
    """SIGTERM in the self-check's PyTorch replay came out as a traceback ('3 replayed merge
    decisions were not used', from the replay's clean-up) instead of the interrupt."""
    import torch

    from edgemerge.merge.core import replay_decisions

    with pytest.raises(KeyboardInterrupt):
        with replay_decisions([torch.zeros(2)]):
            raise KeyboardInterrupt
    with pytest.raises(RuntimeError, match="1 replayed merge decisions were not used"):  # still checked
        with replay_decisions([torch.zeros(2)]):
            pass


def test_stale_leftovers_told_by_the_pid_in_the_name(tmp_path):
    from edgemerge.contracts.files import stale_leftovers

    dead = _dead_pid()
    names = [f".b.tmp-{dead}-q1", f".b.old-{dead}", f".b.tmp-{os.getpid()}-q2", f".b.old-{os.getpid()}",
             f".b.tmp-{dead}", f".b.old-{dead}-x", f".b.x.tmp-{dead}-q3", ".b.lock", f".c.tmp-{dead}-q4"]
    for n in names:
        (tmp_path / n).mkdir()
    assert [p.name for p in stale_leftovers(tmp_path / "b")] == sorted([f".b.old-{dead}", f".b.tmp-{dead}-q1"])


def test_second_export_to_the_same_folder_refused_while_the_first_runs(tmp_path, no_export):
    from edgemerge.contracts.files import lock_path, output_lock

    with output_lock(tmp_path / "b"):
        before = tree(tmp_path)
        msg = one_line_error(run_cli("export", *TINY, "-o", tmp_path / "b"))
        assert f"another edgemerge (pid {os.getpid()}) is writing bundle {tmp_path / 'b'}" in msg
        assert tree(tmp_path) == before
    assert not lock_path(tmp_path / "b").exists()  # let go, and removed
    with output_lock(tmp_path / "b"):  # and taken again
        pass


def test_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    from edgemerge.contracts.files import lock_path, output_lock

    lock_path(tmp_path / "b").write_text(f"{_dead_pid()}\n")  # its flock died with it
    with output_lock(tmp_path / "b"):
        assert lock_path(tmp_path / "b").read_text() == f"{os.getpid()}\n"
    assert tree(tmp_path) == []


def test_sigterm_during_bench_unmerged_removes_its_work_folder(tmp_path, monkeypatch, bundle):
    import tempfile

    import edgemerge.bench.core as core

    tmpdir = tmp_path / "TMP"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))

    def export_then_killed(merged, backend, workdir, *a, **k):
        (Path(workdir) / "model.onnx").write_bytes(b"half")
        _terminate_here()

    monkeypatch.setattr(core, "unmerged_artifact", export_then_killed)
    res = run_cli("bench", bundle, "--unmerged", "--report", tmp_path / "r.json")
    assert res.exit_code == 143 and res.stderr.splitlines()[-1] == "edgemerge: terminated (SIGTERM)", res.output
    assert list(tmpdir.iterdir()) == [] and not (tmp_path / "r.json").exists()


# --- 2. outputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("out", [".", "..", "./"])
def test_out_is_the_current_directory_refused_before_work(tmp_path, monkeypatch, no_export, out):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    msg = one_line_error(run_cli("export", *TINY, "-o", out))
    assert "is the current directory" in msg and "-o ./bundle" in msg
    assert tree(tmp_path) == ["here"]


def test_out_symlink_to_a_bundle_is_written_through(tmp_path, bundle):
    shutil.copytree(bundle, tmp_path / "target")
    (tmp_path / "link").symlink_to("target")
    res = run_cli("export", *TINY, "--seed", "1", "-o", tmp_path / "link")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "link").is_symlink() and os.readlink(tmp_path / "link") == "target"
    assert json.loads((tmp_path / "target" / "manifest.json").read_text())["seed"] == 1
    assert tree(tmp_path) == sorted(["link", "target", *(f"target/{p}" for p in tree(tmp_path / "target"))])
    assert f"bundle: {tmp_path / 'link'}/  (replaced the bundle that was there)" in res.stdout


# --- 6. bench: a copy cut short, a baseline of another model ---------------------------------------

def test_bench_truncated_onnx_refused_with_copy_again(tmp_path, monkeypatch, bundle):
    import edgemerge.bench.core as core

    refuse_work(monkeypatch, core, "_timed", "the timing")
    copy = shutil.copytree(bundle, tmp_path / "copy")
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])
    before = tree(tmp_path)
    msg = one_line_error(run_cli("bench", copy))
    assert "model.onnx: sha256" in msg and "truncated" in msg and "copy the bundle again" in msg
    assert tree(tmp_path) == before


def test_bench_baseline_of_another_model_is_said(monkeypatch):
    from edgemerge.bench.artifact import Artifact
    from edgemerge.bench.core import _check_compatible
    from edgemerge.contracts.manifest import Manifest

    def art(model, res=(64, 64), ck=None):
        m = Manifest.from_dict({"model": model, "variant": "none", "resolution": list(res), "onnx_sha256": "0",
                                "batch": 1, "checkpoint": ck and {"sha256": ck},
                                "inputs": [{"name": "x", "shape": [1, 3, *res], "dtype": "float32"}]})
        return Artifact(Path("m.onnx"), "onnx", m)

    said = []
    _check_compatible(art("vit-t"), art("vit-s"), said.append)
    assert len(said) == 1 and "baseline is vit-s and the artifact vit-t" in said[0]
    said.clear()
    _check_compatible(art("vit-t", ck="aa"), art("vit-t", ck="bb"), said.append)
    assert len(said) == 1 and "weights" in said[0]
    said.clear()
    _check_compatible(art("vit-t"), art("vit-t"), said.append)
    assert said == []
    with pytest.raises(EdgemergeError, match="baseline input shape"):
        _check_compatible(art("vit-t"), art("vit-t", res=(32, 32)), said.append)


# --- 3. out of memory ---------------------------------------------------------------------------

def test_out_of_memory_in_the_checker_is_not_a_graph_finding(monkeypatch):
    import onnx

    from edgemerge.export.bundle import check_graph

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(onnx.checker, "check_model", no_memory)
    with pytest.raises(MemoryError):  # not CheckFailed("exported ONNX does not pass onnx.checker")
        check_graph(onnx.ModelProto(), "plugin")


@pytest.mark.parametrize("error", [
    MemoryError(),
    OSError(12, "Cannot allocate memory"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 68719476736 bytes"),
])
def test_out_of_memory_anywhere_is_one_line_exit_2(monkeypatch, error):
    import edgemerge.merge.flops as flops

    def no_memory(*a, **k):
        raise error

    monkeypatch.setattr(flops, "gflops", no_memory)
    msg = one_line_error(run_cli("plan", "-m", "segformer-b0", "-v", "fast"))
    assert msg.startswith(f"edgemerge: error: out of memory ({type(error).__name__}")
    assert "smaller --resolution or --batch" in msg


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch):
    import edgemerge.merge.flops as flops

    def bug(*a, **k):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(flops, "gflops", bug)
    res = run_cli("plan", "-m", "segformer-b0", "-v", "fast")
    assert isinstance(res.exception, RuntimeError) and "out of memory" not in res.output  # a bug stays a bug


# --- 4. train-metric ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    """A random vit-t's weights and 5 tiny images (4 train, 1 judged)."""
    import torch

    from edgemerge.models.registry import build_model

    d = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    torch.save(build_model("vit-t", resolution=(32, 32)).state_dict(), d / "vit-t.pth")
    for i in range(5):
        _png(d / "img" / f"{i}.png", seed=i)
    return d


def _png(path: Path, h: int = 32, w: int = 32, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _train(data, out, *args, model="vit-t", checkpoint=None):
    return run_cli("train-metric", "-m", model, "-c", checkpoint or data / "vit-t.pth", "-i", data / "img",
                   "-o", out, "-r", "32x32", "--batch", "2", *args)


@pytest.fixture
def no_training(monkeypatch):
    import edgemerge.models.checkpoint as ck

    refuse_work(monkeypatch, ck, "load_checkpoint", "loading the model")


@pytest.mark.parametrize("args, words", [
    (["--lr", "-1"], "must be a number > 0"),
    (["--lr", "0"], "must be a number > 0"),
    (["--lr", "nan"], "nan is not a finite number"),
    (["--lr", "inf"], "inf is not a finite number"),
    (["--lr", "5"], "<= 1"),
    (["--holdout", "nan"], "nan is not a finite number"),
    (["--epochs", "1000000000000"], "at most 1000000 steps"),
    (["--epochs", "600000"], "is 1200000 steps; at most 1000000"),  # 4 training images / batch 2: 2 steps each
    (["--steps", "1000001"], "at most 1000000 steps"),
    (["--epochs", "0"], "--epochs"),
    (["--batch", "0"], "--batch"),
])
def test_train_metric_numbers_refused_first(tmp_path, train_data, no_training, args, words):
    msg = one_line_error(_train(train_data, tmp_path / "run", *args))
    assert words in msg
    assert tree(tmp_path) == []


def test_train_metric_resume_said_progress_off_a_terminal_files_0644(tmp_path, train_data):
    """A run cut at step 2 (step 1 saved) is resumed by the command, which says so, prints its
    progress as plain lines (not a terminal here) and leaves its files 0644 whatever the umask."""
    import stat

    import edgemerge.train.metric as metric_mod

    def stop_at_2(step, total, loss):  # step 1 saved (save_every=1), step 2 not
        if step == 2:
            raise KeyboardInterrupt

    opts = metric_mod.TrainOptions(model="vit-t", variant="dtem", checkpoint=str(train_data / "vit-t.pth"),
                                   images=str(train_data / "img"), out=str(tmp_path / "run"), steps=2, batch=2,
                                   resolution=(32, 32), save_every=1)  # what the command below asks for
    with pytest.raises(KeyboardInterrupt):
        metric_mod.train_metric(opts, progress=stop_at_2)
    old = os.umask(0o077)  # mkstemp's 0600 would stay 0600 under it; the one writer sets 0644 itself
    try:
        res = _train(train_data, tmp_path / "run", "--steps", "2")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    err = res.stderr.splitlines()
    assert err[0] == f"edgemerge: resuming the run in {tmp_path / 'run'} at step 1 of 2 (train_state.pth)"
    assert err[1].startswith("edgemerge: training metric: step 2/2, loss ") and len(err) == 2, res.stderr
    for name in ("checkpoint.pth", "train_state.pth", "train_record.json"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


def test_train_metric_progress_lines_off_a_terminal():
    from edgemerge.cli.train_metric import _StepProgress

    res = run_cli_capture(lambda: [p(s, 100, 0.5) for p in [_StepProgress()] for s in range(1, 101)])
    steps = [int(ln.split("step ")[1].split("/")[0]) for ln in res]
    assert steps == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def run_cli_capture(fn) -> list[str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        fn()
    return err.getvalue().splitlines()


def test_train_metric_default_variant_per_family():
    from edgemerge.merge.plan import load_variants
    from edgemerge.train.metric import default_variant

    expected = {"vit-t": "dtem", "deit-s": "dtem", "segformer-b0": "fast-pa-lm", "segformer-b5": "fast-pa-lm",
                "segmenter-vit-t": "algm-lm"}
    for model, variant in expected.items():
        assert default_variant(model) == variant and variant in load_variants(model), model


def test_train_metric_every_option_has_help():
    from edgemerge.cli.train_metric import train_metric

    bare = [p.name for p in train_metric.params if isinstance(p, __import__("click").Option) and not p.help]
    assert bare == []


def _segformer_labels(tmp_path, values, suffix=".png"):
    import torch
    from PIL import Image

    from edgemerge.models.registry import build_model

    tmp_path.mkdir()
    torch.save(build_model("segformer-b0", resolution=(32, 32)).state_dict(), tmp_path / "seg.pth")
    (tmp_path / "labels").mkdir()
    for i in range(5):
        _png(tmp_path / "img" / f"{i}.png", seed=i)
        lab = np.zeros((32, 32), np.uint8)
        for j, v in enumerate(values):
            lab[j, :] = v
        Image.fromarray(lab).save(tmp_path / "labels" / f"{i}.png", format="JPEG" if suffix == ".jpg" else "PNG")
    return tmp_path


def test_train_metric_label_ids_beyond_the_classes_refused_as_validate_does(tmp_path):
    d = _segformer_labels(tmp_path / "d", [1, 150, 200, 255])  # segformer-b0: 150 classes (ADE20K)
    before = tree(tmp_path)
    msg = one_line_error(_train(d, tmp_path / "run", "--labels", d / "labels", model="segformer-b0",
                                checkpoint=d / "seg.pth"))
    assert "has class ids 150, 200, outside 0..149" in msg and "255 = ignore" in msg
    assert tree(tmp_path) == before


def test_train_metric_jpeg_labels_refused_before_work(tmp_path, no_training):
    d = _segformer_labels(tmp_path / "d", [1, 2], suffix=".jpg")  # JPEG content named .png
    msg = one_line_error(_train(d, tmp_path / "run", "--labels", d / "labels", model="segformer-b0",
                                checkpoint=d / "seg.pth"))
    assert "is a JPEG" in msg and "lossy" in msg


# --- 5. a manifest of a newer edgemerge ------------------------------------------------------------

def _edit_manifest(bundle: Path, where: Path, **changes) -> Path:
    copy = shutil.copytree(bundle, where)
    m = json.loads((copy / "manifest.json").read_text())
    m.update(changes)
    (copy / "manifest.json").write_text(json.dumps(m))
    return copy


def test_newer_manifest_format_and_unknown_fields_said_not_ignored(tmp_path, bundle):
    copy = _edit_manifest(bundle, tmp_path / "copy", format=2, tiling={"tiles": 4}, zeta=1)
    res = run_cli("bench", copy, "--baseline", tmp_path / "missing")  # reads the manifest, then refuses
    lines = res.stderr.splitlines()
    assert res.exit_code == 2 and len(lines) == 2 and "Traceback" not in res.output, res.output
    assert lines[0].startswith(f"edgemerge: note: {copy / 'manifest.json'} was written by a newer edgemerge "
                               "(manifest format 2;")
    assert "fields it does not know: tiling, zeta" in lines[0]
    assert lines[1].startswith("edgemerge: error: artifact not found")


def test_unknown_manifest_fields_said_once_known_ones_not(tmp_path):
    import warnings

    from edgemerge.contracts.errors import EdgemergeNote
    from edgemerge.contracts.manifest import Manifest

    base = {"model": "vit-t", "variant": "none", "resolution": [64, 64], "onnx_sha256": "0"}
    with pytest.warns(EdgemergeNote, match=r"x.json has fields edgemerge .* does not know: later \(ignored"):
        m = Manifest.from_dict({**base, "later": 1}, "x.json")
    assert m["later"] == 1  # kept, and written back as read
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Manifest.from_dict({**base, "format": 1, "plan_file": {"table": {}}}, "x.json")  # what this version writes


# --- 7. colour off a terminal -------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["plan", "-m", "segformer-b0", "-v", "fast"], ["models"]])
def test_no_colour_codes_off_a_terminal_whatever_the_environment(tmp_path, monkeypatch, command):
    """FORCE_COLOR / TTY_COMPATIBLE (set by some CI runners and IDEs) made rich write escape codes
    into pipes and files; an unwritable HOME and TERM change nothing either."""
    for k, v in {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1", "TERM": "xterm-256color", "HOME": "/proc"}.items():
        monkeypatch.setenv(k, v)
    res = run_cli(*command)
    assert res.exit_code == 0, res.output
    assert "\x1b[" not in res.output and res.output.strip()


def test_terminal_output_keeps_rich_colours(monkeypatch):
    import edgemerge.cli as cli

    monkeypatch.setattr(cli, "is_tty", lambda stream: True)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert cli.console(force_terminal=True).color_system is not None
    monkeypatch.setattr(cli, "is_tty", lambda stream: False)
    c = cli.console()
    assert c.color_system is None and not c.is_terminal and c.width == cli.WIDE_COLUMNS


# --- 8. the picture show draws on: EXIF orientation, 16-bit -------------------------------------------

def _exif_rotated_jpeg(path: Path) -> np.ndarray:
    """A landscape 48x32 JPEG tagged 'rotate 90 clockwise' (a phone's portrait photo); returns what a
    viewer shows (32 wide, 48 high). Flat quadrants, so that JPEG's loss stays small."""
    from PIL import Image

    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:16, :24], rgb[:16, 24:], rgb[16:, :24], rgb[16:, 24:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, format="JPEG", quality=95, exif=exif)
    return np.rot90(rgb, k=-1)


def test_read_rgb_applies_exif_orientation_of_a_jpeg(tmp_path):
    from edgemerge.contracts.images import load_image, read_rgb

    shown = _exif_rotated_jpeg(tmp_path / "rot.jpg")
    pic = np.asarray(read_rgb(tmp_path / "rot.jpg"), np.float32)
    assert pic.shape == (48, 32, 3)
    assert np.abs(pic - shown).mean() < 8  # JPEG's loss, not a sideways picture (that would be ~100)
    x = load_image(tmp_path / "rot.jpg", 48, 32)  # the model's input: the same orientation
    assert np.abs(x.transpose(1, 2, 0) * 255 - shown).mean() < 8


def test_read_rgb_scales_a_16bit_png(tmp_path):
    from PIL import Image

    from edgemerge.contracts.images import read_rgb

    a = np.linspace(0, 32767, 32 * 48).reshape(32, 48).astype(np.uint16)  # at most half of 16-bit white
    Image.fromarray(a).save(tmp_path / "g16.png")
    pic = np.asarray(read_rgb(tmp_path / "g16.png"))
    assert pic.shape == (32, 48, 3) and pic.dtype == np.uint8
    np.testing.assert_allclose(pic[..., 0], a / 65535 * 255, atol=0.6)  # not clipped to a white frame


def test_show_draws_on_the_upright_picture(tmp_path):
    _exif_rotated_jpeg(tmp_path / "rot.jpg")
    res = run_cli("show", "-m", "vit-t", "-v", "tome", "-r", "64x64", "--image", tmp_path / "rot.jpg",
                  "--no-caption", "--out", tmp_path / "m.png")
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(tmp_path / "m.png") as im:
        assert im.size == (32, 48)  # (W, H) as shown, not the stored 48x32
