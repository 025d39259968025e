"""Learned merge metrics on the CamVid Segformer-B0: train on one sequence, judge on another.

    python benchmarks/learned_metric_camvid.py --out /tmp/lm-camvid
    python benchmarks/learned_metric_camvid.py --out /tmp/lm-camvid --train-variants fast-lm --epochs 1
    python benchmarks/learned_metric_camvid.py --out /tmp/lm-labels --train-variants fast-lm --labels

The metric trains on the frames of --train-dir (default: camvid/train-0006R0, 51 frames of the
sequence 0006R0, which the Segformer-B0 also trained on: the frames a user has) and is judged on
those of --eval-dir (default: camvid/val, 101 frames of the sequence 0016E5, which neither the
model nor the metric saw). A frame whose content is in both folders is refused. Training:
`edgemerge.train.train_metric` (distillation against the unmerged model; with --labels also
cross-entropy against --train-dir's labels, DIR + "annot"), its own KL check on the judged
frames. On the judged frames, each variant runs as the merged PyTorch model (`build_reference`,
hard merging, as exported): ground-truth mIoU over the 11 classes (void ignored, logits
upsampled to 360x480; labels from --eval-dir + "annot") and pixel agreement with the unmerged
model, and the KL of its class scores to the unmerged model's (per pixel, at the model's output
resolution). A control for each trained metric, `V (shuffled)`: the trained metric's change from
the identity with its entries shuffled within each tensor (seeded): the same amount of change,
without what training put where; a learned metric that beats its control learned something.
GFLOPs are those of the 11-class model, head folded; "work removed" is unmerged minus merged
GFLOPs. Training runs are resumable (their folders under --out); results go to
--out/results.json, with the names of the frames that trained and that judged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_camvid import confusion, predict, scores  # noqa: E402

from edgemerge.merge.reference import build_reference  # noqa: E402
from edgemerge.contracts.images import list_images, load_image, normalize  # noqa: E402
from edgemerge.merge.flops import gflops  # noqa: E402
from edgemerge.models.registry import get_config
from edgemerge.models.registry import configure  # noqa: E402
from edgemerge.train.metric import TrainOptions, train_metric

MODEL = "segformer-b0"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def _shuffled_control(checkpoint: Path, folder: Path) -> str:
    """The trained metric's change from its start (identity weight, zero bias), entries shuffled
    within each tensor: as much change as training made, none of its placement."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sd = blob["state_dict"]
    g = torch.Generator().manual_seed(0)
    for k in [k for k in sd if ".dtem_metric." in k]:
        w = sd[k]
        start = torch.eye(w.shape[0], dtype=w.dtype) if w.ndim == 2 else torch.zeros_like(w)
        delta = (w - start).flatten()
        sd[k] = start + delta[torch.randperm(delta.numel(), generator=g)].view_as(w)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(blob, folder / "checkpoint.pth")
    return str(folder / "checkpoint.pth")


def _kl(student: torch.Tensor, teacher: torch.Tensor) -> float:
    s, t = torch.log_softmax(student.float(), 1), torch.log_softmax(teacher.float(), 1)
    return float((t.exp() * (t - s)).sum(1).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", default=str(SHARED / "weights/segformer-b0-camvid"))
    ap.add_argument("--train-dir", default=str(SHARED / "data/camvid/train-0006R0"),
                    help="frames that train the metric (labels, for --labels: this folder + 'annot')")
    ap.add_argument("--eval-dir", default=str(SHARED / "data/camvid/val"),
                    help="frames that judge every variant (labels: this folder + 'annot'); none may be in --train-dir")
    ap.add_argument("--resolution", default="384x512")
    ap.add_argument("--train-variants", default="fast-lm,fast-pa-lm,xfast-pa-lm")
    ap.add_argument("--eval-variants", default="none,fast,fast-pa,xfast-pa")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--labels", action="store_true", help="also train on the training frames' labels (task loss)")
    ap.add_argument("--no-controls", action="store_true", help="skip the shuffled-change control of each trained metric")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    H, W = (int(v) for v in args.resolution.split("x"))
    out = Path(args.out)
    train_dir, eval_dir = Path(args.train_dir), Path(args.eval_dir)
    train, test = list_images(train_dir), list_images(eval_dir)
    label_dir = Path(str(train_dir) + "annot")
    eval_labels = Path(str(eval_dir) + "annot")
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results["split"] = {"train_dir": str(train_dir), "eval_dir": str(eval_dir),
                        "train": [f.name for f in train], "judged": [f.name for f in test]}
    print(f"metric trains on {len(train)} frames of {train_dir} ({train[0].name} .. {train[-1].name}); every variant "
          f"is judged on {len(test)} frames of {eval_dir} ({test[0].name} .. {test[-1].name}), never trained on",
          file=sys.stderr, flush=True)

    checkpoints: dict[str, str] = {}
    for v in [v for v in args.train_variants.split(",") if v]:
        t0 = time.perf_counter()
        run_dir = out / f"train-{v}"
        done = run_dir / "train_record.json"
        if done.is_file() and (run_dir / "checkpoint.pth").is_file():  # a finished run: reuse it
            record = json.loads(done.read_text())
            o = record["options"]
            same = (o["images"], o["eval_images"], o["epochs"], o["batch"], o["lr"], o["resolution"], o["labels"]) == (
                str(train_dir), str(eval_dir), args.epochs, args.batch, args.lr, [H, W],
                str(label_dir) if args.labels else None)
            if not same:
                raise SystemExit(f"{run_dir} holds a run with other options; use another --out")
            print(f"  {v}: reusing the finished run in {run_dir}", file=sys.stderr, flush=True)
        else:
            record = train_metric(TrainOptions(model=MODEL, variant=v, checkpoint=args.weights, images=str(train_dir),
                                               eval_images=str(eval_dir),
                                               labels=str(label_dir) if args.labels else None,
                                               out=str(run_dir), epochs=args.epochs, batch=args.batch,
                                               lr=args.lr, resolution=(H, W), seed=0),
                                  progress=lambda s, n, loss, v=v: print(f"  {v} step {s}/{n} loss {loss:.4f}",
                                                                         file=sys.stderr, flush=True))
        checkpoints[v] = str(run_dir / "checkpoint.pth")
        results.setdefault("training", {})[v] = {
            "steps": record["steps"], "train_seconds": record["train_seconds"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "kl_judged_frames": record["eval_source"], "eval_before": record["eval_before"],
            "eval_after": record["eval_after"],
            "picked_mass_last_step": record["picked_mass_last_step"]}
        if not args.no_controls:
            checkpoints[f"{v} (shuffled)"] = _shuffled_control(Path(checkpoints[v]), out / f"control-{v}")

    cfg = get_config(MODEL)
    images = [torch.from_numpy(normalize(load_image(f, H, W)[None], cfg.mean, cfg.std)) for f in test]
    labels = [np.asarray(Image.open(eval_labels / f.name), np.uint8) for f in test]
    variants = [v for v in args.eval_variants.split(",") if v] + list(checkpoints)
    assert variants[0] == "none", "--eval-variants must start with none (the reference for agreement and KL)"
    preds: dict[str, list[np.ndarray]] = {}
    ref_logits: list[torch.Tensor] = []
    for v in variants:
        model, _, _ = build_reference(MODEL, v.split(" ")[0], checkpoint=checkpoints.get(v, args.weights),
                                      resolution=(H, W))
        conf = np.zeros((11, 11), np.int64)
        preds[v], kls = [], []
        with torch.inference_mode():
            for i, (x, lab) in enumerate(zip(images, labels)):
                logits = model(x)
                if v == "none":
                    ref_logits.append(logits)
                kls.append(_kl(logits, ref_logits[i]))
                p = predict(logits, lab.shape)
                preds[v].append(p)
                conf += confusion(p, lab)
        s = scores(conf)
        results.setdefault("eval", {})[v] = {"miou": s["miou"], "pixel_acc": s["pixel_acc"],
                                             "kl_to_none": float(np.mean(kls)), "per_class_iou": s.get("iou"),
                                             "gflops": gflops(configure(MODEL, num_classes=11), v.split(" ")[0],
                                                              (H, W))}
        print(f"  {v}: mIoU {s['miou'] * 100:.2f}, KL to none {np.mean(kls):.5f}", file=sys.stderr, flush=True)
    for v in variants:
        results["eval"][v]["agreement"] = float(np.mean([np.mean(a == b) for a, b in zip(preds[v], preds["none"])]))
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2))
    base = results["eval"]["none"]["miou"]
    print(f"trained on {len(train)} frames of {train_dir.name}; judged on {len(test)} frames of {eval_dir.name}")
    print(f"| variant | GFLOPs (ratio) | work removed | mIoU ({len(test)} judged frames, {H}x{W}) | vs none "
          "| agreement with none | KL to none |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        e, g = results["eval"][v], results["eval"][v]["gflops"]
        print(f"| {v} | {g['merged']:.2f} ({g['ratio']:.2f}x) | {g['unmerged'] - g['merged']:.2f} | "
              f"{e['miou'] * 100:.2f} | {(e['miou'] - base) * 100:+.2f} | {e['agreement'] * 100:.2f}% | "
              f"{e['kl_to_none']:.5f} |")
    if checkpoints:
        print(f"\n| trained variant | steps | train s | hard KL on the {len(test)} judged frames, before -> after "
              "| soft KL, before -> after |")
        print("|---|---|---|---|---|")
        for v in [v for v in checkpoints if v in results["training"]]:
            t = results["training"][v]
            b, a = t["eval_before"], t["eval_after"]
            print(f"| {v} | {t['steps']} | {t['train_seconds']:.0f} | {b['hard_kl']:.5f} -> {a['hard_kl']:.5f} | "
                  f"{b['soft_kl']:.5f} -> {a['soft_kl']:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
