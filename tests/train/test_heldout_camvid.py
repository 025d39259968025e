"""Does training the metric lower what the deployed model loses on frames it never saw, and is
that learning?

The smallest setting tried where the deployed KL falls on unseen frames: the CamVid Segformer-B0 of
../shared (skipped when absent), `fast-lm` at 256x256, the metric trained on 16 frames of the
sequence 0006R0 (8 steps of 4, lr 1e-3, seed 0) and judged on 8 frames of the sequence 0016E5,
which neither the model nor the metric trained on. The deployed (hard-merging) KL to the unmerged
model falls 0.02614 -> 0.02393 (-8.5%; seeds 1, 2: -4.7%, -2.8%), and the same change of the metric
with its entries shuffled (same size, placement lost) does not lower it (0.02623, 0.02593): the
first test. It fails with no training (lr 0: after == before). But the KL falls about as much
without learning anything: one step instead of 8 gave 0.02400, and the 8 steps climbing the loss
(AdamW maximize) 0.02280, below the trained 0.02393. The second test asserts that descent beats
ascent; it does not hold today, so it is a strict xfail: XPASS (a failure) the day training learns
something that holds on another sequence. On random-weight models and generated images no setting
tried lowered the held-out hard KL reliably (ViT-T dtem, Segformer-B0 fast-lm / hq-lm, 3-6 seeds
each: from -93% to +67%).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgemerge.train.metric import TrainOptions, train_metric
from edgemerge.train.metric import distillation_loss

SHARED = Path(__file__).resolve().parents[3] / "shared"
WEIGHTS = SHARED / "weights" / "segformer-b0-camvid"
CAMVID = SHARED / "data" / "camvid"
RES = (256, 256)

pytestmark = pytest.mark.skipif(not (WEIGHTS.is_dir() and (CAMVID / "val").is_dir()
                                     and (CAMVID / "train-0006R0").is_dir()),
                                reason="needs ../shared's CamVid frames and Segformer-B0 weights")


def _subset(src: Path, every: int, n: int, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in sorted(src.glob("*.png"))[::every][:n]:
        os.symlink(f, folder / f.name)
    return folder


def shuffled_control(checkpoint: Path, out: Path, seed: int = 0) -> Path:
    """The trained metrics' change from the identity, entries shuffled within each tensor."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(seed)
    for k in [k for k in blob["state_dict"] if ".dtem_metric." in k]:
        w = blob["state_dict"][k]
        start = torch.eye(w.shape[0], dtype=w.dtype) if w.ndim == 2 else torch.zeros_like(w)
        delta = (w - start).flatten()
        blob["state_dict"][k] = start + delta[torch.randperm(delta.numel(), generator=g)].view_as(w)
    torch.save(blob, out)
    return out


def deployed_kl(checkpoint: Path, files: list[str]) -> float:
    """KL(unmerged || fast-lm) of the models export builds from `checkpoint`, on `files`."""
    from edgemerge.contracts.images import load_image, normalize
    from edgemerge.models.registry import get_config
    from edgemerge.merge.reference import build_reference

    cfg = get_config("segformer-b0")
    x = torch.from_numpy(normalize(np.stack([load_image(f, *RES) for f in files]), cfg.mean, cfg.std))
    merged, _, _ = build_reference("segformer-b0", "fast-lm", checkpoint=str(checkpoint), resolution=RES)
    plain, _, _ = build_reference("segformer-b0", "none", checkpoint=str(WEIGHTS), resolution=RES)
    with torch.no_grad():
        return float(distillation_loss(merged(x), plain(x)))


def _train(tmp_path: Path, **kw) -> dict:
    train = _subset(CAMVID / "train-0006R0", 3, 16, tmp_path / "train")
    judge = _subset(CAMVID / "val", 12, 8, tmp_path / "judge")
    record = train_metric(TrainOptions(model="segformer-b0", variant="fast-lm", checkpoint=str(WEIGHTS),
                                       images=str(train), eval_images=str(judge), out=str(tmp_path / "run"),
                                       steps=8, batch=4, lr=1e-3, resolution=RES, seed=0, **kw))
    assert all("0006R0" in Path(f).name for f in record["train_files"])
    assert all("0016E5" in Path(f).name for f in record["eval_files"]) and record["eval_images"] == 8
    return record


@pytest.mark.slow
def test_training_lowers_the_deployed_kl_on_another_sequence_more_than_a_shuffled_change(tmp_path):
    record = _train(tmp_path)
    before, after = record["eval_before"]["hard_kl"], record["eval_after"]["hard_kl"]
    control = deployed_kl(shuffled_control(tmp_path / "run" / "checkpoint.pth", tmp_path / "control.pth"),
                          record["eval_files"])
    assert after < 0.97 * before and after < 0.97 * control, (before, after, control)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: climbing the loss lowers the held-out KL as much as training does "
                                       "(module docstring)")
def test_descent_beats_ascent_on_another_sequence(tmp_path):
    trained = _train(tmp_path / "descent")["eval_after"]["hard_kl"]
    climbed = _train(tmp_path / "ascent", ascend=True)["eval_after"]["hard_kl"]
    assert trained < 0.97 * climbed, (trained, climbed)
