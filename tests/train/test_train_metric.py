"""`edgemerge train-metric` on a random ViT-T and generated images: it judges on images it did
not train on (a seeded held-out split, or --eval-images), the recorded hard KL is the deployed
model's, only the metric learns, an interrupted run resumes to the same result, the output
exports. Whether training lowers the deployed KL on unseen images: tests/train/test_heldout_camvid.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgemerge.cli import main
from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle
from edgemerge.merge.reference import _randomize_norm_stats, build_reference
from edgemerge.contracts.images import synthetic_images
from edgemerge.merge.plan import get_plan
from edgemerge.models.registry import build_model
from edgemerge.models.checkpoint import load_checkpoint
from edgemerge.train.metric import TrainOptions, train_metric
from edgemerge.merge.families.vit import _metrics_from
from edgemerge.train.metric import distillation_loss
from edgemerge.merge.soft import SoftStats
from edgemerge.merge.families.vit import soft_vit_forward

RES = (64, 64)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A random vit-t whose class scores are far from uniform, and 12 generated scene images."""
    d = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    model = build_model("vit-t", resolution=RES)
    _randomize_norm_stats(model, 0)
    model.head.weight.data *= 30
    torch.save(model.state_dict(), d / "vit-t.pth")
    (d / "img").mkdir()
    for i, im in enumerate(synthetic_images(12, *RES, seed=1)):
        Image.fromarray((im.transpose(1, 2, 0) * 255).astype(np.uint8)).save(d / "img" / f"{i:02d}.png")
    return d


def _opts(data, out, **kw) -> TrainOptions:
    base = dict(model="vit-t", variant="dtem", checkpoint=str(data / "vit-t.pth"), images=str(data / "img"),
                out=str(out), steps=8, batch=4, lr=1e-3, resolution=RES)
    return TrainOptions(**{**base, **kw})


def _kl_of_deployed(checkpoint, variant, files) -> float:
    """KL(unmerged || merged) of the hard-merging model built from `checkpoint`, as export builds it."""
    from edgemerge.contracts.images import load_image, normalize
    from edgemerge.models.registry import get_config

    cfg = get_config("vit-t")
    x = torch.from_numpy(normalize(np.stack([load_image(f, *RES) for f in files]), cfg.mean, cfg.std))
    merged, _, _ = build_reference("vit-t", variant, checkpoint=str(checkpoint), resolution=RES)
    plain, _, _ = build_reference("vit-t", "none", checkpoint=str(checkpoint), resolution=RES)
    with torch.no_grad():
        return float(distillation_loss(merged(x), plain(x)))


def test_judges_on_a_heldout_split_records_the_deployed_kl_and_exports(data, tmp_path):
    res = CliRunner().invoke(main, ["train-metric", "-m", "vit-t", "-c", str(data / "vit-t.pth"), "-i",
                                    str(data / "img"), "-o", str(tmp_path / "run"), "--steps", "8", "--batch", "4",
                                    "--lr", "1e-3", "-r", "64x64"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "run" / "train_record.json").read_text())
    train, judged = record["train_files"], record["eval_files"]
    assert len(train) == 10 and len(judged) == 2 and not set(train) & set(judged)  # 20% of 12 held out
    assert sorted(train + judged) == sorted(str(p) for p in (data / "img").iterdir())
    assert "held-out split" in record["eval_source"] and "seed 0" in record["eval_source"]
    assert "judged on 2 images it did not train on" in res.output and "deployed (hard merging)" in res.output
    # the recorded hard KL is the exported model's on the judged images, not some other number
    after = _kl_of_deployed(tmp_path / "run" / "checkpoint.pth", "dtem", [Path(f) for f in judged])
    assert abs(record["eval_after"]["hard_kl"] - after) <= 1e-5 * after
    assert record["eval_before"]["hard_kl"] != record["eval_after"]["hard_kl"]  # the metric moved decisions
    assert record["steps"] == 8 and len(record["losses"]) == 8 and record["optimizer"]["name"] == "AdamW"
    _, info = load_checkpoint("vit-t", tmp_path / "run" / "checkpoint.pth", resolution=RES)
    assert len(info.merge_state) == 24
    m = export_bundle(ExportOptions("vit-t", "dtem", checkpoint=str(tmp_path / "run" / "checkpoint.pth"),
                                    resolution=RES, out=str(tmp_path / "bundle")))
    assert m["self_check"]["passed"]


def test_split_is_seeded(data, tmp_path):
    a = train_metric(_opts(data, tmp_path / "a", steps=1, holdout=0.25))
    b = train_metric(_opts(data, tmp_path / "b", steps=1, holdout=0.25))
    c = train_metric(_opts(data, tmp_path / "c", steps=1, holdout=0.25, seed=1))
    assert a["eval_files"] == b["eval_files"] and len(a["eval_files"]) == 3
    assert a["eval_files"] != c["eval_files"]


def test_eval_images_folder(data, tmp_path):
    """--eval-images judges on that folder; a file with a training image's content is refused."""
    ev = tmp_path / "ev"
    ev.mkdir()
    for i, im in enumerate(synthetic_images(3, *RES, seed=7)):
        Image.fromarray((im.transpose(1, 2, 0) * 255).astype(np.uint8)).save(ev / f"e{i}.png")
    rec = train_metric(_opts(data, tmp_path / "run", steps=1, eval_images=str(ev)))
    assert rec["train_images"] == 12 and rec["eval_images"] == 3 and rec["eval_source"] == f"--eval-images {ev}"
    shutil.copy(data / "img" / "03.png", ev / "copy.png")
    res = CliRunner().invoke(main, ["train-metric", "-m", "vit-t", "-c", str(data / "vit-t.pth"), "-i",
                                    str(data / "img"), "--eval-images", str(ev), "-o", str(tmp_path / "x"),
                                    "--steps", "1", "-r", "64x64"])
    assert res.exit_code == 2 and "copy.png is the same image as training image" in res.output


def test_only_the_metric_learns(data):
    model, _ = load_checkpoint("vit-t", data / "vit-t.pth", resolution=RES)
    model.requires_grad_(False)
    metrics = _metrics_from(model, get_plan("vit-t", "dtem"), {})
    x = torch.randn(2, 3, *RES)
    with torch.no_grad():
        teacher = model(x)
    stats = SoftStats()
    distillation_loss(soft_vit_forward(model, metrics, x, 13, stats=stats), teacher).backward()
    assert all(p.grad is None for p in model.parameters())
    sites = len(stats.counts)  # 17 tokens: blocks 0-3 merge 8, 4, 2, 1; later blocks have nothing to merge
    assert sites == 4
    for i, m in enumerate(metrics):
        grads = [p.grad for p in m.parameters()]
        if i < sites:
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            # block 3 merges its one source into its one destination: nothing to choose, no gradient
            assert (sum(float(g.abs().sum()) for g in grads) > 0) == (i < 3)
        else:
            assert all(g is None for g in grads)


def test_interrupted_run_resumes_to_the_same_metric(data, tmp_path):
    train_metric(_opts(data, tmp_path / "whole"))

    def stop_at_5(step, total, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_metric(_opts(data, tmp_path / "cut", save_every=2), progress=stop_at_5)
    state = torch.load(tmp_path / "cut" / "train_state.pth", weights_only=True)
    assert state["step"] == 4
    resumed = train_metric(_opts(data, tmp_path / "cut", save_every=2))
    whole = json.loads((tmp_path / "whole" / "train_record.json").read_text())
    assert resumed["losses"] == whole["losses"]
    a = torch.load(tmp_path / "whole" / "checkpoint.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_is_one_line_exit_2(data, tmp_path):
    train_metric(_opts(data, tmp_path / "run", steps=1))
    cases = [
        ["-v", "tome", "-o", str(tmp_path / "x")],  # no learned metric in that variant
        ["-o", str(tmp_path / "run"), "--lr", "5e-4"],  # the folder holds a run with other options
        ["-o", str(tmp_path / "y"), "--steps", "0"],
        ["-o", str(tmp_path / "z"), "--holdout", "1"],
    ]
    for extra in cases:
        res = CliRunner().invoke(main, ["train-metric", "-m", "vit-t", "-c", str(data / "vit-t.pth"), "-i",
                                        str(data / "img"), "-r", "64x64", "--steps", "1", *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert len([ln for ln in res.output.splitlines() if ln.startswith("edgemerge: error:")]) == 1
