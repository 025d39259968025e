"""Learned merge metrics on the CamVid Segformer-B0: train on some val frames, measure on others.

    python benchmarks/learned_metric_camvid.py --out /tmp/lm-camvid
    python benchmarks/learned_metric_camvid.py --out /tmp/lm-camvid --train-variants fast-lm --epochs 1
    python benchmarks/learned_metric_camvid.py --out /tmp/lm-labels --train-variants fast-lm --labels

The 101 CamVid val frames are one sequence (0016E5); the first --train-frames train the metric
(`edgemerge.train.train_metric`: distillation against the unmerged model; with --labels also the
training frames' labels), the
last --test-frames are held out (a gap of frames between the two keeps near-duplicates apart) and
are never trained on. On the held-out frames, each variant runs as the merged PyTorch model
(`build_reference`, hard merging, as exported): ground-truth mIoU over the 11 classes (void
ignored, logits upsampled to 360x480) and pixel agreement with the unmerged model. GFLOPs are
those of the 11-class model, head folded; "work removed" is unmerged minus merged GFLOPs.
Training runs are resumable (their folders under --out); results go to --out/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_camvid import confusion, predict, scores  # noqa: E402

from edgemerge.reference import build_reference  # noqa: E402
from edgemerge.images import list_images, load_image, normalize  # noqa: E402
from edgemerge.merge.flops import gflops  # noqa: E402
from edgemerge.models import get_config  # noqa: E402
from edgemerge.models.registry import configure  # noqa: E402
from edgemerge.train import TrainOptions, train_metric  # noqa: E402

MODEL = "segformer-b0"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def _link_frames(frames: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in frames:
        if not (folder / f.name).exists():
            os.symlink(f, folder / f.name)
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", default=str(SHARED / "weights/segformer-b0-camvid"))
    ap.add_argument("--data", default=str(SHARED / "data/camvid"))
    ap.add_argument("--resolution", default="384x512")
    ap.add_argument("--train-frames", type=int, default=45)
    ap.add_argument("--test-frames", type=int, default=46)
    ap.add_argument("--train-variants", default="fast-lm,hq-lm,fast-pa-lm")
    ap.add_argument("--eval-variants", default="none,hq,fast,hq-pa,fast-pa")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--labels", action="store_true", help="also train on the training frames' labels (task loss)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    H, W = (int(v) for v in args.resolution.split("x"))
    out = Path(args.out)
    frames = list_images(Path(args.data) / "val")
    train, test = frames[: args.train_frames], frames[len(frames) - args.test_frames:]
    assert not set(train) & set(test), "train and held-out frames overlap"
    train_dir = _link_frames(train, out / "train_frames")
    label_dir = _link_frames([Path(args.data) / "valannot" / f.name for f in train], out / "train_labels")
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results["split"] = {"train": [f.name for f in train], "test": [f.name for f in test]}

    checkpoints: dict[str, str] = {}
    for v in [v for v in args.train_variants.split(",") if v]:
        t0 = time.perf_counter()
        record = train_metric(TrainOptions(model=MODEL, variant=v, checkpoint=args.weights, images=str(train_dir),
                                           labels=str(label_dir) if args.labels else None,
                                           out=str(out / f"train-{v}"), epochs=args.epochs, batch=args.batch,
                                           lr=args.lr, resolution=(H, W), seed=0),
                              progress=lambda s, n, loss, v=v: print(f"  {v} step {s}/{n} loss {loss:.4f}",
                                                                     file=sys.stderr, flush=True))
        checkpoints[v] = str(out / f"train-{v}" / "checkpoint.pth")
        results.setdefault("training", {})[v] = {
            "steps": record["steps"], "train_seconds": record["train_seconds"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "eval_before": record["eval_before"], "eval_after": record["eval_after"],
            "picked_mass_last_step": record["picked_mass_last_step"]}

    cfg = get_config(MODEL)
    images = [torch.from_numpy(normalize(load_image(f, H, W)[None], cfg.mean, cfg.std)) for f in test]
    labels = [np.asarray(Image.open(Path(args.data) / "valannot" / f.name), np.uint8) for f in test]
    variants = [v for v in args.eval_variants.split(",") if v] + list(checkpoints)
    preds: dict[str, list[np.ndarray]] = {}
    for v in variants:
        model, _, _ = build_reference(MODEL, v, checkpoint=checkpoints.get(v, args.weights), resolution=(H, W))
        conf = np.zeros((11, 11), np.int64)
        preds[v] = []
        with torch.inference_mode():
            for x, lab in zip(images, labels):
                p = predict(model(x), lab.shape)
                preds[v].append(p)
                conf += confusion(p, lab)
        s = scores(conf)
        results.setdefault("eval", {})[v] = {"miou": s["miou"], "pixel_acc": s["pixel_acc"],
                                             "gflops": gflops(configure(MODEL, num_classes=11), v, (H, W))}
        print(f"  {v}: mIoU {s['miou'] * 100:.2f}", file=sys.stderr, flush=True)
    for v in variants:
        results["eval"][v]["agreement"] = float(np.mean([np.mean(a == b) for a, b in zip(preds[v], preds["none"])]))
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2))
    base = results["eval"]["none"]["miou"]
    print(f"| variant | GFLOPs (ratio) | work removed | mIoU ({len(test)} held-out frames, {H}x{W}) | vs none "
          "| agreement with none |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        e, g = results["eval"][v], results["eval"][v]["gflops"]
        print(f"| {v} | {g['merged']:.2f} ({g['ratio']:.2f}x) | {g['unmerged'] - g['merged']:.2f} | "
              f"{e['miou'] * 100:.2f} | {(e['miou'] - base) * 100:+.2f} | {e['agreement'] * 100:.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
