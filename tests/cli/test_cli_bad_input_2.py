"""What a new user hits, round two (issue 21): inputs that are not what they claim (FIFOs, devices,
16-bit and EXIF-rotated images, 1x1 images, a bad last image), labels, checkpoints, plan files and
the environment. Every refusal: exit code 2, one line on stderr, no traceback, nothing left behind,
before the work. No model is exported here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edgemerge.merge.calibrate as calibrate_mod
import edgemerge.merge.plan as plan_mod
import edgemerge.show.merges as show_mod
from cli_helpers import one_line_error, refuse_work, run_cli, tree
from edgemerge.contracts.errors import EdgemergeError

REPO = Path(__file__).resolve().parents[2]
EDGEMERGE = [sys.executable, "-m", "edgemerge.cli"]


def _png(path: Path, h: int = 32, w: int = 48, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def no_calibration(monkeypatch):
    refuse_work(monkeypatch, calibrate_mod, "_load_model", "the calibration")


@pytest.fixture
def no_export(monkeypatch):
    import edgemerge.export.exporter as exporter

    refuse_work(monkeypatch, exporter, "torch_to_onnx", "the ONNX export")


# --- 1. inputs that are not what they claim ---------------------------------------------------

def test_calibrate_fifo_named_png_refused_not_hung(tmp_path, no_calibration):
    _png(tmp_path / "imgs" / "a.png")
    os.mkfifo(tmp_path / "imgs" / "b.png")
    before = tree(tmp_path)
    msg = one_line_error(run_cli("calibrate", "--model", "segmenter-vit-t", "--images", tmp_path / "imgs",
                                 "--out", tmp_path / "cal.json"))
    assert "b.png" in msg and "FIFO" in msg and "not a regular file" in msg
    assert tree(tmp_path) == before


def test_validate_folder_with_a_fifo_refused_not_hung(tmp_path):
    from edgemerge.validate.inputs import folder_inputs

    _png(tmp_path / "imgs" / "a.png")
    os.mkfifo(tmp_path / "imgs" / "b.png")
    manifest = {"resolution": [32, 32], "batch": 1, "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 19}
    with pytest.raises(EdgemergeError, match="b.png is a FIFO"):
        folder_inputs(manifest, tmp_path / "imgs")


@pytest.mark.parametrize("command", ["export", "calibrate"])
def test_checkpoint_fifo_refused_not_hung(tmp_path, no_calibration, no_export, command):
    os.mkfifo(tmp_path / "ck.pth")
    _png(tmp_path / "imgs" / "a.png")
    before = tree(tmp_path)
    args = (["export", "--model", "vit-t", "--out", tmp_path / "b"] if command == "export" else
            ["calibrate", "--model", "segmenter-vit-t", "--images", tmp_path / "imgs", "--out", tmp_path / "c.json"])
    msg = one_line_error(run_cli(*args, "--checkpoint", tmp_path / "ck.pth"))
    assert "ck.pth is a FIFO" in msg and "not a regular file" in msg
    assert tree(tmp_path) == before


@pytest.mark.parametrize("what", ["fifo", "/dev/zero", "missing"])
def test_show_image_that_is_not_a_regular_file(tmp_path, monkeypatch, what):
    refuse_work(monkeypatch, show_mod, "show_merges", "show")
    image = {"fifo": tmp_path / "x.png", "/dev/zero": Path("/dev/zero"), "missing": tmp_path / "nope.png"}[what]
    if what == "fifo":
        os.mkfifo(image)
    before = tree(tmp_path)
    msg = one_line_error(run_cli("show", "--model", "segformer-b0", "--variant", "fast", "--image", image,
                                 "--out", tmp_path / "m.png"))
    expected = {"fifo": "is a FIFO", "/dev/zero": "is a character device", "missing": "image not found"}[what]
    assert expected in msg and str(image) in msg
    assert tree(tmp_path) == before


def test_16bit_grayscale_is_scaled_not_white(tmp_path):
    from PIL import Image

    from edgemerge.contracts.images import load_image

    a = np.linspace(0, 32767, 32 * 48).reshape(32, 48).astype(np.uint16)  # at most half of 16-bit white
    Image.fromarray(a).save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png", 32, 48)
    assert x.shape == (3, 32, 48) and x.max() <= 0.51 and x.min() >= 0
    np.testing.assert_allclose(x[0], a / 65535, atol=1e-3)


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from edgemerge.contracts.images import image_size, load_image

    rgb = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    im.save(tmp_path / "rot.png", exif=exif)
    assert image_size(tmp_path / "rot.png") == (48, 32)
    shown = np.rot90(rgb, k=-1)  # what a viewer shows
    x = load_image(tmp_path / "rot.png", 48, 32)
    np.testing.assert_allclose(x.transpose(1, 2, 0), shown / 255.0, atol=1e-6)


@pytest.mark.parametrize("command", ["calibrate", "show"])
def test_one_pixel_image_refused_naming_it(tmp_path, monkeypatch, no_calibration, command):
    refuse_work(monkeypatch, show_mod, "show_merges", "show")
    tiny = _png(tmp_path / "imgs" / "tiny.png", 1, 1)
    before = tree(tmp_path)
    args = (["calibrate", "--model", "segmenter-vit-t", "--images", tmp_path / "imgs", "--out", tmp_path / "c.json"]
            if command == "calibrate" else
            ["show", "--model", "segformer-b0", "--variant", "fast", "--image", tiny, "--out", tmp_path / "m.png"])
    msg = one_line_error(run_cli(*args))
    assert "tiny.png" in msg and "1x1" in msg and "at least 16x16" in msg
    assert tree(tmp_path) == before


def test_calibrate_checks_every_image_before_the_work(tmp_path, no_calibration):
    for i in range(3):
        _png(tmp_path / "imgs" / f"{i}.png", seed=i)
    good = (tmp_path / "imgs" / "0.png").read_bytes()
    (tmp_path / "imgs" / "z_last.png").write_bytes(good[: len(good) // 2])  # truncated
    before = tree(tmp_path)
    msg = one_line_error(run_cli("calibrate", "--model", "segmenter-vit-t", "--images", tmp_path / "imgs",
                                 "--out", tmp_path / "c.json"))
    assert "z_last.png" in msg
    assert tree(tmp_path) == before


# --- 2. labels ---------------------------------------------------------------------------------

def _frames_and_labels(tmp_path, label_values, suffix=".png"):
    from PIL import Image

    _png(tmp_path / "imgs" / "f0.png")
    (tmp_path / "labels").mkdir()
    lab = np.zeros((32, 48), np.uint8)
    for i, v in enumerate(label_values):
        lab[i, :] = v
    Image.fromarray(lab).save(tmp_path / "labels" / f"f0{suffix}")
    return {"resolution": [32, 48], "batch": 1, "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 19}


def test_label_ids_beyond_the_classes_refused(tmp_path):
    from edgemerge.validate.inputs import folder_inputs

    manifest = _frames_and_labels(tmp_path, [3, 19, 200, 255])  # 255 is ignore: fine
    with pytest.raises(EdgemergeError) as e:
        folder_inputs(manifest, tmp_path / "imgs", tmp_path / "labels")
    msg = str(e.value)
    assert "f0.png" in msg and "19, 200" in msg and "0..18" in msg and "\n" not in msg


def test_jpeg_labels_refused(tmp_path):
    from edgemerge.validate.inputs import folder_inputs

    manifest = _frames_and_labels(tmp_path, [1, 2], suffix=".jpg")
    with pytest.raises(EdgemergeError, match="f0.jpg is a JPEG.*lossy"):
        folder_inputs(manifest, tmp_path / "imgs", tmp_path / "labels")


def test_jpeg_content_named_png_refused_as_label(tmp_path):
    from PIL import Image

    from edgemerge.contracts.labels import check_label_files

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "l.png", format="JPEG")
    with pytest.raises(EdgemergeError, match="is a JPEG"):
        check_label_files([tmp_path / "l.png"])


# --- 3. checkpoints ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit_t_state():
    from edgemerge.models.registry import build_model

    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_model("vit-t").state_dict().items()}


def _export_refused(tmp_path, *args, loaded: bool = True) -> str:
    """The refusal of an export; `loaded`: the checkpoint was read (after the 'building the PyTorch
    model' progress line, before the export itself)."""
    before = tree(tmp_path)
    msg = one_line_error(run_cli("export", "--model", "vit-t", "--out", tmp_path / "bundle", *args), after_work=loaded)
    assert tree(tmp_path) == before
    return msg


def test_nan_weights_refused_with_the_tensor_name(tmp_path, vit_t_state, no_export):
    sd = dict(vit_t_state)
    sd["blocks.3.mlp.fc1.weight"] = sd["blocks.3.mlp.fc1.weight"].clone()
    sd["blocks.3.mlp.fc1.weight"][0, 0] = float("inf")
    torch.save(sd, tmp_path / "inf.pth")
    msg = _export_refused(tmp_path, "--checkpoint", tmp_path / "inf.pth")
    assert "blocks.3.mlp.fc1.weight" in msg and "Inf" in msg


@pytest.mark.parametrize("classes", [0, 1])
def test_head_with_fewer_than_two_classes_refused(tmp_path, vit_t_state, no_export, classes):
    sd = dict(vit_t_state)
    sd["head.weight"], sd["head.bias"] = sd["head.weight"][:classes].clone(), sd["head.bias"][:classes].clone()
    torch.save(sd, tmp_path / "ck.pth")
    msg = _export_refused(tmp_path, "--checkpoint", tmp_path / "ck.pth")
    assert f"has {classes} class" in msg and "at least 2" in msg


def test_num_classes_one_refused_up_front(tmp_path, no_export):
    msg = _export_refused(tmp_path, "--num-classes", "1", loaded=False)
    assert "--num-classes" in msg and "at least 2 classes" in msg


def test_int8_weights_refused_with_name_and_dtype(tmp_path, vit_t_state, no_export):
    sd = dict(vit_t_state)
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"].to(torch.int8)
    torch.save(sd, tmp_path / "q.pth")
    msg = _export_refused(tmp_path, "--checkpoint", tmp_path / "q.pth")
    assert "blocks.0.attn.qkv.weight" in msg and "int8" in msg and "float32" in msg


def test_pickled_whole_model_gets_the_state_dict_hint(tmp_path, no_export):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")
    msg = _export_refused(tmp_path, "--checkpoint", tmp_path / "whole.pth")
    assert "state_dict()" in msg and "torch.nn.modules.linear.Linear" in msg


def test_junk_checkpoint_says_what_formats_are_read(tmp_path, no_export):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    msg = _export_refused(tmp_path, "--checkpoint", tmp_path / "junk.safetensors", loaded=False)
    assert "neither a safetensors file nor a torch.save file" in msg


def test_format_sniffed_from_content_not_suffix(tmp_path, vit_t_state):
    from safetensors.torch import save_file

    from edgemerge.models.checkpoint import load_checkpoint, sniff_format

    save_file({k: v.contiguous() for k, v in vit_t_state.items()}, str(tmp_path / "st.pth"))
    torch.save(vit_t_state, tmp_path / "torch.safetensors")
    assert sniff_format(tmp_path / "st.pth") == "safetensors"
    assert sniff_format(tmp_path / "torch.safetensors") == "zip"
    model, info = load_checkpoint("vit-t", tmp_path / "torch.safetensors")
    assert info.format == "timm" and torch.equal(model.state_dict()["head.weight"], vit_t_state["head.weight"])


# --- 4. plan files -----------------------------------------------------------------------------

SEGFORMER_BAD = [
    ('kv = { ratio = 0.6, grid = [2, 2], stages = [1, 2]', "TOML syntax error"),
    ('kv = { ratio = 1.5, grid = [2, 2], stages = [1, 2] }', "variants.x.kv.ratio = 1.5: allowed: a number >= 0 and < 1"),
    ('kv = { ratio = -0.1, grid = [2, 2], stages = [1, 2] }', "variants.x.kv.ratio = -0.1: allowed"),
    ('kv = { grid = [2, 2], stages = [1, 2] }', "variants.x.kv: missing key 'ratio'"),
    ('kv = { ratio = 0.6, grid = [0, 0], stages = [1, 2] }', "variants.x.kv.grid = [0, 0]: allowed"),
    ('kv = { ratio = 0.6, grid = [2, 2], stages = [1, 7] }', "variants.x.kv.stages = [1, 7]: allowed: a non-empty list of distinct stages 1..4"),
    ('proportonal = true', "unknown key 'proportonal' (did you mean 'proportional'?); allowed: kv, q, q_pool, ffn, proportional, metric"),
    ('metric = "learnd"', "variants.x.metric = 'learnd': allowed: one of 'tokens', 'learned'"),
]
VIT_BAD = [("r = -5", "variants.x.r = -5: allowed: an integer 0..98"),
           ("r = 100000", "variants.x.r = 100000: allowed: an integer 0..98"),
           ('r = 13\nmetric = "dtm"', "allowed: one of 'keys', 'dtem'")]


@pytest.mark.parametrize("model,body,expected", [("segformer-b0", b, e) for b, e in SEGFORMER_BAD]
                         + [("vit-b", b, e) for b, e in VIT_BAD])
def test_plan_file_checked_against_the_schema(tmp_path, monkeypatch, model, body, expected):
    monkeypatch.setattr(plan_mod, "config_dir", lambda: tmp_path)
    path = tmp_path / f"{model}.toml"
    path.write_text(f'model = "{model}"\n\n[variants.none]\n\n[variants.x]\n{body}\n')
    msg = one_line_error(run_cli("plan", "--model", model, "--variant", "x"))
    assert str(path) in msg and expected in msg


def test_plan_schema_keys_come_from_the_dataclasses():
    import dataclasses

    from edgemerge.merge.plan import SegformerPlan, _check_fields, _toml_key
    from edgemerge.models.registry import get_config

    keys = [_toml_key(f) for f in dataclasses.fields(SegformerPlan)]
    with pytest.raises(EdgemergeError) as e:
        _check_fields(SegformerPlan, {"nope": 1}, "here", get_config("segformer-b0"))
    assert f"allowed: {', '.join(keys)}" in str(e.value)


def test_every_shipped_plan_file_passes_the_schema():
    from edgemerge.merge.plan import get_plan, load_variants

    for path in sorted(plan_mod.config_dir().glob("*.toml")):
        for variant in load_variants(path.stem):
            get_plan(path.stem, variant)


# --- 5. environment and outputs ----------------------------------------------------------------

def _run(args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"{sys.executable} -m edgemerge.cli {args}"], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=REPO, timeout=120)


def test_ascii_only_stdout_does_not_crash_plan():
    p = _run("plan --model segformer-b0 --variant fast", PYTHONIOENCODING="ascii")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "GFLOPs" in p.stdout


def test_closed_stdout_is_an_error_not_silence():
    p = _run("plan --model segformer-b0 --variant fast >&-")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgemerge: error: standard output is closed"), p.stderr


def test_output_not_cut_at_80_columns_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    res = run_cli("plan", "--model", "segformer-b0", "--variant", "xfast-ffn-pa")
    assert res.exit_code == 0, res.output
    assert "…" not in res.output and "ffn kept" in res.output


def test_bench_threads_beyond_the_cores_warned(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    res = run_cli("bench", tmp_path / "missing", "--threads", 1000)
    one_line_error(res, after_work=True)  # the missing artifact, after the warning
    warning = res.stderr.splitlines()[0]
    assert warning.startswith("edgemerge: warning: --threads 1000") and "2 CPU cores" in warning


@pytest.mark.parametrize("target", ["dir", "model.onnx"])
def test_bench_plugins_without_an_engine_refused(tmp_path, target):
    b = tmp_path / "bundle"
    b.mkdir()
    (tmp_path / "lib.so").write_bytes(b"")
    before = tree(tmp_path)
    msg = one_line_error(run_cli("bench", b if target == "dir" else b / target, "--plugins", tmp_path / "lib.so"))
    assert "--plugins" in msg and "onnxruntime" in msg and "model.plan" in msg
    assert tree(tmp_path) == before


def test_default_outputs_are_git_ignored():
    names = ["segformer-b0-fast/", "segformer-b5-fast-fp16-1024x1024/", "vit-b-tome/", "deit-s-dtem-b4/",
             "segmenter-vit-s-algm-native/", "segmenter-vit-s-calibration.json", "merges.png", "merges_site3.png"]
    p = subprocess.run(["git", "check-ignore", "--no-index", *names], capture_output=True, text=True, cwd=REPO)
    if p.returncode == 128:
        pytest.skip(f"git cannot check here: {p.stderr.strip()}")
    assert sorted(p.stdout.split()) == sorted(names)
    kept = subprocess.run(["git", "check-ignore", "--no-index", "export_configs/", "edgemerge/", "tests/"],
                          capture_output=True, text=True, cwd=REPO)
    assert kept.stdout == ""


def test_export_checkpoint_help_names_every_format():
    out = " ".join(run_cli("export", "--help").output.split())
    assert ".safetensors" in out and ".pth.tar" in out and "Hugging Face" in out
