"""The front, measured: each plan exported (with its self-check) and timed against the unmerged
model on the chosen backend, interleaved in the same run (edgemerge bench), repeated until the
speed-up's spread is tight or the time cap is hit; the chosen plan re-timed in a fresh process."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgemerge.contracts.errors import EdgemergeError

TIGHT = 0.03  # stop when (max - min) / median of the rounds' speed-ups is below this


@dataclass
class Timer:
    """Exports and times plans of one model at one resolution on one backend."""

    model: str
    resolution: tuple[int, int]
    checkpoint: str | None
    backend: str
    threads: int | None
    workdir: Path
    iters: int = 20
    rounds: int = 5
    cap_seconds: float = 120.0
    progress: Callable[[str], None] = lambda s: None

    def bundle(self, name: str, table: dict[str, Any] | None) -> Path:
        """The plan's bundle (`table` None: the unmerged model), exported once per work folder."""
        from edgemerge.contracts.manifest import ExportOptions
        from edgemerge.export.bundle import export_bundle

        tag = "none" if table is None else hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:12]
        out = self.workdir / "bundles" / tag
        if (out / "manifest.json").is_file():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        plan_file = None
        if table is not None:
            from edgemerge.tune.report import plan_toml

            plan_file = self.workdir / "plans" / f"{tag}.toml"
            plan_file.parent.mkdir(parents=True, exist_ok=True)
            plan_file.write_text(plan_toml(self.model, name, table, None))
        self.progress(f"exporting {name}")
        opts = ExportOptions(model=self.model, variant=name if table is not None else "none", plan_file=None if
                             plan_file is None else str(plan_file), checkpoint=self.checkpoint,
                             resolution=self.resolution, out=str(out), engine=self.backend == "tensorrt")
        from edgemerge.trt.builder import build_engine  # imports without TensorRT; needs it when called

        export_bundle(opts, build_engine=build_engine if self.backend == "tensorrt" else None)
        return out

    def speedup(self, bundle: Path, baseline: Path) -> dict[str, Any]:
        """Rounds of interleaved timing against the baseline: the speed-ups, their median and spread."""
        from edgemerge.bench.core import BenchOptions, run_bench
        from edgemerge.trt.builder import load_engine

        ups, latencies, start = [], [], time.time()
        artifact = str(bundle / ("model.plan" if self.backend == "tensorrt" else "model.onnx"))
        base = str(baseline / ("model.plan" if self.backend == "tensorrt" else "model.onnx"))
        while len(ups) < self.rounds:
            report = run_bench(BenchOptions(artifact, baseline=base, backend=self.backend, threads=self.threads,
                                            iters=self.iters, warmup=3, load_engine=load_engine))
            ups.append(report["speedup_p50"])
            latencies.append(report["models"]["merged"]["latency_ms"]["p50"])
            ups_sorted = sorted(ups)
            med = ups_sorted[len(ups) // 2]
            if len(ups) >= 2 and (ups_sorted[-1] - ups_sorted[0]) / med < TIGHT:
                break
            if time.time() - start > self.cap_seconds:
                break
        ups_sorted = sorted(ups)
        return {"speedup": ups_sorted[len(ups) // 2], "speedup_lo": ups_sorted[0], "speedup_hi": ups_sorted[-1],
                "rounds": len(ups), "latency_ms": sorted(latencies)[len(latencies) // 2]}


def retime_fresh(bundle: Path, baseline: Path, backend: str, threads: int | None, iters: int) -> float:
    """The chosen plan's speed-up from `edgemerge bench` in a new process (no warm caches, no
    state of this one)."""
    art = "model.plan" if backend == "tensorrt" else "model.onnx"
    cmd = [sys.executable, "-m", "edgemerge.cli", "bench", str(bundle / art), "--baseline", str(baseline / art),
           "--backend", backend, "--iters", str(iters), "--json", "--report", str(bundle / "retime.json"),
           "--plot", str(bundle / "retime.png")] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EdgemergeError(f"re-timing {bundle} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
    return float(json.loads(proc.stdout)["speedup_p50"])

