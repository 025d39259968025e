"""Benchmarking: a merged artifact against its baseline, interleaved, on TensorRT, ONNX Runtime or PyTorch.

    report = run_bench(BenchOptions("segformer-b0-fast/", unmerged=True, iters=50))
    write_json(report, "bench.json"); plot_report(report, "bench.png")

Importable without torch or TensorRT (only the torch backend and `--unmerged` exports need torch).
"""

from edgemerge.bench.artifact import Artifact, default_backend, read_artifact
from edgemerge.bench.core import (BenchOptions, json_bytes, latency_stats, plot_bytes, plot_report, run_bench,
                                  summary_lines, unmerged_artifact, write_json)
from edgemerge.bench.power import PowerSampler, parse_tegrastats

__all__ = ["Artifact", "BenchOptions", "PowerSampler", "default_backend", "json_bytes", "latency_stats",
           "parse_tegrastats", "plot_bytes", "plot_report", "read_artifact", "run_bench", "summary_lines",
           "unmerged_artifact", "write_json"]
