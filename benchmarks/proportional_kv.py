"""Does proportional attention (log(size) on merged keys) help Segformer++ fidelity?

Segformer++ merges keys/values without it. This runs the real CamVid Segformer-B0 in PyTorch on
the CamVid validation frames, for each kv-merging variant with and without proportional
attention, and reports ground-truth mIoU and pixel agreement with the unmerged model.

    python benchmarks/proportional_kv.py [--frames N] [--resolution 384x512]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgemerge.contracts.images import list_images, load_image, normalize
from edgemerge.merge.patch import apply_merging
from edgemerge.merge.plan import get_plan
from edgemerge.models.checkpoint import load_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared"


def miou(pred: np.ndarray, label: np.ndarray, k: int) -> float:
    valid = label < k
    ious = []
    for c in range(k):
        inter = np.sum((pred == c) & (label == c) & valid)
        union = np.sum(((pred == c) | (label == c)) & valid)
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=101)
    ap.add_argument("--resolution", default="384x512")
    ap.add_argument("--weights", default=str(SHARED / "weights/segformer-b0-camvid"))
    ap.add_argument("--data", default=str(SHARED / "data/camvid"))
    args = ap.parse_args()
    H, W = (int(v) for v in args.resolution.split("x"))
    model, info = load_checkpoint("segformer-b0", args.weights, resolution=(H, W))
    cfg = model.config
    k = info.num_classes
    frames = list_images(Path(args.data) / "val")[: args.frames]
    variants = {"none": get_plan("segformer-b0", "none")}
    for v in ("hq", "fast"):
        p = get_plan("segformer-b0", v)
        variants[v] = p
        variants[f"{v}+prop"] = dataclasses.replace(p, proportional=True)
    preds = {name: [] for name in variants}
    labels = []
    torch.set_num_threads(2)
    for f in frames:
        img = load_image(f, H, W)
        label = load_image(Path(args.data) / "valannot" / f.name, 360, 480, labels=True)
        labels.append(label)
        x = torch.from_numpy(normalize(img[None], cfg.mean, cfg.std))
        for name, plan in variants.items():
            apply_merging(model, plan)
            with torch.inference_mode():
                logits = F.interpolate(model(x), size=label.shape, mode="bilinear", align_corners=False)
            preds[name].append(logits.argmax(1)[0].numpy())
    lab = np.stack(labels)
    base = np.stack(preds["none"])
    print(f"| variant | mIoU (CamVid val, {len(frames)} frames, {H}x{W}) | agreement with none |")
    print("|---|---|---|")
    for name in variants:
        p = np.stack(preds[name])
        print(f"| {name} | {miou(p, lab, k) * 100:.2f} | {np.mean(p == base) * 100:.2f}% |")


if __name__ == "__main__":
    main()
