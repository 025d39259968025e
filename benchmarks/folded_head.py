"""What folding Segformer's decode head (SegformerHead.fold, the deployed form) is worth: ONNX
Runtime CPU latency of the exported graph with the head as built and folded, for the unmerged
model and a merged variant, interleaved in one run, plus the GFLOPs and the largest logit change.

    PYTHONPATH=. python benchmarks/folded_head.py --model segformer-b0 --resolution 384x512 \
        --variants none,fast --iters 30

Random weights (the cost does not depend on them); fp32; one thread per ORT session by default
(`--threads`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

from edgemerge.export.exporter import finalize, torch_to_onnx
from edgemerge.contracts.manifest import parse_resolution
from edgemerge.merge.flops import count_gflops
from edgemerge.merge.reference import build_reference


def _session(model, x: torch.Tensor, threads: int) -> ort.InferenceSession:
    proto = finalize(torch_to_onnx(model, x, 18), merge_ops="native", precision="fp32")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="segformer-b0")
    ap.add_argument("--resolution", default="384x512")
    ap.add_argument("--variants", default="none,fast")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    res = parse_resolution(args.resolution)
    x = torch.randn(1, 3, *res, generator=torch.Generator().manual_seed(0))
    sessions, rows = {}, {}
    for variant in args.variants.split(","):
        model, _, _ = build_reference(args.model, variant, resolution=res)  # folded (the deployed form)
        folded_out = model(x).detach()
        folded_g = count_gflops(_meta_copy(args.model, variant, res, fold=True), res)
        model.decode_head.folded = False  # the head as built
        plain_out = model(x).detach()
        plain_g = count_gflops(_meta_copy(args.model, variant, res, fold=False), res)
        sessions[(variant, "as built")] = _session(model, x, args.threads)
        model.decode_head.folded = True
        sessions[(variant, "folded")] = _session(model, x, args.threads)
        rng = float(plain_out.max() - plain_out.min())
        rows[variant] = {"gflops as built": plain_g, "gflops folded": folded_g,
                         "max abs change / range": float((folded_out - plain_out).abs().max()) / rng}
    feed = {"images": x.numpy()}
    times: dict = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feed)  # warm-up
    for _ in range(args.iters):  # interleaved: the machine's drift hits every graph alike
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - t) * 1000)
    base = statistics.median(times[("none", "as built")]) if ("none", "as built") in times else None
    print(f"{args.model} {res[0]}x{res[1]}, ONNX Runtime {ort.__version__} CPU, {args.threads} thread(s), "
          f"{args.iters} interleaved iterations")
    print("| variant | head | median ms | p90 ms | speed-up vs none as built | GFLOPs |")
    print("|---|---|---:|---:|---:|---:|")
    for (variant, head), ts in times.items():
        med, p90 = statistics.median(ts), float(np.percentile(ts, 90))
        g = rows[variant]["gflops folded" if head == "folded" else "gflops as built"]
        print(f"| {variant} | {head} | {med:.1f} | {p90:.1f} | {base / med:.2f}x | {g:.2f} |" if base else
              f"| {variant} | {head} | {med:.1f} | {p90:.1f} | - | {g:.2f} |")
    print(json.dumps({v: {k: round(x, 9) for k, x in r.items()} for v, r in rows.items()}))


def _meta_copy(name: str, variant: str, res: tuple[int, int], fold: bool):
    from edgemerge.merge.patch import apply_merging
    from edgemerge.merge.plan import get_plan
    from edgemerge.models.registry import build_model

    with torch.device("meta"):
        model = build_model(name, resolution=res)
    apply_merging(model, get_plan(name, variant))
    if fold:
        model.fold_decoder()
    return model


if __name__ == "__main__":
    with torch.no_grad():
        main()
