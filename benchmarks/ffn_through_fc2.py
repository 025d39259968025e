"""What merging the MixFFN *after* its depthwise conv would cost in accuracy (issue 22): a probe in
PyTorch, not an export path.

The MixFFN site merges fc1's input only; its ceiling on ONNX Runtime CPU is ~1.05x over fast-pa
(benchmarks/README.md, "What a MixFFN fc1 site can give at all"). The rest of the FFN's width-4C
work is GELU and fc2, after the conv. Here a cell-local site (TokenMatchCell's decisions on the
block's normed input, 2x2 cells) merges fc1's input as the site does and, with `through_fc2`, also
the GELU output with the same groups (fc2 being linear, each group's members then share fc2 of
their size-weighted mean). mIoU of fast-pa plus such a site against the unmerged model, at
768x1024 (frames upscaled), on two CamVid sequences: the choice is made on 0006R0, 0016E5 (val)
judges it.

Usage: PYTHONPATH=. python benchmarks/ffn_through_fc2.py IMAGES LABELS OUT.json
(LABELS with CamVid's void 11 mapped to 255.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgemerge.contracts.compare import confusion, miou
from edgemerge.merge.patch import apply_merging, remove_merging
from edgemerge.merge.plan import GridSite, NoPlan, plan_from_table
from edgemerge.merge.patch import grid_match
from edgemerge.models.checkpoint import load_checkpoint
from edgemerge.models.segformer import MixFFN
from edgemerge.validate.inputs import folder_inputs
from edgemerge.validate.metrics import resize_labels

H, W = 768, 1024
FAST_PA = {"kv": {"ratio": 0.9, "grid": [4, 4], "stages": [1, 2]},
           "q": {"ratio": 0.9, "grid": [4, 4], "stages": [3, 4]}, "proportional": True}
CANDIDATES = {  # name: (stages, ratio, through_fc2)
    "none": None, "fast-pa": ((), 0.0, False),
    "fc1 1-4 @0.5": ((1, 2, 3, 4), 0.5, False),
    "fc1+fc2 1-4 @0.5": ((1, 2, 3, 4), 0.5, True),
    "fc1+fc2 1-4 @0.25": ((1, 2, 3, 4), 0.25, True),
    "fc1+fc2 1-2 @0.5": ((1, 2), 0.5, True),
    "fc1+fc2 3-4 @0.5": ((3, 4), 0.5, True),
}


def probe_forward(site: GridSite, through_fc2: bool):
    def forward(self: MixFFN, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        fns = grid_match(x, site, hw)
        merged, size = fns.merge(x)
        h = fns.unmerge(self.fc1(merged))
        B, N, C = h.shape
        h = self.dwconv(h.reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(B, N, C)
        g = F.gelu(h)
        if through_fc2:
            return fns.unmerge(self.fc2(fns.merge(g)[0]))
        return self.fc2(g)
    return forward


def run(model, inp, K, name, spec, preds) -> dict:
    t0 = time.time()
    apply_merging(model, plan_from_table("segformer-b0", FAST_PA) if spec else NoPlan())
    patched = []
    if spec and spec[0]:
        stages, ratio, fc2 = spec
        site = GridSite(ratio=ratio, sy=2, sx=2, match="cell")
        for s in stages:
            for blk in model.encoder.stages[s - 1].blocks:
                blk.mlp.forward = probe_forward(site, fc2).__get__(blk.mlp)
                patched.append(blk.mlp)
    with torch.no_grad():
        p = np.concatenate([model(torch.from_numpy(b)).argmax(1).numpy() for b in inp.batches])
    for m in patched:
        del m.forward
    remove_merging(model)
    lab = resize_labels(inp.labels, *p.shape[1:])
    preds[name] = p
    row = {"miou": 100 * miou(confusion(p, lab, K)), "agreement_with_none": float((p == preds["none"]).mean()),
           "seconds": round(time.time() - t0, 1)}
    row["vs_none"] = row["miou"] - (100 * miou(confusion(preds["none"], lab, K)))
    return row


def main() -> None:
    images, labels = sys.argv[1], sys.argv[2]
    model, info = load_checkpoint("segformer-b0", "/work/shared/weights/segformer-b0-camvid", resolution=(H, W))
    model.eval()
    manifest = {"resolution": [H, W], "batch": 1, "mean": list(model.config.mean), "std": list(model.config.std),
                "num_classes": info.num_classes}
    inp = folder_inputs(manifest, images, labels)
    K = info.num_classes or model.config.num_classes
    preds, rows = {}, {}
    for name, spec in CANDIDATES.items():
        rows[name] = run(model, inp, K, name, spec, preds)
        print(name, json.dumps(rows[name]), flush=True)
    Path(sys.argv[3]).write_text(json.dumps({"images": images, "frames": len(inp.images), "resolution": [H, W],
                                             "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
