"""Choose the cell-local MixFFN site (TokenMatchCell) for fast-pa on one CamVid sequence, in
PyTorch at 768x1024 (frames upscaled), and compare cell with global grid matching.

For each candidate plan (fast-pa plus an `ffn` site): mIoU against the labels, the same for the
unmerged model, pixel agreement with the unmerged model, and, for the fidelity of cell vs global
matching at the same sites and ratio, the pixel agreement between the two merged outputs.
Usage: PYTHONPATH=. python benchmarks/cell_ffn_choice.py IMAGES LABELS OUT.json [NAMES,...]
(LABELS with CamVid's void 11 mapped to 255, the ignore id validate takes.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgemerge.contracts.compare import confusion, miou
from edgemerge.merge.patch import apply_merging, remove_merging
from edgemerge.merge.plan import NoPlan, plan_from_table
from edgemerge.models.checkpoint import load_checkpoint
from edgemerge.validate.inputs import folder_inputs

H, W = 768, 1024
FAST_PA = {"kv": {"ratio": 0.9, "grid": [4, 4], "stages": [1, 2]},
           "q": {"ratio": 0.9, "grid": [4, 4], "stages": [3, 4]}, "proportional": True}


def candidates() -> dict[str, dict]:
    """fast-pa plus an `ffn` site on 2x2 cells: cell vs global at stages 3-4 (fidelity), and cell
    at more stages (where global cannot go: its S x D scores at stage 1 outweigh the model; since
    TokenMergeCell the cell site's merge is O(N C) there too). Ratio 0.75 on 2x2 cells merges every
    non-anchor token: the site is then a size-weighted 2x2 pooling of fc1's input."""
    out = {"none": {}, "fast-pa": FAST_PA}
    for stages, ratio, match in (([3, 4], 0.5, "cell"), ([3, 4], 0.5, "global"), ([1, 2, 3, 4], 0.5, "cell"),
                                 ([1, 2, 3, 4], 0.7, "cell"), ([1, 2, 3, 4], 0.75, "cell"), ([1, 2], 0.75, "cell"),
                                 ([3, 4], 0.75, "cell"), ([2], 0.75, "cell"), ([2], 0.5, "cell")):
        name = f"ffn{''.join(map(str, stages))}-{ratio}-{match}"
        out[name] = dict(FAST_PA, ffn={"ratio": ratio, "grid": [2, 2], "stages": stages, "match": match})
    if len(sys.argv) > 4:  # only these (e.g. the held-out check of the chosen one)
        keep = sys.argv[4].split(",")
        out = {k: v for k, v in out.items() if k in keep}
    return out


def main() -> None:
    images, labels = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model, info = load_checkpoint("segformer-b0", "/work/shared/weights/segformer-b0-camvid", resolution=(H, W))
    model.eval()
    manifest = {"resolution": [H, W], "batch": 1, "mean": list(model.config.mean), "std": list(model.config.std),
                "num_classes": info.num_classes}
    inp = folder_inputs(manifest, images, labels)
    K = info.num_classes or model.config.num_classes
    preds, rows = {}, {}
    for name, table in candidates().items():
        t0 = time.time()
        apply_merging(model, plan_from_table("segformer-b0", table) if table else NoPlan())
        with torch.no_grad():
            p = np.concatenate([model(torch.from_numpy(b)).argmax(1).numpy() for b in inp.batches])
        remove_merging(model)
        lab = inp.labels
        from edgemerge.validate.metrics import resize_labels
        lab = resize_labels(lab, *p.shape[1:])
        preds[name] = p
        rows[name] = {"miou": 100 * miou(confusion(p, lab, K)),
                      "agreement_with_none": float((p == preds["none"]).mean()),
                      "seconds": round(time.time() - t0, 1)}
        if name.endswith("-global") and name.replace("-global", "-cell") in preds:
            rows[name]["agreement_with_cell"] = float((p == preds[name.replace("-global", "-cell")]).mean())
        rows[name]["vs_none"] = rows[name]["miou"] - rows["none"]["miou"]
        print(name, json.dumps(rows[name]), flush=True)
    out = {"images": images, "frames": len(inp.images), "resolution": [H, W], "rows": rows}
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
