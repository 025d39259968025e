"""Merged vs unmerged PyTorch latency (CPU, or a CUDA GPU), measured side by side in one process.

Every iteration runs each variant once, in an order rotated per iteration, on the same weights
(the plan is applied by swapping module classes, which costs nothing and is done outside the
timed region), so drift in the machine's speed (thermal, other load) hits all variants alike.
Reports median and p90 latency per variant, the speed-up of the median against `none`, and the
GFLOP ratio from `edgemerge.merge.flops.gflops` beside it. Random weights: only time is measured.
Also reports the process CPU time per forward (all threads): on a shared machine, wall time also
counts the time other processes held the cores, CPU time much less so.

    python benchmarks/bench_merging_torch.py --model segformer-b2 --resolution 512x512 \
        --variants none,hq,fast,n2d --iters 10 --warmup 2 --json b2.json
    python benchmarks/bench_merging_torch.py --model segformer-b5 --resolution 1024x1024 \
        --variants none,hq,fast,n2d --device cuda --dtype fp16 --iters 50 --warmup 10

On CUDA each forward is bracketed by synchronisations (wall time of the whole forward, the
launches included, as a deployed batch-1 model sees it); SDPA picks its fused kernels there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgemerge.merge.patch import apply_merging, remove_merging
from edgemerge.merge.plan import get_plan
from edgemerge.merge.flops import gflops
from edgemerge.models.registry import build_model


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def parse_resolution(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(model_name: str, resolution: tuple[int, int], variants: list[str], iters: int, warmup: int,
        threads: int, seed: int, device: str = "cpu", dtype: str = "fp32") -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tdtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    model = build_model(model_name, resolution=resolution).to(device, tdtype)
    plans = {v: get_plan(model_name, v) for v in variants}
    x = torch.randn(1, 3, *resolution, generator=torch.Generator().manual_seed(seed)).to(device, tdtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    with torch.inference_mode():
        for it in range(warmup + iters):
            shift = it % len(variants)
            for v in variants[shift:] + variants[:shift]:
                apply_merging(model, plans[v])
                sync()
                c0, t0 = time.process_time(), time.perf_counter()
                model(x)
                sync()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if it >= warmup:
                    times[v].append(dt * 1000)
                    cpu[v].append(dc * 1000)
                print(f"  iter {it + 1}/{warmup + iters}{' (warm-up)' if it < warmup else ''} {v}: {dt * 1000:.0f} ms",
                      file=sys.stderr, flush=True)
    remove_merging(model)
    base = statistics.median(times["none"])
    base_cpu = statistics.median(cpu["none"])
    rows = []
    for v in variants:
        g = gflops(model_name, v, resolution)
        med = statistics.median(times[v])
        med_cpu = statistics.median(cpu[v])
        rows.append({"variant": v, "median_ms": round(med, 2), "p90_ms": round(percentile(times[v], 90), 2),
                     "speedup": round(base / med, 3), "cpu_median_ms": round(med_cpu, 2),
                     "cpu_speedup": round(base_cpu / med_cpu, 3), "gflops": g["merged"], "flop_ratio": g["ratio"],
                     "times_ms": [round(t, 2) for t in times[v]], "cpu_ms": [round(t, 2) for t in cpu[v]]})
    return {"model": model_name, "resolution": list(resolution), "iters": iters, "warmup": warmup,
            "threads": threads, "seed": seed, "batch": 1, "torch": torch.__version__, "cpu": cpu_name(),
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": dtype,
            "python": platform.python_version(), "results": rows}


def table(result: dict) -> str:
    """The results as a Markdown table."""
    lines = ["| variant | median ms | p90 ms | speed-up vs none | CPU-time median ms | CPU-time speed-up | GFLOPs "
             "| FLOP ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        lines.append(f"| {r['variant']} | {r['median_ms']:.0f} | {r['p90_ms']:.0f} | {r['speedup']:.2f}x | "
                     f"{r['cpu_median_ms']:.0f} | {r['cpu_speedup']:.2f}x | {r['gflops']:.1f} | {r['flop_ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="segformer-b2")
    ap.add_argument("--resolution", default="512x512", help="HxW")
    ap.add_argument("--variants", default="none,hq,fast,n2d", help="comma-separated; 'none' is added if missing")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"], help="fp16 on cuda only")
    ap.add_argument("--json", default=None, help="write the results here (atomically)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU")
    if args.dtype == "fp16" and args.device != "cuda":
        ap.error("--dtype fp16 needs --device cuda")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "none" not in variants:
        variants.insert(0, "none")
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    load_before = os.getloadavg()
    result = run(args.model, parse_resolution(args.resolution), variants, args.iters, args.warmup, args.threads,
                 args.seed, args.device, args.dtype)
    result["command"] = "python benchmarks/bench_merging_torch.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load = result["loadavg_before"], result["loadavg_after"] = load_before, os.getloadavg()
    where = f"{result['device']} {args.dtype}" if args.device == "cuda" else f"{args.threads} threads, {result['cpu']}"
    print(f"{result['model']} at {args.resolution}, batch 1, {where}, {args.iters} iterations "
          f"(+{args.warmup} warm-up), torch {result['torch']}, "
          f"1-min load average {load[0][0]:.1f} before / {load[1][0]:.1f} after")
    print(table(result))
    if args.json:
        path = Path(args.json)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
