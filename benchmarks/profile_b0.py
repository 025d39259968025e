"""Where the time goes: `edgemerge bench --profile` for segformer-b0 `none` vs a merged variant on
ONNX Runtime CPU, repeated, with the figures benchmarks/README.md quotes.

    PYTHONPATH=. python benchmarks/profile_b0.py --out /tmp/profile-b0 --resolution 1024x1024 \
        --variant fast-pa --iters 10 --profile-iters 6 --repeats 3 --threads 1

Exports both bundles into --out (reused when present), then runs bench with --profile --repeats
times (each run times and profiles the two models interleaved), keeping every run's bench.json
(`bench-<i>.json`) and drawing bench-profile.png for the run with the median profiled speed-up.
Prints each run's headline figures, the per-op-type table of that median run, and per op type
the median over the runs. Random weights (seed 0): the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from edgemerge.bench.core import BenchOptions, run_bench
from edgemerge.bench.profile import plot_bytes, table_lines
from edgemerge.contracts.manifest import ExportOptions, parse_resolution


def _bundle(out: Path, model: str, variant: str, res: tuple[int, int]) -> Path:
    path = out / f"{model}-{variant}-{res[0]}x{res[1]}"
    if not (path / "manifest.json").is_file():
        from edgemerge.export.bundle import export_bundle

        print(f"exporting {path.name} ...", flush=True)
        export_bundle(ExportOptions(model=model, variant=variant, resolution=res, out=str(path)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="segformer-b0")
    ap.add_argument("--variant", default="fast-pa")
    ap.add_argument("--resolution", default="1024x1024")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile-iters", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    res = parse_resolution(args.resolution)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    merged, base = _bundle(out, args.model, args.variant, res), _bundle(out, args.model, "none", res)
    reports = []
    for i in range(args.repeats):
        load = os.getloadavg()[0]
        report = run_bench(BenchOptions(artifact=str(merged), baseline=str(base), threads=args.threads,
                                        iters=args.iters, warmup=args.warmup, profile=True,
                                        profile_iters=args.profile_iters),
                           progress=lambda s: print("  " + s, flush=True))
        report["load_before"] = load
        (out / f"bench-{i}.json").write_text(json.dumps(report, indent=1))
        p = report["profile"]
        print(f"run {i}: load {load:.1f} -> {os.getloadavg()[0]:.1f}; p50 {report['models']['baseline']['latency_ms']['p50']:.0f} -> "
              f"{report['models']['merged']['latency_ms']['p50']:.0f} ms, speed-up {report['speedup_p50']:.3f}x, "
              f"profiled {p['baseline_ms']:.0f} -> {p['merged_ms']:.0f} ms ({p['speedup_profiled']:.3f}x), merge ops "
              f"{p['merge_ms']:.1f} ms ({100 * p['merge_share']:.1f}%), time bound {p['time_bound_ms']:.0f} ms "
              f"({p['time_bound_speedup']:.3f}x), FLOP ratio {report['flop_ratio']:.3f}x", flush=True)
        reports.append(report)
    order = sorted(range(len(reports)), key=lambda k: reports[k]["profile"]["speedup_profiled"])
    mid = reports[order[len(order) // 2]]
    title = (f"{args.model} {args.variant} vs none, {res[0]}x{res[1]}, ONNX Runtime CPU, {args.threads} thread(s), "
             f"{args.profile_iters} profiled runs each")
    (out / "bench-profile.png").write_bytes(plot_bytes(mid["profile"], title=title))
    print(f"\nmedian run (run {order[len(order) // 2]}):")
    print("\n".join(table_lines(mid["profile"])))
    print(f"\nper op type, median over {len(reports)} runs (ms per run):")
    print("| op type | none ms | merged ms | ratio | bound ms |")
    print("|---|---:|---:|---:|---:|")
    ops = [r["op"] for r in mid["profile"]["op_types"]]
    for op in ops:
        rows = [next((r for r in rep["profile"]["op_types"] if r["op"] == op), None) for rep in reports]
        b = statistics.median(r["baseline_ms"] if r else 0.0 for r in rows)
        m = statistics.median(r["merged_ms"] if r else 0.0 for r in rows)
        tb = statistics.median((r["bound_ms"] or 0.0) if r else 0.0 for r in rows)
        ratio = f"{b / m:.2f}x" if m and b else ("merged only" if m else "-")
        print(f"| {op} | {b:.1f} | {m:.1f} | {ratio} | {tb:.1f} |")
    for op in sorted({k for rep in reports for k in rep["profile"]["merge_ops_ms"]}):
        m = statistics.median(rep["profile"]["merge_ops_ms"].get(op, 0.0) for rep in reports)
        print(f"| {op} (merge op) | - | {m:.1f} | - | 0 |")
    med = lambda key: statistics.median(rep["profile"][key] for rep in reports)  # noqa: E731
    print(f"| total | {med('baseline_ms'):.1f} | {med('merged_ms'):.1f} | {med('speedup_profiled'):.2f}x | "
          f"{med('time_bound_ms'):.1f} |")
    print(f"\nmedians over runs: measured speed-up {statistics.median(r['speedup_p50'] for r in reports):.3f}x, "
          f"profiled {med('speedup_profiled'):.3f}x, time bound {med('time_bound_speedup'):.3f}x, "
          f"merge share {100 * med('merge_share'):.1f}%, FLOP ratio {reports[0]['flop_ratio']:.3f}x")


if __name__ == "__main__":
    main()
