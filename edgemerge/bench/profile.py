"""`edgemerge bench --profile`: where the time goes, per op type, for the merged model and its
baseline, from the backend's own profiler; the merge ops' own share; and a time-based bound.

Why: a FLOP ratio says what merging removes from the work, not from the latency. On ONNX Runtime
CPU, segformer-b0 at 1024x1024, `fast` removes nearly all the attention time there is to remove,
and most of what is left (MixFFN GEMMs, convolutions, layout ops, the head's Resize) is work no
merge site shrinks: the speed-up lands far below the FLOP ratio, and only a per-op profile says
why. This module turns the two profiles into:

- a table per op type: baseline ms, merged ms, ratio, share (merge ops in rows of their own);
- the merge ops' share of the merged model's time;
- the **time bound**: the latency the merged model would reach if the merge ops cost nothing and
  every other op took its baseline time scaled by how much the merge plan shrank its work:

      bound = sum over baseline nodes b of  t_b * work(m(b)) / work(b)

  where m(b) is the merged graph's node that does b's job (see `align`) and `work` is, for
  MatMul / FusedMatMul / Gemm, the FLOPs from the shapes that node actually ran with
  (numel(output) * K, K the contracted dimension of the first operand: attention's Q K^T scales
  with N_q * N_kv, A V with N_q * N_kv as well, a projection with its token count), for Conv the
  output elements times the weights' fan-in, and for every other op the elements it reads and
  writes. **Assumption**: an op's time is linear in that work (FLOPs for products, elements for
  memory-bound ops). That is optimistic for small products (fixed costs per call) and for ops a
  merge breaks a fusion around; nodes the merged graph adds outside the merge ops (and baseline
  nodes with no counterpart, which keep their time) are reported, not hidden. The bound's
  speed-up, baseline time / bound, sits between the measured speed-up and the FLOP ratio: the
  gap to the measured one is what the merge ops and the smaller, less efficient calls cost; the
  gap to the FLOP ratio is time in ops whose cost is not their FLOPs.

Shapes come from the profiler's own events (ONNX Runtime records each node's input and output
shapes) rather than from `onnx.shape_inference` on the exported graph: ORT's fused nodes
(FusedMatMul, SkipLayerNormalization, NCHWc convolutions) exist only after its optimizer ran, so
the exported graph has no shapes for them.

ONNX Runtime (CPU): the graph each session is given is the artifact's own graph with its
`edgemerge` functions inlined by onnx's inliner and every node named (`profiling_graph`). ORT
inlines a model-local function itself before it optimizes, so it runs the same nodes; but it
names the inlined nodes `OpType_<index>`, which says nothing about which op they came from. The
body tensors keep their reserved prefix `__edgemerge_<Op>_` (contracts.graphs.BODY_PREFIX) through
either inliner, so a node (fused ones included) belongs to a merge op when one of its inputs or
outputs has that prefix; ORT's optimized graph (`SessionOptions.optimized_model_filepath`) gives
each profiled node's inputs and outputs. A `--merge-ops native` bundle carries the inlined bodies
already; the same rule finds them. Merged and baseline are run alternately, so both see the same
machine; only the timed runs (the `model_run` windows after the warm-up) are counted.

TensorRT: per-layer times from an `IProfiler` on the execution context (Python route), or from
trtexec's `--exportProfile` JSON (`parse_trtexec_profile`), with layer types from the inspector's
JSON beside the engine (`model.plan.layers.json`). Merge ops: the plugin layers, named after the
manifest's merge sites. No time bound there yet (a layer's shapes are not in either file); the
table, the merge share and the speed-ups are.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.graphs import BODY_PREFIX
from edgemerge.contracts.opspec import DOMAIN, OPS

MERGE_OPS = tuple(OPS)
_MERGE_TENSOR = re.compile(re.escape(BODY_PREFIX) + "(" + "|".join(MERGE_OPS) + ")_")
_KERNEL_SUFFIX = "_kernel_time"
PRODUCTS = ("MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedGemm")
CONVS = ("Conv", "FusedConv", "ConvTranspose", "NhwcConv", "QLinearConv")
ASSUMPTION = ("time linear in the work an op sees: FLOPs for MatMul/Gemm (numel(output) x K, so attention's "
              "Q K^T and A V scale with N_q x N_kv) and Conv, elements read + written for every other op; merge "
              "ops at zero; a baseline node without a counterpart in the merged graph keeps its time")


@dataclass
class NodeTime:
    """One node (ORT) or layer (TensorRT) of a profile: mean time per run and what it works on."""

    name: str
    op: str  # ORT's op type (FusedMatMul, Conv, ...) or TensorRT's LayerType
    ms: float  # per timed run (ORT: the median over the runs; TensorRT: the mean)
    merge_op: str | None = None  # TokenMerge, ... when the node is (part of) a merge op
    work: float | None = None  # see `work`; None where the profile has no shapes
    key: tuple = ()  # what `align` pairs nodes by


# ---- work from shapes -------------------------------------------------------------------------------

def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(int(d) for d in shape)) if shape else 1


def work(op: str, inputs: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]) -> float:
    """The work an op does, in the unit its time is assumed linear in.

    Products (MatMul, FusedMatMul, Gemm): numel(output) * K, where K is the first operand's
    contracted dimension: of its last two dims, the one that is not the output's rows (output[-2])
    (FusedMatMul / Gemm may transpose it). For attention that makes Q K^T scale with N_q * N_kv
    (K = head dim) and A V with N_q * N_kv too (output N_q x d, K = N_kv).
    Conv: numel(output) * the weights' fan-in (numel(W) / W[0], blocked NCHWc weights included).
    Anything else: the elements it reads and writes (layout, normalisation, elementwise ops are
    memory-bound).
    """
    out = outputs[0] if outputs else ()
    if op in PRODUCTS and len(inputs) >= 2 and out:
        a = list(inputs[0])
        if len(a) == 1:
            k = a[0]
        else:
            rows = out[-2] if len(out) >= 2 else 1
            k = a[-1] if a[-2] == rows else a[-2]
        return float(_numel(out)) * float(k)
    if op in CONVS and len(inputs) >= 2 and out and inputs[1]:
        w = list(inputs[1])
        return float(_numel(out)) * float(_numel(w) // max(1, w[0]))
    return float(sum(_numel(s) for s in inputs) + sum(_numel(s) for s in outputs))


# ---- ONNX Runtime -----------------------------------------------------------------------------------

def profiling_graph(onnx_path: str | os.PathLike) -> bytes:
    """The artifact's graph as the profiler is given it: `edgemerge` functions inlined (onnx's
    inliner, no other change: ORT would inline them itself before optimizing) and every node named
    uniquely, so each profiled node can be found in ORT's optimized graph by its name."""
    import onnx

    model = onnx.load(str(onnx_path))
    if model.functions and any(n.domain == DOMAIN for n in model.graph.node):
        import onnx.inliner

        model = onnx.inliner.inline_local_functions(model)
        keep = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    taken: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in taken:
            node.name = f"_profiled_{i}_{node.op_type}"
        taken.add(node.name)
    return model.SerializeToString()


def merge_op_of(tensor_names: Iterable[str]) -> str | None:
    """The merge op whose body a node belongs to: one of its tensors carries `__edgemerge_<Op>_`."""
    for name in tensor_names:
        hit = _MERGE_TENSOR.search(name)
        if hit:
            return hit.group(1)
    return None


def _shapes(entries) -> list[list[int]]:
    out = []
    for entry in entries or []:
        for dims in (entry.values() if isinstance(entry, dict) else []):
            out.append([int(d) for d in dims])
    return out


def parse_ort_profile(events: list[dict], io_names: dict[str, list[str]] | None, runs: int) -> list[NodeTime]:
    """ORT's profiling JSON (a list of trace events) -> one NodeTime per node, in execution order.

    Counts only node events inside the last `runs` `model_run` windows (the warm-up runs come
    first); `ms` is the median over those runs of the node's `dur` (microseconds) in a run: on a
    machine shared with other jobs one preempted run would otherwise move a node's figure by
    its whole stall (seen here: a LayerNormalization at 1.47 ms mean, 0.1 ms median). The
    profiled total is the sum of these medians, not the median of the run totals. `io_names`:
    node name -> its input and output tensor names in ORT's optimized graph (merge ops are found
    by those); None leaves merge_op unset.

    ORT's optimizer adds a few nodes without a name (Casts at the end of a merge body, seen with
    ORT 1.32); the profiler calls them `OpType_<node index>` and the saved optimized graph leaves
    them nameless, so they cannot be looked up. Such a node takes the merge op that every nameless
    node of its op type in the optimized graph agrees on (`io_names` keeps them per op type, see
    `_io_names`); where they disagree it stays unattributed (merge_op None).
    """
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(windows) < runs:
        raise EdgemergeError(f"ONNX Runtime's profile holds {len(windows)} runs, {runs} expected")
    windows = windows[len(windows) - runs:]
    nodes: dict[str, NodeTime] = {}
    per_run: dict[str, list[float]] = {}
    for e in sorted((e for e in events if e.get("cat") == "Node"), key=lambda e: e["ts"]):
        name = e.get("name", "")
        run = next((k for k, (a, b) in enumerate(windows) if a <= e["ts"] <= b), None)
        if not name.endswith(_KERNEL_SUFFIX) or run is None:
            continue
        name = name[: -len(_KERNEL_SUFFIX)]
        args = e.get("args", {})
        node = nodes.get(name)
        if node is None:
            op = args.get("op_name", "?")
            ins, outs = _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))
            node = nodes[name] = NodeTime(name, op, 0.0, _merge_op(name, op, io_names), work(op, ins, outs),
                                          (op, str(args.get("parameter_size", ""))))
        per_run.setdefault(name, [0.0] * runs)[run] += float(e["dur"]) / 1e3
    for name, node in nodes.items():
        node.ms = statistics.median(per_run[name])
    return list(nodes.values())


def _merge_op(name: str, op: str, io_names: dict[str, list[str]] | None) -> str | None:
    if not io_names:
        return None
    if name in io_names:
        return merge_op_of(io_names[name])
    nameless = io_names.get("\0" + op)  # see _io_names
    if nameless is not None and re.fullmatch(re.escape(op) + r"_\d+", name):
        kinds = {merge_op_of(names) for names in nameless}
        return kinds.pop() if len(kinds) == 1 else None
    return None


def _io_names(optimized_path: str) -> dict:
    """Node name -> its input + output names in ORT's optimized graph; nameless nodes are kept
    per op type under "\\0" + op type, as a list of such lists."""
    import onnx

    model = onnx.load(optimized_path, load_external_data=False)
    out: dict = {}
    for n in model.graph.node:
        if n.name:
            out[n.name] = list(n.input) + list(n.output)
        else:
            out.setdefault("\0" + n.op_type, []).append(list(n.input) + list(n.output))
    return out


def ort_profiles(graphs: dict[str, bytes], feed: dict, threads: int | None, warmup: int, iters: int,
                 progress: Callable[[str], None] = lambda s: None) -> dict[str, list[NodeTime]]:
    """Profile each graph with ONNX Runtime's own profiler, the roles alternating run by run.

    One session per role with `enable_profiling` (and `optimized_model_filepath`, to read the
    inputs and outputs of the nodes ORT actually runs); `warmup` runs each, then `iters` runs each
    interleaved; `end_profiling()` returns the JSON's path. Sessions as `edgemerge bench` times
    them (runners.ort_session_options), CPU provider.
    """
    import onnxruntime as ort

    from edgemerge.bench.runners import ort_session_options

    with tempfile.TemporaryDirectory(prefix="edgemerge-profile-") as tmp:
        sessions, optimized = {}, {}
        for role, graph in graphs.items():
            so = ort_session_options(threads)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, role)
            optimized[role] = so.optimized_model_filepath = os.path.join(tmp, f"{role}-optimized.onnx")
            sessions[role] = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        progress(f"profiling {iters} runs each (ONNX Runtime's profiler, interleaved, after {warmup} warm-up)")
        for _ in range(warmup):
            for s in sessions.values():
                s.run(None, feed)
        for _ in range(iters):
            for s in sessions.values():
                s.run(None, feed)
        out = {}
        for role, s in sessions.items():
            events = json.loads(Path(s.end_profiling()).read_text())
            out[role] = parse_ort_profile(events, _io_names(optimized[role]), iters)
        return out


# ---- TensorRT ---------------------------------------------------------------------------------------

def parse_trtexec_profile(data: str | os.PathLike | list) -> tuple[int, list[tuple[str, float]]]:
    """trtexec `--exportProfile` JSON -> (iterations, [(layer name, average ms per iteration)]).

    Format, from NVIDIA/TensorRT samples/common/sampleReporting.cpp, `Profiler::exportJSONProfile`
    (v10.3.0 lines 437-455, v11.1 lines 446-464, identical): a list whose first entry is
    `{"count": mUpdatesCount}` (the iterations profiled), then one `{"name", "timeMs", "averageMs",
    "medianMs", "percentage"}` per layer: timeMs is the layer's total over all iterations,
    averageMs = timeMs / count. Layer names are written without JSON escaping (same lines), so a
    name holding a quote would break the file; none of TensorRT's own do. Layers that never ran
    (`Profiler::print`, v10.3.0 line 414) are still exported, with 0.
    """
    if not isinstance(data, list):
        data = json.loads(Path(data).read_text())
    if not data or not isinstance(data[0], dict) or "count" not in data[0]:
        raise EdgemergeError("not a trtexec --exportProfile file: its first entry must be {\"count\": N}")
    count = int(data[0]["count"])
    layers = []
    for entry in data[1:]:
        if "name" not in entry or ("averageMs" not in entry and "timeMs" not in entry):
            raise EdgemergeError(f"trtexec profile entry without name/averageMs: {entry}")
        avg = entry.get("averageMs")
        layers.append((str(entry["name"]), float(avg if avg is not None else entry["timeMs"] / max(1, count))))
    return count, layers


def trt_nodes(layers: list[tuple[str, float]], layer_info: dict | list | None,
              merge_sites: dict[str, list[str]]) -> list[NodeTime]:
    """Per-layer times -> NodeTime: op = the inspector's LayerType (trtexec --exportLayerInfo with
    --profilingVerbosity=detailed, as build_on_device.sh writes model.plan.layers.json), else
    "layer"; a layer named after a merge site is that merge op (its plugin layer)."""
    kinds: dict[str, str] = {}
    entries = layer_info.get("Layers", []) if isinstance(layer_info, dict) else (layer_info or [])
    for layer in entries:
        if isinstance(layer, dict):
            kinds[str(layer.get("Name", ""))] = str(layer.get("LayerType", "")) or "layer"
    site_op = {name: op for op, names in merge_sites.items() for name in names}
    out = []
    for name, ms in layers:
        op = kinds.get(name, "layer")
        out.append(NodeTime(name, op, ms, site_op.get(name), None, (op,)))
    return out


def trt_profiles(runners: dict, feed: dict, iters: int, progress: Callable[[str], None] = lambda s: None,
                 ) -> dict[str, list[tuple[str, float]]]:  # pragma: no cover - needs TensorRT and a GPU
    """Per-layer mean ms of activated polygraphy TrtRunners, from an IProfiler on each execution
    context (`IExecutionContext.profiler`, `IProfiler.report_layer_time(layer_name, ms)`: the
    Python bindings' python/src/infer/pyCore.cpp, v10.3.0 lines 762-784 and 1035, v11.1 lines
    1001-1023 and 1294), roles alternating. Not run here: no TensorRT and no GPU on this machine."""
    import tensorrt as trt

    class Collect(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.ms: dict[str, float] = {}

        def report_layer_time(self, layer_name, ms):
            self.ms[layer_name] = self.ms.get(layer_name, 0.0) + float(ms)

    profilers = {}
    for role, runner in runners.items():
        profilers[role] = runner.context.profiler = Collect()
    progress(f"profiling {iters} runs each (TensorRT IProfiler, interleaved)")
    for _ in range(iters):
        for runner in runners.values():
            runner.infer(feed, check_inputs=False)
    return {role: [(name, ms / iters) for name, ms in p.ms.items()] for role, p in profilers.items()}


# ---- the comparison ---------------------------------------------------------------------------------

def align(merged: list[NodeTime], baseline: list[NodeTime]) -> list[tuple[int | None, int | None]]:
    """Pair the merged graph's nodes (merge ops left out) with the baseline's, in execution order.

    Both graphs come from the same module code; merging inserts its ops and changes token
    counts, not the weights. So nodes are paired by a longest-matching-blocks alignment
    (difflib, no junk heuristic) of their keys, op type + the bytes of weights the node holds
    (ORT's `parameter_size`): node names cannot be used, the exporter numbers them globally and
    every inserted merge op shifts the numbers. Returns (merged index | None, baseline index |
    None) for every node of both lists except the merge ops.
    """
    m_idx = [i for i, n in enumerate(merged) if n.merge_op is None]
    sm = difflib.SequenceMatcher(None, [merged[i].key for i in m_idx], [n.key for n in baseline], autojunk=False)
    pairs: list[tuple[int | None, int | None]] = []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            pairs += [(m_idx[i1 + k], j1 + k) for k in range(i2 - i1)]
        else:
            pairs += [(m_idx[i], None) for i in range(i1, i2)] + [(None, j) for j in range(j1, j2)]
    return pairs


def time_bound(merged: list[NodeTime], baseline: list[NodeTime],
               pairs: list[tuple[int | None, int | None]] | None = None) -> dict[str, Any]:
    """The time bound (module docstring): merge ops at 0, each baseline node's time scaled by its
    counterpart's work / its own; a baseline node without counterpart (or without shapes) keeps its
    time; nodes only the merged graph has are left out of the bound and reported as `extra_ms`."""
    pairs = align(merged, baseline) if pairs is None else pairs
    per_op: dict[str, float] = {}
    bound = kept = extra = 0.0
    matched = 0
    for i, j in pairs:
        if j is None:
            extra += merged[i].ms
            continue
        b = baseline[j]
        if i is not None and b.work and merged[i].work is not None:
            t = b.ms * merged[i].work / b.work
            matched += 1
        else:
            t = b.ms
            kept += b.ms
        per_op[b.op] = per_op.get(b.op, 0.0) + t
        bound += t
    return {"ms": bound, "per_op_ms": per_op, "matched_nodes": matched, "baseline_nodes": len(baseline),
            "unscaled_baseline_ms": kept, "extra_ms": extra}


def compare(merged: list[NodeTime], baseline: list[NodeTime], *, speedup_p50: float | None = None,
            flop_ratio: float | None = None, source: str = "", iters: int = 0, warmup: int = 0,
            bound: bool = True) -> dict[str, Any]:
    """The `profile` section of bench.json: totals, per op type, merge ops, the speed-ups and bounds."""
    base_total = sum(n.ms for n in baseline)
    merged_total = sum(n.ms for n in merged)
    merge_ms: dict[str, float] = {}
    ops: dict[str, dict[str, float]] = {}
    for n in baseline:
        ops.setdefault(n.op, {"baseline_ms": 0.0, "merged_ms": 0.0})["baseline_ms"] += n.ms
    for n in merged:
        if n.merge_op:
            merge_ms[n.merge_op] = merge_ms.get(n.merge_op, 0.0) + n.ms
        else:
            ops.setdefault(n.op, {"baseline_ms": 0.0, "merged_ms": 0.0})["merged_ms"] += n.ms
    tb = time_bound(merged, baseline) if bound and all(n.work is not None for n in baseline) else None
    rows = []
    for op, t in sorted(ops.items(), key=lambda kv: -max(kv[1]["baseline_ms"], kv[1]["merged_ms"])):
        rows.append({"op": op, "baseline_ms": t["baseline_ms"], "merged_ms": t["merged_ms"],
                     "ratio": t["baseline_ms"] / t["merged_ms"] if t["merged_ms"] > 0 and t["baseline_ms"] > 0 else None,
                     "share_baseline": t["baseline_ms"] / base_total if base_total else 0.0,
                     "share_merged": t["merged_ms"] / merged_total if merged_total else 0.0,
                     "bound_ms": None if tb is None else tb["per_op_ms"].get(op, 0.0)})
    total_merge = sum(merge_ms.values())
    out: dict[str, Any] = {
        "source": source, "iters": iters, "warmup": warmup,
        "baseline_ms": base_total, "merged_ms": merged_total,
        "merge_ops_ms": merge_ms, "merge_ms": total_merge,
        "merge_share": total_merge / merged_total if merged_total else 0.0,
        "speedup_profiled": base_total / merged_total if merged_total else None,
        "speedup_p50": speedup_p50, "flop_ratio": flop_ratio,
        "time_bound_ms": None, "time_bound_speedup": None, "time_bound": None,
        "assumption": ASSUMPTION, "op_types": rows,
        "nodes": {"merged": [asdict(n) for n in merged], "baseline": [asdict(n) for n in baseline]},
    }
    if tb is not None:
        out["time_bound_ms"] = tb["ms"]
        out["time_bound_speedup"] = base_total / tb["ms"] if tb["ms"] else None
        out["time_bound"] = {k: v for k, v in tb.items() if k != "per_op_ms"}
    else:
        out["time_bound"] = {"why_not": "the profile has no per-node shapes (TensorRT's per-layer profile)"}
    return out


# ---- running it from bench --------------------------------------------------------------------------

def profile_models(merged, baseline, backend: str, feed: dict, *, threads: int | None, warmup: int, iters: int,
                   speedup_p50: float | None, flop_ratio: float | None, trt_layers: dict | None = None,
                   progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """bench's profile pass. ONNX Runtime: sessions of its own (CPU), after the timing is done and
    its sessions are gone. TensorRT: `trt_layers` from `trt_profiles` on bench's own runners, and
    the layer types from `model.plan.layers.json` beside each engine."""
    if backend == "onnxruntime":
        graphs = {"merged": profiling_graph(merged.path), "baseline": profiling_graph(baseline.path)}
        nodes = ort_profiles(graphs, feed, threads, max(1, warmup), iters, progress)
        source = ("ONNX Runtime profiler (SessionOptions.enable_profiling), CPUExecutionProvider, "
                  f"{threads or os.cpu_count()} thread(s)")
        return compare(nodes["merged"], nodes["baseline"], speedup_p50=speedup_p50, flop_ratio=flop_ratio,
                       source=source, iters=iters, warmup=max(1, warmup))
    if backend == "trt" and trt_layers is not None:
        from edgemerge.device.layers import merge_sites

        nodes = {}
        for role, art in (("merged", merged), ("baseline", baseline)):
            info_path = Path(art.path).with_name(Path(art.path).name + ".layers.json")
            info = json.loads(info_path.read_text()) if info_path.is_file() else None
            nodes[role] = trt_nodes(trt_layers[role], info, merge_sites(art.manifest))
        return compare(nodes["merged"], nodes["baseline"], speedup_p50=speedup_p50, flop_ratio=flop_ratio,
                       source="TensorRT IProfiler (per layer)", iters=iters, warmup=warmup, bound=False)
    raise EdgemergeError(f"--profile reads ONNX Runtime's or TensorRT's own profiler; not available for {backend}")


# ---- output -----------------------------------------------------------------------------------------

def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def table_lines(p: dict[str, Any], top: int = 14) -> list[str]:
    """The profile as printed by bench: per op type, then the merge ops, totals, speed-ups, bounds."""
    bounded = p.get("time_bound_ms") is not None
    head = f"{'op type':24s} {'baseline ms':>12s} {'merged ms':>10s} {'ratio':>7s} {'share':>6s}"
    lines = [f"profile ({p['source']}; {p['iters']} runs each, interleaved)",
             head + (f" {'bound ms':>9s}" if bounded else "")]
    rows = p["op_types"]
    shown, rest = rows[:top], rows[top:]
    for r in shown:
        line = (f"{r['op']:24s} {r['baseline_ms']:12.2f} {r['merged_ms']:10.2f} "
                f"{'-' if r['ratio'] is None else format(r['ratio'], '.2f') + 'x':>7s} {100 * r['share_merged']:5.1f}%")
        lines.append(line + (f" {r['bound_ms']:9.2f}" if bounded else ""))
    if rest:
        b, m = sum(r["baseline_ms"] for r in rest), sum(r["merged_ms"] for r in rest)
        line = (f"{f'{len(rest)} other op types':24s} {b:12.2f} {m:10.2f} {_x(b / m if m else None):>7s} "
                f"{100 * m / p['merged_ms'] if p['merged_ms'] else 0:5.1f}%")
        lines.append(line + (f" {sum(r['bound_ms'] for r in rest):9.2f}" if bounded else ""))
    for op, ms in sorted(p["merge_ops_ms"].items()):
        lines.append(f"{op + ' (merge op)':24s} {'-':>12s} {ms:10.2f} {'-':>7s} {100 * ms / p['merged_ms']:5.1f}%"
                     + (f" {0.0:9.2f}" if bounded else ""))
    lines.append(f"{'total':24s} {p['baseline_ms']:12.2f} {p['merged_ms']:10.2f} {_x(p['speedup_profiled']):>7s} "
                 f"{100.0:5.1f}%" + (f" {p['time_bound_ms']:9.2f}" if bounded else ""))
    lines.append(f"merge ops: {p['merge_ms']:.2f} ms, {100 * p['merge_share']:.1f}% of the merged model's time")
    tb = p.get("time_bound") or {}
    bound_text = (f"time bound {_x(p['time_bound_speedup'])} ({p['time_bound_ms']:.1f} ms: merge ops free, every op "
                  f"scaled by its work; {tb.get('matched_nodes')}/{tb.get('baseline_nodes')} baseline nodes matched)"
                  if bounded else f"time bound n/a ({tb.get('why_not', '')})")
    lines.append(f"speed-up measured {_x(p['speedup_p50'])} (p50; profiled ops {_x(p['speedup_profiled'])})   "
                 f"FLOP ratio {_x(p['flop_ratio'])}   {bound_text}")
    return lines


def plot_bytes(p: dict[str, Any], top: int = 8, title: str = "") -> bytes:
    """A stacked bar per model (baseline, merged, and the time bound): ms per op type, the `top`
    op types by baseline time each in its own colour, the rest as 'other', merge ops hatched."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = p["op_types"]
    named = [r["op"] for r in sorted(rows, key=lambda r: -r["baseline_ms"])[:top]]
    bars = [("baseline", {r["op"]: r["baseline_ms"] for r in rows}), ("merged", {r["op"]: r["merged_ms"] for r in rows})]
    if p.get("time_bound_ms") is not None:
        bars.append(("time bound", {r["op"]: r["bound_ms"] or 0.0 for r in rows}))
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.7 * len(bars)))
    cmap = plt.get_cmap("tab10")
    labels_done: set[str] = set()
    for y, (name, per_op) in enumerate(bars):
        left = 0.0
        colours = [cmap(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # tab10 less its grey (that is 'other')
        segments = [(op, per_op.get(op, 0.0), colours[k % len(colours)], None) for k, op in enumerate(named)]
        segments.append(("other", sum(v for op, v in per_op.items() if op not in named), "lightgrey", None))
        if name == "merged":
            shades = ("black", "dimgrey", "darkgrey", "silver")
            segments += [(f"{op} (merge op)", ms, shades[k % 4], "//")
                         for k, (op, ms) in enumerate(sorted(p["merge_ops_ms"].items()))]
        for label, width, colour, hatch in segments:
            if width <= 0:
                continue
            ax.barh(y, width, left=left, color=colour, hatch=hatch, edgecolor="white" if hatch else None,
                    label=None if label in labels_done else label)
            labels_done.add(label)
            left += width
        ax.annotate(f"{left:.1f} ms", (left, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars])
    ax.invert_yaxis()
    ax.set_xlabel("ms per run (sum of op times)")
    ax.set_xlim(0, max(p["baseline_ms"], p["merged_ms"]) * 1.15)
    head = title or p.get("source", "").split(";")[0]
    ax.set_title(f"{head}\nspeed-up measured {_x(p['speedup_p50'])}, profiled {_x(p['speedup_profiled'])}, "
                 f"time bound {_x(p['time_bound_speedup'])}, FLOP ratio {_x(p['flop_ratio'])}; "
                 f"merge ops {100 * p['merge_share']:.1f}%", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
