"""`edgemerge bench`: time a merged model against its baseline on one backend, interleaved.

Both models are loaded and warmed up, then timed in alternation (merged, baseline, merged, ...)
so that clock boosts, thermal throttling and other load hit both alike; the speed-up is the ratio
of the p50 latencies, printed next to the FLOP ratio the plan promises.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgemerge import __version__
from edgemerge.bench.artifact import BACKENDS, Artifact, default_backend, read_artifact
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.manifest import MANIFEST
from edgemerge.contracts.images import normalize, synthetic_images

DEVICES = ("cpu", "cuda")
POWER_MIN_SECONDS = 2.0  # each model runs at least this long under tegrastats


@dataclass
class BenchOptions:
    artifact: str
    baseline: str | None = None
    unmerged: bool = False
    backend: str | None = None
    device: str | None = None
    iters: int = 50
    warmup: int = 5
    power: bool = False
    seed: int = 0
    threads: int | None = None
    plugins: list[str] | None = None
    workdir: str | None = None  # where an --unmerged baseline is exported (default: a temp dir)
    profile: bool = False  # per-op-type time from the backend's profiler, after the timing (bench.profile)
    profile_iters: int = 10
    # handed over by the caller (the CLI), so bench imports neither the TensorRT side nor export:
    load_engine: Callable | None = None  # edgemerge.trt.load_engine(path, plugins=...)
    exporter: Callable | None = None  # edgemerge.export.export_bundle(opts, progress=...)
    extra: dict[str, Any] = field(default_factory=dict)


# ---- statistics -------------------------------------------------------------------------------

def latency_stats(seconds: list[float], batch: int) -> dict[str, float]:
    """p50/p90/p99/mean/min/max latency in ms and throughput (images/s = batch / mean latency)."""
    ms = np.asarray(seconds, np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": mean, "min": float(ms.min()),
            "max": float(ms.max()), "std": float(ms.std()), "throughput_ips": batch / (mean / 1e3)}


# ---- memory -------------------------------------------------------------------------------------

def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory a block of work adds: CPU RSS high-water delta, or CUDA max_memory_allocated (torch)."""

    def __init__(self, device: str, backend: str):
        self.device, self.backend = device, backend
        self.result: dict[str, Any] = {}

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            if self.backend == "torch":
                import torch

                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self._base = torch.cuda.memory_allocated()
            return self
        self._hwm_reset = _reset_peak_rss()
        self._rss0 = _status_kb("VmRSS")
        self._maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        if self.device == "cuda":
            if self.backend == "torch":
                import torch

                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - self._base
                self.result = {"peak_mb": peak / 2 ** 20, "kind": "cuda max_memory_allocated (torch), above the "
                               "allocation before the model was loaded"}
            else:
                self.result = {"peak_mb": None, "kind": f"n/a: device memory of {self.backend} is not measured here"}
            return
        if self._hwm_reset and self._rss0 is not None:
            hwm = _status_kb("VmHWM")
            self.result = {"peak_mb": max(0, hwm - self._rss0) / 1024,
                           "kind": "host RSS high-water (VmHWM, reset before loading) minus RSS before loading"}
        else:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.result = {"peak_mb": max(0, maxrss - self._maxrss0) / 1024,
                           "kind": "getrusage ru_maxrss delta (a lower bound: the process high-water mark)"}


def engine_memory(runner, artifact: Artifact) -> dict[str, Any]:
    """What a TensorRT engine holds on the device: its execution context's memory (activations and
    scratch) as the engine reports it, plus the weights, which are most of the engine file. On a
    Jetson both come out of the one shared DRAM, so this is the figure to budget with."""
    engine = getattr(runner, "engine", None)
    size = getattr(engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
    if size is None:
        size = getattr(engine, "device_memory_size", None)
    if size is None:
        return {"peak_mb": None, "kind": "n/a: the engine does not report its device memory"}
    context_mb, file_mb = int(size) / 2 ** 20, Path(artifact.path).stat().st_size / 2 ** 20
    return {"peak_mb": context_mb + file_mb,
            "kind": "TensorRT engine: execution-context device memory (ICudaEngine.device_memory_size_v2) "
                    "+ the engine file (weights)",
            "context_mb": context_mb, "engine_file_mb": file_mb}


# ---- environment --------------------------------------------------------------------------------

def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"edgemerge": __version__, "python": platform.python_version()}
    for dist in ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "polygraphy", "torch", "tensorrt"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine_info(device: str, backend: str) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
                            "hostname": platform.node()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    model = Path("/proc/device-tree/model")
    if model.is_file():
        info["board"] = model.read_text(errors="ignore").strip("\x00\n ")
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if device == "cuda":
        try:
            from edgemerge.device.gpu import query_gpu

            info["gpu"], info["compute_capability"] = query_gpu()
        except Exception:  # the GPU query is informative only
            info["gpu"] = None
    return info


# ---- the baseline -------------------------------------------------------------------------------

def unmerged_name(manifest: dict) -> str:
    """Directory name of an --unmerged baseline bundle, e.g. segformer-b0-none-fp32-512x512-b1."""
    res = "x".join(str(v) for v in manifest["resolution"])
    return f"{manifest['model']}-none-{manifest.get('precision', 'fp32')}-{res}-b{manifest.get('batch', 1)}"


def unmerged_artifact(merged: Artifact, backend: str, workdir: Path,
                      progress: Callable[[str], None] = lambda s: None, plugins: list[str] | None = None,
                      exporter: Callable | None = None) -> Artifact:
    """The same model with variant 'none' at the same settings (exported when the backend needs a file)."""
    m = merged.manifest
    if m["variant"] == "none":
        raise EdgemergeError(f"{merged.path}: this bundle is already unmerged (variant 'none'); "
                             "--unmerged needs a merged bundle")
    g = merged.gflops or {}
    if backend == "torch":
        plan = dict(m.get("plan") or {})
        if g:
            plan["gflops"] = {"merged": g["unmerged"], "unmerged": g["unmerged"], "ratio": 1.0}
        return Artifact(merged.path, merged.kind, replace(m, variant="none", plan=plan))

    ck = m.get("checkpoint")
    out = workdir / unmerged_name(m)
    wanted = "model.plan" if backend == "trt" else "model.onnx"
    if (out / MANIFEST).is_file() and (out / wanted).is_file():
        kept = read_artifact(out / wanted)
        same = ("model", "resolution", "batch", "precision", "merge_ops", "seed", "num_classes")
        if kept.manifest.get("variant") == "none" and all(kept.manifest.get(k) == m.get(k) for k in same) and \
                (kept.manifest.get("checkpoint") or {}).get("sha256") == (ck or {}).get("sha256"):
            progress(f"reusing the unmerged baseline in {out}")
            return kept
    opts = m.export_options(variant="none", out=str(out), engine=backend == "trt", plugins=plugins)
    if exporter is None:
        raise EdgemergeError("--unmerged exports the baseline: it needs an exporter (edgemerge.export.export_bundle)")
    workdir.mkdir(parents=True, exist_ok=True)
    progress(f"exporting the unmerged baseline ({m['model']} none) to {out}")
    exporter(opts, progress=progress)
    return read_artifact(out / ("model.plan" if backend == "trt" else "model.onnx"))


def make_runner(artifact: Artifact, backend: str, device: str, opts: BenchOptions):
    from edgemerge.bench import runners

    if backend == "onnxruntime":
        return runners.OnnxrtRunnerFromArtifact(artifact, device, opts.threads)
    if backend == "trt":
        return runners.TrtRunnerFromArtifact(artifact, opts.plugins, opts.load_engine)
    return runners.TorchRunner(artifact, device)


def bench_inputs(artifact: Artifact, seed: int, backend: str) -> dict[str, np.ndarray]:
    name, shape, dtype = artifact.input_spec()
    B, _, H, W = shape
    m = artifact.manifest
    x = normalize(synthetic_images(B, H, W, seed=seed), m.get("mean", (0.5,) * 3), m.get("std", (0.5,) * 3))
    return {name: x if backend == "torch" else x.astype(dtype)}


def _engine_of(artifact: Artifact) -> Artifact:
    """For --backend trt on a bundle dir or its ONNX file: the bundle's model.plan, when built."""
    plan = artifact.path.with_name("model.plan")
    if artifact.kind == "onnx" and plan.is_file():
        return Artifact(plan, "plan", artifact.manifest)
    return artifact


def _check_compatible(a: Artifact, b: Artifact, warn: Callable[[str], None] = lambda s: None) -> None:
    """A baseline of another input shape is refused (the two would not time the same work); one of
    another model (or weights) is said, on one line: a speed-up of b0 over b2 is not merging's."""
    sa, sb = a.input_spec()[1], b.input_spec()[1]
    if tuple(sa) != tuple(sb):
        raise EdgemergeError(f"baseline input shape {list(sb)} differs from the artifact's {list(sa)}; "
                             "compare models exported at the same resolution and batch")
    ma, mb = a.manifest, b.manifest
    ck = lambda m: (m.get("checkpoint") or {}).get("sha256")  # noqa: E731
    if ma.get("model") != mb.get("model"):
        warn(f"the baseline is {mb.get('model')} and the artifact {ma.get('model')}: the speed-up compares two "
             "different models, not merging (use --unmerged, or a baseline exported from the same model)")
    elif ck(ma) != ck(mb):
        warn(f"the baseline's weights (checkpoint {str(ck(mb))[:12]}) are not the artifact's "
             f"({str(ck(ma))[:12]}): timing is comparable, accuracy figures are not")


# ---- the benchmark --------------------------------------------------------------------------------

def run_bench(opts: BenchOptions, progress: Callable[[str], None] = lambda s: None,
              warn: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Time the artifact (and its baseline, interleaved); returns the complete report (bench.json)."""
    if opts.iters < 1:
        raise EdgemergeError(f"--iters must be >= 1, got {opts.iters}")
    if opts.warmup < 0:
        raise EdgemergeError(f"--warmup must be >= 0, got {opts.warmup}")
    if opts.baseline and opts.unmerged:
        raise EdgemergeError("give either --baseline or --unmerged, not both")
    merged = read_artifact(opts.artifact)
    backend = opts.backend or default_backend(merged)
    if backend not in BACKENDS:
        raise EdgemergeError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    device = opts.device or ("cuda" if backend == "trt" else "cpu")
    if device not in DEVICES:
        raise EdgemergeError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    if opts.plugins and backend != "trt":  # they would be silently ignored
        raise EdgemergeError(f"--plugins loads TensorRT plugin libraries, which only an engine uses; "
                             f"{opts.artifact} runs on {backend} here: bench the bundle's model.plan (or "
                             "--backend trt), or drop --plugins")
    _check_profile(opts, backend, device)
    if backend == "trt":
        merged = _engine_of(merged)
    if backend == "trt" and device != "cuda":
        raise EdgemergeError("the trt backend runs on --device cuda only")
    power = None
    if opts.power:
        from edgemerge.bench.power import find_tegrastats

        power = find_tegrastats()  # fail before any heavy work
    if backend == "trt":
        from edgemerge.trt.lib import require_tensorrt

        require_tensorrt()

    tmp = None
    try:
        baseline = None
        if opts.baseline:
            baseline = read_artifact(opts.baseline)
            baseline = _engine_of(baseline) if backend == "trt" else baseline
            _check_compatible(merged, baseline, warn)  # before any timing
        elif opts.unmerged:
            workdir = Path(opts.workdir) if opts.workdir else Path(tmp := tempfile.mkdtemp(prefix="edgemerge-bench-"))
            baseline = unmerged_artifact(merged, backend, workdir, progress, opts.plugins, opts.exporter)
        if baseline is not None:
            _check_compatible(merged, baseline)
        return _timed(merged, baseline, backend, device, opts, power, progress)
    finally:
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _check_profile(opts: BenchOptions, backend: str, device: str) -> None:
    """--profile's preconditions, before any export or timing."""
    if not opts.profile:
        return
    if not (opts.baseline or opts.unmerged):
        raise EdgemergeError("--profile compares the merged model with its baseline: give --unmerged or --baseline")
    if opts.profile_iters < 1:
        raise EdgemergeError(f"--profile-iters must be >= 1, got {opts.profile_iters}")
    if backend == "torch":
        raise EdgemergeError("--profile reads ONNX Runtime's or TensorRT's own profiler; the torch backend has "
                             "none here: bench the bundle's model.onnx or model.plan")
    if backend == "onnxruntime" and device != "cpu":
        raise EdgemergeError("--profile on onnxruntime profiles the CPU provider only (its CUDA kernels run "
                             "asynchronously to the times its profiler records): use --device cpu, or a TensorRT engine")


def _timed(merged: Artifact, baseline: Artifact | None, backend: str, device: str, opts: BenchOptions,
           power: str | None, progress: Callable[[str], None]) -> dict[str, Any]:
    """Load, warm up and time the models, then report; every runner started is stopped, whatever fails."""
    arts = {"merged": merged} if baseline is None else {"merged": merged, "baseline": baseline}
    feed = bench_inputs(merged, opts.seed, backend)
    runners: dict = {}
    try:
        memory = _load_and_warm_up(arts, feed, backend, device, opts, progress, runners)
        times, wall = _interleaved_times(runners, feed, opts.iters, progress)
        energy = _measure_power(runners, feed, power, times, progress) if power else None
        trt_layers = None
        if opts.profile and backend == "trt":  # pragma: no cover - needs TensorRT and a GPU
            from edgemerge.bench.profile import trt_profiles

            trt_layers = trt_profiles(runners, feed, opts.profile_iters, progress)
    finally:
        for runner in runners.values():
            runner.deactivate()
    batch = merged.input_spec()[1][0]
    models = {role: _model_result(art, times[role], memory[role], batch, energy[role] if energy else None)
              for role, art in arts.items()}
    report = _report(merged, baseline, backend, device, opts, models, batch, wall, energy)
    if opts.profile and baseline is not None:  # ONNX Runtime: own sessions, once the timing ones are gone
        from edgemerge.bench.profile import profile_models

        report["profile"] = profile_models(
            merged, baseline, backend, feed, threads=opts.threads, warmup=opts.warmup, iters=opts.profile_iters,
            speedup_p50=report["speedup_p50"], flop_ratio=report["flop_ratio"], trt_layers=trt_layers,
            progress=progress)
    return report


def _load_and_warm_up(arts: dict[str, Artifact], feed: dict, backend: str, device: str, opts: BenchOptions,
                      progress: Callable[[str], None], runners: dict) -> dict[str, dict]:
    """One at a time, so each memory peak is its own; `runners` fills as they start, so the caller can stop them."""
    memory = {}
    for role, art in arts.items():
        progress(f"loading and warming up {role}: {art.label} ({backend}, {device})")
        runner = make_runner(art, backend, device, opts)
        with PeakMemory(device, backend) as mem:
            runner.activate()
            runners[role] = runner
            for _ in range(opts.warmup):
                runner.infer(feed, check_inputs=False)
        memory[role] = engine_memory(runner, art) if backend == "trt" else mem.result
    return memory


def _interleaved_times(runners: dict, feed: dict, iters: int,
                       progress: Callable[[str], None]) -> tuple[dict[str, list[float]], float]:
    """The models in alternation, so that clock boosts and throttling hit all alike: (seconds per role, wall)."""
    times: dict[str, list[float]] = {role: [] for role in runners}
    progress(f"timing {iters} iterations{' interleaved' if len(runners) > 1 else ''}")
    start = time.perf_counter()
    for _ in range(iters):
        for role, runner in runners.items():
            runner.infer(feed, check_inputs=False)
            times[role].append(float(runner.last_inference_time()))
    return times, time.perf_counter() - start


def _model_result(art: Artifact, times: list[float], memory: dict, batch: int, energy: dict | None) -> dict[str, Any]:
    """One model's part of bench.json: what it is, next to how fast it ran."""
    result = {"label": art.label, "path": str(art.path), "model": art.manifest["model"],
              "variant": art.manifest["variant"], "precision": art.manifest.get("precision"),
              "resolution": art.manifest["resolution"], "batch": batch,
              "latency_ms": latency_stats(times, batch), "memory": memory,
              "gflops": (art.gflops or {}).get("merged"), "raw_ms": [t * 1e3 for t in times]}
    result["throughput_ips"] = result["latency_ms"]["throughput_ips"]
    if art.kind == "plan":  # what the engine holds: the merge ops as plugins, or their bodies
        from edgemerge.trt.record import read_record

        result["engine_build"] = read_record(art.path).engine_build()
    if energy:
        result["power"] = energy
    return result


def _report(merged: Artifact, baseline: Artifact | None, backend: str, device: str, opts: BenchOptions,
            models: dict[str, dict], batch: int, wall: float, energy: dict | None) -> dict[str, Any]:
    """The whole of bench.json: the models, the ratios between them and what they ran on."""
    report: dict[str, Any] = {
        "artifact": str(merged.path), "baseline": None if baseline is None else str(baseline.path),
        "baseline_kind": None if baseline is None else ("unmerged (exported by bench)" if opts.unmerged else "given"),
        "backend": backend, "device": device, "iters": opts.iters, "warmup": opts.warmup, "interleaved": True,
        "batch": batch, "seed": opts.seed, "wall_seconds": wall, "models": models,
        "speedup_p50": None, "speedup_mean": None, "flop_ratio": _flop_ratio(merged, baseline),
        "manifest_flop_ratio": (merged.gflops or {}).get("ratio"),
        "threads": (opts.threads or os.cpu_count()) if device == "cpu" else None,
        "versions": versions(), "machine": machine_info(device, backend),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if backend == "onnxruntime":
        report["onnxruntime_session"] = {"intra_op_num_threads": opts.threads or os.cpu_count(),
                                         "execution_mode": "sequential", "graph_optimization": "all"}
    if baseline is not None:
        m, b = models["merged"]["latency_ms"], models["baseline"]["latency_ms"]
        report["speedup_p50"] = b["p50"] / m["p50"]
        report["speedup_mean"] = b["mean"] / m["mean"]
    if energy:
        report["power"] = {"source": "tegrastats", "rail": "VDD_IN / POM_5V_IN"}
    return report


def _flop_ratio(merged: Artifact, baseline: Artifact | None) -> float | None:
    """Baseline GFLOPs / merged GFLOPs from the manifests' plans (the plan's own ratio without a baseline file)."""
    g = merged.gflops or {}
    if baseline is not None and baseline.gflops and g.get("merged"):
        return round(baseline.gflops["merged"] / g["merged"], 3)
    return g.get("ratio")


def _measure_power(runners: dict, feed: dict, exe: str, times: dict[str, list[float]],
                   progress: Callable[[str], None]) -> dict[str, dict]:
    """Each model alone under tegrastats for >= POWER_MIN_SECONDS: mean board power and energy per frame."""
    from edgemerge.bench.power import PowerSampler

    out = {}
    batch = next(iter(feed.values())).shape[0]
    with PowerSampler(exe=exe) as sampler:
        time.sleep(0.3)  # idle reading first
        idle = sampler.mean_mw()
        for role, runner in runners.items():
            progress(f"measuring power of {role}")
            n, t0 = 0, time.perf_counter()
            while n < len(times[role]) or time.perf_counter() - t0 < POWER_MIN_SECONDS:
                runner.infer(feed, check_inputs=False)
                n += 1
            t1 = time.perf_counter()
            mw = sampler.mean_mw(t0, t1)
            per_frame_s = (t1 - t0) / (n * batch)
            out[role] = {"mean_mw": mw, "idle_mw": idle, "iterations": n, "seconds": t1 - t0,
                         "energy_per_frame_mj": None if mw is None else mw * per_frame_s,
                         "samples": sum(1 for t, _ in sampler.samples if t0 <= t <= t1)}
    return out


# ---- output -------------------------------------------------------------------------------------------

def json_bytes(report: dict[str, Any]) -> bytes:
    return (json.dumps(report, indent=2) + "\n").encode()


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    from edgemerge.contracts.files import atomic_write_bytes

    return atomic_write_bytes(path, json_bytes(report), mode=0o644)


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    from edgemerge.contracts.files import atomic_write_bytes

    return atomic_write_bytes(path, plot_bytes(report), mode=0o644)


def plot_bytes(report: dict[str, Any]) -> bytes:
    """Latency distributions side by side (violin + box), and latency per iteration (drift check)."""
    import io

    import matplotlib.pyplot as plt

    fig = plot_figure(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_figure(report: dict[str, Any]):
    """The figure plot_bytes draws; the iterations are numbered 1..N on integer ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    roles = list(report["models"])
    data = [report["models"][r]["raw_ms"] for r in roles]
    labels = [f"{r}\n" + report["models"][r]["label"].replace(" ", "\n", 1) for r in roles]  # no overlap
    colours = ["tab:blue", "tab:orange"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
    if all(len(d) > 1 for d in data):
        parts = ax.violinplot(data, showextrema=False)
        for body, c in zip(parts["bodies"], colours):
            body.set_facecolor(c)
            body.set_alpha(0.35)
    ax.boxplot(data, widths=0.15, showfliers=True)
    ax.set_xticks(range(1, len(roles) + 1), labels, fontsize=8)
    ax.set_ylabel("latency (ms)")
    for i, r in enumerate(roles, start=1):
        ax.annotate(f"p50 {report['models'][r]['latency_ms']['p50']:.1f}", (i, report['models'][r]['latency_ms']['p50']),
                    xytext=(24, 0), textcoords="offset points", fontsize=8, va="center")  # clear of the box
    title = f"{report['backend']} / {report['device']}, {report['iters']} iters"
    if report.get("speedup_p50"):
        title += f": speed-up {report['speedup_p50']:.2f}x (p50), FLOPs {report['flop_ratio'] or float('nan'):.2f}x"
    ax.set_title(title, fontsize=9)
    for r, d, c in zip(roles, data, colours):
        ax2.plot(range(1, len(d) + 1), d, ".", color=c, label=r, markersize=3)
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax2.set_xlabel("iteration (interleaved)")
    ax2.set_ylabel("latency (ms)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for role, m in report["models"].items():
        lat = m["latency_ms"]
        mem = m["memory"].get("peak_mb")
        line = (f"{role:8s} {m['label']:36s} p50 {lat['p50']:9.2f} ms  p90 {lat['p90']:9.2f}  p99 {lat['p99']:9.2f}  "
                f"{m['throughput_ips']:8.2f} img/s  peak mem {'n/a' if mem is None else f'{mem:.0f} MB'}")
        if "power" in m and m["power"].get("energy_per_frame_mj") is not None:
            line += f"  {m['power']['mean_mw']:.0f} mW, {m['power']['energy_per_frame_mj']:.1f} mJ/frame"
        lines.append(line)
        if "engine_build" in m:
            lines.append(f"{'':8s} plugin layers: {m['engine_build']['summary']}")
    if report.get("speedup_p50"):
        fr = report.get("flop_ratio")
        lines.append(f"speed-up {report['speedup_p50']:.2f}x (p50, baseline/merged)   "
                     f"FLOP ratio {'n/a' if fr is None else f'{fr:.2f}x'}")
    if report.get("profile"):
        from edgemerge.bench.profile import table_lines

        lines += [""] + table_lines(report["profile"])
    return lines
