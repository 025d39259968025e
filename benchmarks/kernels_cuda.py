"""The CUDA kernels against PyTorch's own ops on the GPU, at the merge sites of a real plan.

For every Segformer++ merge site of `--model/--variant/--resolution` (counts from
`edgemerge.merge.resolve`), times, with CUDA events, the plugin kernels (through the ctypes
library the kernel tests build) and the PyTorch references of `edgemerge.merge.ops` on the same
CUDA tensors. Reports the median time of each, the speed-up, and for TokenMerge / TokenUnmerge
the bytes they must move (each input read once, each output written once) over the time,
against a device-to-device copy measured in the same run. Every kernel output is checked
against the reference first (poisoned output buffers, fresh random inputs).

    python benchmarks/kernels_cuda.py --model segformer-b5 --variant fast --resolution 1024x2048 --json k.json

Needs a CUDA GPU, torch with CUDA and nvcc; run from the repository root.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "plugins"))
from conftest import build_capi, find_nvcc  # noqa: E402  (the kernel tests' ctypes build)

from edgemerge.merge import core, ops  # noqa: E402
from edgemerge.merge.plan import get_plan
from edgemerge.merge.counts import resolve
from edgemerge.merge.plan import SegformerPlan  # noqa: E402
from edgemerge.models.registry import get_config


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def time_ms(fn, reps: int, warmup: int = 5) -> float:
    """Median of `reps` CUDA-event timings of fn() (each launch timed on its own)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_bandwidth_gbs(reps: int) -> float:
    """Device-to-device copy of 2 GiB, bytes read + written over the median time."""
    src = torch.randn(2 ** 29, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps)
    return 2 * src.numel() * 4 / ms / 1e6


def sites(model: str, variant: str, resolution: tuple[int, int]) -> list[dict]:
    """One entry per Segformer++ merge site: tokens, grid, count, channels."""
    plan = get_plan(model, variant)
    if not isinstance(plan, SegformerPlan):
        raise SystemExit(f"{model}/{variant}: this benchmark times Segformer++ grid sites only")
    cfg = get_config(model)
    out = []
    for st in resolve(model, plan, resolution)["stages"]:
        s = st["stage"]
        h, w = st["grid"]
        for kind, site in (("kv", plan.kv.get(s)), ("q", plan.q.get(s))):
            if site is None:
                continue
            sr = (8, 4, 2, 1)[s - 1] if kind == "kv" else 1
            gh, gw = h // sr, w // sr
            n = gh * gw
            out.append({"site": f"stage{s}-{kind}", "N": n, "C": cfg.widths[s - 1], "grid": (gh, gw),
                        "cell": (site.sy, site.sx), "r": site.count(n)})
    return out


def bench_site(lib, site: dict, batch: int, dtype: torch.dtype, reps: int) -> dict:
    B, N, C, r = batch, site["N"], site["C"], site["r"]
    M = N - r
    src, dst = core.grid(*site["grid"], *site["cell"])
    es = torch.finfo(dtype).bits // 8
    g = torch.Generator(device="cuda").manual_seed(0)
    metric = torch.randn(B, N, C, device="cuda", generator=g)
    x = torch.randn(B, N, C, device="cuda", generator=g).to(dtype)
    size = torch.ones(B, N, 1, device="cuda", dtype=dtype)
    src_t = torch.tensor(src, dtype=torch.int32, device="cuda")
    dst_t = torch.tensor(dst, dtype=torch.int32, device="cuda")
    ws = torch.empty(lib.em_capi_match_bipartite_workspace(B, N, C, len(src)), dtype=torch.uint8, device="cuda")
    slot = torch.full((B, N), -7, dtype=torch.int32, device="cuda")
    merged = torch.full((B, M, C), float("nan"), device="cuda", dtype=dtype)
    msize = torch.full((B, M, 1), float("nan"), device="cuda", dtype=dtype)
    back = torch.full((B, N, C), float("nan"), device="cuda", dtype=dtype)
    dt = 1 if dtype == torch.float16 else 0

    def k_match():
        assert lib.em_capi_match_bipartite(_p(metric), _p(slot), _p(src_t), _p(dst_t), B, N, C, len(src), len(dst),
                                           r, 0, _p(ws)) == 0

    def k_merge():
        assert lib.em_capi_token_merge(_p(x), _p(size), _p(slot), _p(merged), _p(msize), B, N, M, C, dt) == 0

    def k_unmerge():
        assert lib.em_capi_token_unmerge(_p(merged), _p(slot), _p(back), B, N, M, C, dt) == 0

    # correctness first: the kernels' outputs against the references on the same inputs
    k_match()
    torch.cuda.synchronize()
    ref_slot = ops.match_bipartite_ref(metric, r, src, dst)
    slot_agree = (slot == ref_slot).float().mean().item()  # near-ties may flip a few (fp32 order)
    k_merge()
    k_unmerge()
    torch.cuda.synchronize()
    ref_merged, ref_size = ops.token_merge_ref(x, size, slot, M)
    merge_err = (merged.float() - ref_merged.float()).abs().max().item()
    unmerge_ok = bool(torch.equal(back, ops.token_unmerge_ref(merged, slot)))
    assert torch.isfinite(merged).all() and torch.equal(msize, ref_size), "TokenMerge left or wrote bad values"

    t = {
        "match_kernel": time_ms(k_match, reps), "match_torch": time_ms(lambda: ops.match_bipartite_ref(
            metric, r, src, dst), reps),
        "merge_kernel": time_ms(k_merge, reps), "merge_torch": time_ms(lambda: ops.token_merge_ref(x, size, slot, M),
                                                                       reps),
        "unmerge_kernel": time_ms(k_unmerge, reps), "unmerge_torch": time_ms(lambda: ops.token_unmerge_ref(
            merged, slot), reps),
    }
    merge_bytes = B * N * C * es + B * N * es + B * N * 4 + B * M * C * es + B * M * es
    unmerge_bytes = B * M * C * es + B * N * 4 + B * N * C * es
    return {**site, "batch": B, "dtype": str(dtype).removeprefix("torch."), "M": M,
            "slot_agreement": round(slot_agree, 6), "merge_max_abs_err": merge_err, "unmerge_exact": unmerge_ok,
            "ms": {k: round(v, 4) for k, v in t.items()},
            "merge_gbs": round(merge_bytes / t["merge_kernel"] / 1e6, 1),
            "unmerge_gbs": round(unmerge_bytes / t["unmerge_kernel"] / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="segformer-b5")
    ap.add_argument("--variant", default="fast")
    ap.add_argument("--resolution", default="1024x2048")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    nvcc = find_nvcc()
    if nvcc is None:
        raise SystemExit("needs nvcc")
    major, minor = torch.cuda.get_device_capability()
    lib = ctypes.CDLL(str(build_capi(nvcc, Path(tempfile.mkdtemp()), f"sm_{major}{minor}")))
    lib.em_capi_match_bipartite_workspace.restype = ctypes.c_size_t
    h, w = (int(v) for v in args.resolution.lower().split("x"))
    copy = copy_bandwidth_gbs(args.reps)
    rows = [bench_site(lib, s, args.batch, dt, args.reps) for s in sites(args.model, args.variant, (h, w))
            for dt in (torch.float32, torch.float16)]
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
              "variant": args.variant, "resolution": [h, w], "copy_gbs": round(copy, 1), "sites": rows}
    print(f"{result['gpu']}, torch {result['torch']}, {args.model} {args.variant} at {args.resolution}, "
          f"batch {args.batch}; device copy {copy:.0f} GB/s (read + write)")
    print("| site | dtype | N -> M | C | match ms kernel / torch | merge ms kernel / torch | merge GB/s | "
          "unmerge ms kernel / torch | unmerge GB/s | slots agree | merge err |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        t = x["ms"]
        print(f"| {x['site']} | {x['dtype']} | {x['N']} -> {x['M']} | {x['C']} | {t['match_kernel']:.3f} / "
              f"{t['match_torch']:.3f} | {t['merge_kernel']:.3f} / {t['merge_torch']:.3f} | {x['merge_gbs']:.0f} | "
              f"{t['unmerge_kernel']:.3f} / {t['unmerge_torch']:.3f} | {x['unmerge_gbs']:.0f} | "
              f"{x['slot_agreement']:.4f} | {x['merge_max_abs_err']:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
