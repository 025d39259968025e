"""`edgemerge calibrate`: per-image ALGM fractions from adaptive mode, their quantile, atomic JSON,
and `edgemerge plan --calibration` turning them into static counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgemerge.cli import main
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.images import load_image, normalize, synthetic_images
from edgemerge.merge.patch import apply_merging
from edgemerge.merge import core
from edgemerge.merge.plan import get_plan
from edgemerge.merge.calibrate import _quantile, calibrate, record_merges
from edgemerge.merge.plan import algm_global_count, algm_local_count
from edgemerge.models.registry import build_model, get_config

MODEL = "segmenter-vit-t"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, im in enumerate(synthetic_images(4, 64, 64, seed=3)):
        Image.fromarray((im.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    # one image of flat 32x32 blocks: whole 2x2 patch windows of one colour
    flat = np.kron(np.random.default_rng(0).uniform(0, 255, (2, 2, 3)), np.ones((32, 32, 1))).astype(np.uint8)
    Image.fromarray(flat).save(folder / "flat.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _run(*args):
    return CliRunner().invoke(main, ["calibrate", *args])


def test_cli_writes_the_calibration(image_dir, tmp_path):
    out = tmp_path / "cal" / "algm.json"
    res = _run("--model", MODEL, "--images", str(image_dir), "--resolution", "64x64", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "local" in res.output and "global" in res.output  # the distribution table
    cal = json.loads(out.read_text())
    assert cal["model"] == MODEL and cal["resolution"] == [64, 64] and cal["quantile"] == 0.5
    assert cal["images"] == 5 and len(cal["per_image"]) == 5
    assert [p["image"] for p in cal["per_image"]] == ["flat.png", "img0.png", "img1.png", "img2.png", "img3.png"]
    for p in cal["per_image"]:
        assert p["local_windows"] == 4 and 0 <= p["local_k"] <= 4
        assert p["local_fraction"] == p["local_k"] / 4
        assert p["global_fraction"] == p["global_r"] / p["global_sources"]
        # global sources: (tokens after the local step + 1) // 2 - CLS
        assert p["global_sources"] == (17 - 3 * p["local_k"] + 1) // 2 - 1
    for site in ("local", "global"):
        median = float(np.median([p[f"{site}_fraction"] for p in cal["per_image"]]))
        assert cal[f"{site}_fraction"] == pytest.approx(median, abs=1e-8)
        assert cal[f"{site}_fraction"] >= median
    assert [p.name for p in out.parent.iterdir()] == ["algm.json"]  # no temp file left behind


def test_per_image_counts_are_what_the_adaptive_model_merges(image_dir):
    cal = calibrate(MODEL, image_dir, resolution=(64, 64), quantile=0.0)
    torch.manual_seed(0)
    model = build_model(MODEL, resolution=(64, 64))
    apply_merging(model, get_plan(MODEL, "algm", mode="adaptive"))
    cfg = get_config(MODEL)
    for p in cal["per_image"]:
        x = torch.from_numpy(normalize(load_image(image_dir / p["image"], 64, 64)[None], cfg.mean, cfg.std))
        with torch.inference_mode():
            tokens, state = model.encoder.forward_features(x)
        assert tokens.shape[1] == 17 - 3 * p["local_k"] - p["global_r"]
    assert cal["local_fraction"] == pytest.approx(min(p["local_fraction"] for p in cal["per_image"]), abs=1e-8)
    assert cal["global_fraction"] == pytest.approx(min(p["global_fraction"] for p in cal["per_image"]), abs=1e-8)
    top = calibrate(MODEL, image_dir, resolution=(64, 64), quantile=1.0)
    assert top["global_fraction"] == pytest.approx(max(p["global_fraction"] for p in cal["per_image"]), abs=1e-8)


def test_plan_reflects_the_calibration(image_dir, tmp_path):
    out = tmp_path / "cal.json"
    res = _run("-m", MODEL, "-i", str(image_dir), "-r", "64x64", "-q", "1.0", "-o", str(out))
    assert res.exit_code == 0, res.output
    cal = json.loads(out.read_text())
    res = CliRunner().invoke(main, ["plan", "-m", MODEL, "-v", "algm", "-r", "64x64", "--calibration", str(out), "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["plan"]["local_fraction"] == cal["local_fraction"]
    assert plan["plan"]["global_fraction"] == cal["global_fraction"]
    k = algm_local_count(cal["local_fraction"], (4, 4))
    n = 17 - 3 * k
    r = algm_global_count(cal["global_fraction"], n, 1)
    # q=1: the static counts are the largest any image merged (the headroom keeps int() exact)
    assert k == max(p["local_k"] for p in cal["per_image"])
    if len({p["global_sources"] for p in cal["per_image"]}) == 1:
        assert r == max(p["global_r"] for p in cal["per_image"])
    assert plan["tokens_out"] == n - r
    default = json.loads(CliRunner().invoke(main, ["plan", "-m", MODEL, "-v", "algm", "-r", "64x64", "--json"]).output)
    assert default["plan"]["global_fraction"] == 0.10  # the toml's, without --calibration


def test_exact_fraction_survives_int():
    # 1 / 49 * 49 < 1 in binary floating point; the written fraction must give the count back
    assert int(1 / 49 * 49) == 0
    assert algm_global_count(_quantile([1 / 49], 0.5), 99, 1) == 1


@pytest.mark.parametrize("args,needle", [
    (["-m", "segformer-b0"], "segmenter"),
    (["-m", "vit-t"], "segmenter"),
    (["-m", MODEL, "-q", "1.5"], "quantile"),
    (["-m", MODEL, "-r", "60x60"], "multiples of 16"),
])
def test_bad_input_is_a_one_line_error(image_dir, args, needle):
    res = _run("--images", str(image_dir), *args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgemerge: error:") and needle in lines[0]


def test_no_images_is_a_one_line_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    for folder in (tmp_path, tmp_path / "missing"):
        res = _run("-m", MODEL, "--images", str(folder))
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and "images" in res.output
    with pytest.raises(EdgemergeError, match="no images"):
        calibrate(MODEL, tmp_path)


def test_record_merges_restores_core():
    before = (core.window_match, core.bipartite_match)
    with record_merges() as records:
        core.window_match(torch.randn(1, 17, 4), 4, 4, 1, 1)
        core.bipartite_match(torch.randn(1, 17, 4), 2, *core.alternating(17), 1)
    assert [(r.site, r.count, r.capacity) for r in records] == [("local", 1, 4), ("global", 2, 8)]
    assert (core.window_match, core.bipartite_match) == before
