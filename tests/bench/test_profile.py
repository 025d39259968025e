"""`edgemerge bench --profile`: the time bound on profiles whose answer is known by hand (and the
planted wrong rules it must not agree with), the work rule per op, ORT's and trtexec's profile
formats, and the command end to end on tiny segformer-b0 bundles (128x128) on ONNX Runtime CPU.
"""

import json

import pytest
from click.testing import CliRunner

from edgemerge.bench.profile import (NodeTime, align, compare, merge_op_of, parse_ort_profile,
                                     parse_trtexec_profile, table_lines, time_bound, trt_nodes, work)
from edgemerge.contracts.errors import EdgemergeError


# ---- the work rule --------------------------------------------------------------------------------

def test_work_of_products_convs_and_the_rest():
    # attention Q K^T: [1, h, Nq, d] x [1, h, d, Nkv] -> N_q * N_kv * d per head
    assert work("MatMul", [[1, 2, 1024, 32], [1, 2, 32, 256]], [[1, 2, 1024, 256]]) == 2 * 1024 * 256 * 32
    # A V: [1, h, Nq, Nkv] x [1, h, Nkv, d]: K is N_kv (the first operand's last dim), not d
    assert work("MatMul", [[1, 2, 1024, 256], [1, 2, 256, 32]], [[1, 2, 1024, 32]]) == 2 * 1024 * 32 * 256
    # FusedMatMul with transA: A is [K, M]; K is the dim that is not the output's rows
    assert work("FusedMatMul", [[64, 100], [64, 8]], [[100, 8]]) == 100 * 8 * 64
    # Gemm with a 2-D weight (transB): out [N, C_out], K = C_in
    assert work("Gemm", [[256, 32], [64, 32], [64]], [[256, 64]]) == 256 * 64 * 32
    # Conv: output elements x fan-in (C_in/g * kh * kw)
    assert work("Conv", [[1, 3, 64, 64], [32, 3, 7, 7], [32]], [[1, 32, 16, 16]]) == 32 * 16 * 16 * 3 * 7 * 7
    # anything else: elements read + written
    assert work("Add", [[1, 10, 4], [4]], [[1, 10, 4]]) == 40 + 4 + 40


# ---- the time bound by hand -----------------------------------------------------------------------

def _node(name, op, ms, ins, outs, merge_op=None, work_fn=work, weights=""):
    return NodeTime(name, op, ms, merge_op, work_fn(op, ins, outs), (op, weights))


def _pair(work_fn=work):
    """Baseline: one attention with N_q = 1024 queries on N_kv = 256 keys/values; merged: the
    keys/values merged to 64 (a quarter), one TokenMerge before them. Per node: the baseline time,
    and the fraction of its work left after merging (conv 1, kv projection 1/4, QK^T 1/4, AV 1/4,
    Resize 1)."""
    baseline = [
        _node("conv", "Conv", 10.0, [[1, 3, 64, 64], [32, 3, 7, 7]], [[1, 32, 16, 16]], work_fn=work_fn, weights="w1"),
        _node("kv", "Gemm", 6.0, [[256, 32], [32, 64]], [[256, 64]], work_fn=work_fn, weights="w2"),
        _node("qk", "FusedMatMul", 20.0, [[1, 1, 1024, 32], [1, 1, 32, 256]], [[1, 1, 1024, 256]], work_fn=work_fn),
        _node("av", "MatMul", 8.0, [[1, 1, 1024, 256], [1, 1, 256, 32]], [[1, 1, 1024, 32]], work_fn=work_fn),
        _node("up", "Resize", 4.0, [[1, 32, 16, 16]], [[1, 32, 64, 64]], work_fn=work_fn),
    ]
    merged = [
        _node("conv_m", "Conv", 10.5, [[1, 3, 64, 64], [32, 3, 7, 7]], [[1, 32, 16, 16]], work_fn=work_fn, weights="w1"),
        _node("merge", "MatMul", 3.0, [[1, 64, 256], [1, 256, 32]], [[1, 64, 32]], merge_op="TokenMerge", work_fn=work_fn),
        _node("kv_m", "Gemm", 2.5, [[64, 32], [32, 64]], [[64, 64]], work_fn=work_fn, weights="w2"),
        _node("qk_m", "FusedMatMul", 7.0, [[1, 1, 1024, 32], [1, 1, 32, 64]], [[1, 1, 1024, 64]], work_fn=work_fn),
        _node("av_m", "MatMul", 3.0, [[1, 1, 1024, 64], [1, 1, 64, 32]], [[1, 1, 1024, 32]], work_fn=work_fn),
        _node("up_m", "Resize", 4.0, [[1, 32, 16, 16]], [[1, 32, 64, 64]], work_fn=work_fn),
    ]
    return merged, baseline


BY_HAND = 10.0 + 6.0 / 4 + 20.0 / 4 + 8.0 / 4 + 4.0  # merge op at 0


def test_time_bound_by_hand():
    merged, baseline = _pair()
    assert [(merged[i].name if i is not None else None, baseline[j].name if j is not None else None)
            for i, j in align(merged, baseline)] == [("conv_m", "conv"), ("kv_m", "kv"), ("qk_m", "qk"),
                                                     ("av_m", "av"), ("up_m", "up")]
    tb = time_bound(merged, baseline)
    assert tb["ms"] == pytest.approx(BY_HAND) and tb["matched_nodes"] == 5 and tb["extra_ms"] == 0
    assert tb["per_op_ms"] == pytest.approx({"Conv": 10.0, "Gemm": 1.5, "FusedMatMul": 5.0, "MatMul": 2.0, "Resize": 4.0})
    p = compare(merged, baseline, speedup_p50=1.5, flop_ratio=2.0, source="by hand", iters=1)
    assert p["baseline_ms"] == 48.0 and p["merged_ms"] == 30.0 and p["merge_ms"] == 3.0
    assert p["merge_share"] == pytest.approx(0.1) and p["merge_ops_ms"] == {"TokenMerge": 3.0}
    assert p["time_bound_ms"] == pytest.approx(BY_HAND)
    assert p["time_bound_speedup"] == pytest.approx(48.0 / BY_HAND) and p["speedup_profiled"] == pytest.approx(1.6)
    rows = {r["op"]: r for r in p["op_types"]}
    assert rows["MatMul"]["merged_ms"] == 3.0  # the merge op's MatMul is not counted as the model's MatMul
    assert rows["FusedMatMul"]["ratio"] == pytest.approx(20 / 7)
    text = "\n".join(table_lines(p))
    assert "TokenMerge (merge op)" in text and "10.0% of the merged model's time" in text
    assert f"time bound {48.0 / BY_HAND:.2f}x" in text and "FLOP ratio 2.00x" in text


def test_planted_wrong_rules_change_the_bound():
    """Each rule the bound rests on, planted wrong, gives another figure than the hand-made one."""
    merged, baseline = _pair()
    right = time_bound(merged, baseline)["ms"]
    assert right == pytest.approx(BY_HAND)

    # 1. K from the wrong operand (the second's last dim): A V no longer shrinks with N_kv
    def k_from_b(op, ins, outs):
        if op in ("MatMul", "FusedMatMul", "Gemm"):
            return float(work("Add", [], outs)) * ins[1][-1]
        return work(op, ins, outs)

    # A V keeps its full time (K = d does not shrink); Q K^T shrinks twice (N_kv in K and output)
    assert time_bound(*_pair(k_from_b))["ms"] == pytest.approx(10.0 + 6.0 / 4 + 20.0 / 16 + 8.0 + 4.0)

    # 2. the tokens an op writes (output rows) instead of its work: attention would not shrink at all
    rows_only = lambda op, ins, outs: float(outs[0][-2]) if len(outs[0]) > 1 else 1.0  # noqa: E731
    assert time_bound(*_pair(rows_only))["ms"] == pytest.approx(10.0 + 6.0 / 4 + 20.0 + 8.0 + 4.0)

    # 3. the merge op not recognised as one: its time drops out of the merge share (10% -> 0) and
    #    shows as a node only the merged graph has; the bound leaves it out either way
    unmarked = [NodeTime(n.name, n.op, n.ms, None, n.work, n.key) for n in merged]
    p = compare(unmarked, baseline)
    assert compare(merged, baseline)["merge_share"] == pytest.approx(0.1) and p["merge_share"] == 0
    assert p["time_bound"]["extra_ms"] == 3.0 and p["time_bound_ms"] == pytest.approx(BY_HAND)

    # 4. nodes paired by position (no alignment): the merge op shifts every pair after it
    by_position = [(i, j) for i, j in zip(range(1, len(merged)), range(1, len(baseline)))] + [(0, 0)]
    assert time_bound(merged, baseline, by_position)["ms"] != pytest.approx(BY_HAND)


def test_unmatched_nodes_keep_their_time_or_stay_out():
    """A baseline node without counterpart keeps its time; a node only the merged graph has
    (the Log of proportional attention) is reported as extra, not put in the bound."""
    merged, baseline = _pair()
    merged.insert(4, _node("log", "Log", 0.5, [[1, 64]], [[1, 64]]))
    baseline.append(_node("tail", "Relu", 1.0, [[1, 10]], [[1, 10]]))
    tb = time_bound(merged, baseline)
    assert tb["ms"] == pytest.approx(BY_HAND + 1.0) and tb["extra_ms"] == 0.5
    assert tb["unscaled_baseline_ms"] == 1.0 and tb["matched_nodes"] == 5


# ---- ONNX Runtime's profile format ----------------------------------------------------------------

def _event(cat, name, ts, dur, **args):
    return {"cat": cat, "pid": 1, "tid": 1, "dur": dur, "ts": ts, "ph": "X", "name": name, "args": args}


def test_parse_ort_profile_counts_only_the_timed_runs():
    shapes = {"input_type_shape": [{"float": [1, 4, 8]}, {"float": [8, 2]}], "output_type_shape": [{"float": [1, 4, 2]}]}
    events = [
        _event("Session", "model_run", 0, 100),  # warm-up
        _event("Node", "mm_kernel_time", 10, 50, op_name="MatMul", parameter_size="64", **shapes),
        _event("Session", "model_run", 200, 100),
        _event("Node", "mm_kernel_time", 210, 40, op_name="MatMul", parameter_size="64", **shapes),
        _event("Node", "mm_fence_before", 205, 1, op_name="MatMul"),  # not a kernel time
        _event("Node", "Cast_17_kernel_time", 260, 6, op_name="Cast", input_type_shape=[], output_type_shape=[]),
        _event("Session", "model_run", 400, 100),
        _event("Node", "mm_kernel_time", 410, 60, op_name="MatMul", parameter_size="64", **shapes),
        _event("Node", "Cast_17_kernel_time", 460, 10, op_name="Cast", input_type_shape=[], output_type_shape=[]),
        _event("Session", "model_run", 600, 100),
        _event("Node", "mm_kernel_time", 610, 900, op_name="MatMul", parameter_size="64", **shapes),  # a stall
        _event("Node", "Cast_17_kernel_time", 660, 7, op_name="Cast", input_type_shape=[], output_type_shape=[]),
    ]
    io = {"mm": ["x", "w", "y"], "\0Cast": [["__edgemerge_TokenMerge_17_0__2", "getitem"]]}
    nodes = parse_ort_profile(events, io, runs=3)
    assert [(n.name, n.op, n.merge_op) for n in nodes] == [("mm", "MatMul", None), ("Cast_17", "Cast", "TokenMerge")]
    assert nodes[0].ms == pytest.approx(60 / 1e3) and nodes[1].ms == pytest.approx(7 / 1e3)  # medians of 3 runs
    assert parse_ort_profile(events, io, runs=2)[0].ms == pytest.approx((60 + 900) / 2 / 1e3)  # the warm-up left out
    assert nodes[0].work == 4 * 2 * 8 and nodes[0].key == ("MatMul", "64")
    # nameless nodes of one op type that disagree on their merge op: left unattributed
    io["\0Cast"].append(["a", "b"])
    assert parse_ort_profile(events, io, runs=3)[1].merge_op is None
    with pytest.raises(EdgemergeError, match="4 runs"):
        parse_ort_profile(events, io, runs=5)


def test_merge_op_of_both_inliners_names():
    assert merge_op_of(["x", "__edgemerge_TokenMatchBipartite_14_0__1"]) == "TokenMatchBipartite"  # onnx's inliner
    assert merge_op_of(["_inlfunc_TokenUnmerge___edgemerge_TokenUnmerge_3_0"]) == "TokenUnmerge"  # ORT's
    assert merge_op_of(["node_MatMul_14", "token_merge"]) is None


# ---- TensorRT: trtexec --exportProfile, as sampleReporting.cpp writes it -------------------------

# Written as Profiler::exportJSONProfile does (NVIDIA/TensorRT samples/common/sampleReporting.cpp,
# v10.3.0 lines 437-455, v11.1 lines 446-464): "[", the count line, then ", {" per layer.
TRTEXEC_PROFILE = """[
  { "count" : 10 }
, { "name" : "node_conv2d + node_relu", "timeMs" : 12.5, "averageMs" : 1.25, "medianMs" : 1.2, "percentage" : 50 }
, { "name" : "node_token_merge__1", "timeMs" : 2.5, "averageMs" : 0.25, "medianMs" : 0.25, "percentage" : 10 }
, { "name" : "{ForeignNode[node_MatMul_14...node_Softmax_16]}", "timeMs" : 10, "averageMs" : 1, "medianMs" : 1, "percentage" : 40 }
]
"""


def test_trtexec_profile_fixture(tmp_path):
    path = tmp_path / "merged.profile.json"
    path.write_text(TRTEXEC_PROFILE)
    count, layers = parse_trtexec_profile(path)
    assert count == 10 and layers[1] == ("node_token_merge__1", 0.25)
    info = {"Layers": [{"Name": "node_conv2d + node_relu", "LayerType": "CaskConvolution"},
                       {"Name": "node_token_merge__1", "LayerType": "PluginV3"},
                       {"Name": "{ForeignNode[node_MatMul_14...node_Softmax_16]}", "LayerType": "Myelin"}],
            "Bindings": ["images", "logits"]}
    merged = trt_nodes(layers, info, {"TokenMerge": ["node_token_merge__1"]})
    assert [(n.op, n.merge_op) for n in merged] == [("CaskConvolution", None), ("PluginV3", "TokenMerge"), ("Myelin", None)]
    baseline = trt_nodes([("node_conv2d + node_relu", 1.3), ("{ForeignNode[x]}", 2.0)], info, {})
    p = compare(merged, baseline, speedup_p50=1.2, flop_ratio=1.5, source="trtexec", bound=False)
    assert p["merge_ms"] == 0.25 and p["time_bound_ms"] is None and "why_not" in p["time_bound"]
    assert "time bound n/a" in "\n".join(table_lines(p))
    for bad in ("[]", '[{"name": "x"}]', '[{"count": 1}, {"timeMs": 1}]'):
        path.write_text(bad)
        with pytest.raises(EdgemergeError):
            parse_trtexec_profile(path)


def test_trt_profiler_runtime():
    pytest.importorskip("tensorrt", reason="the IProfiler route needs TensorRT and an NVIDIA GPU (none here)")
    pytest.skip("needs TensorRT + an NVIDIA GPU and a built engine pair: run `edgemerge bench model.plan "
                "--unmerged --profile` on the device")


# ---- end to end on ONNX Runtime ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    from edgemerge.contracts.manifest import ExportOptions
    from edgemerge.export.bundle import export_bundle

    root = tmp_path_factory.mktemp("profile")
    out = {}
    for variant in ("fast", "none"):
        out[variant] = root / f"b0-{variant}"
        export_bundle(ExportOptions(model="segformer-b0", variant=variant, resolution=(128, 128), out=str(out[variant])))
    return out


@pytest.mark.slow
def test_bench_profile_onnxruntime(bundles, tmp_path):
    from edgemerge.cli import main

    jpath = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(bundles["fast"]), "--baseline", str(bundles["none"]), "--iters", "2",
                                       "--warmup", "1", "--threads", "1", "--profile", "--profile-iters", "2",
                                       "--report", str(jpath)])
    assert result.exit_code == 0, result.output
    p = json.loads(jpath.read_text())["profile"]
    sites = json.loads((bundles["fast"] / "manifest.json").read_text())["merge_sites"]
    assert set(p["merge_ops_ms"]) == set(sites) and p["merge_ms"] > 0  # every merge op found in ORT's profile
    assert p["time_bound"]["matched_nodes"] == p["time_bound"]["baseline_nodes"] > 100
    assert sum(r["merged_ms"] for r in p["op_types"]) + p["merge_ms"] == pytest.approx(p["merged_ms"])
    assert sum(r["bound_ms"] for r in p["op_types"]) == pytest.approx(p["time_bound_ms"])
    assert p["time_bound_ms"] < p["baseline_ms"] and p["flop_ratio"] > 1
    assert (tmp_path / "bench-profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(merge op)" in result.output and "time bound" in result.output and "profile plot:" in result.output


@pytest.mark.slow
def test_native_graph_profiles_the_same_merge_ops(bundles, tmp_path):
    """The same model with its functions inlined and folded (what --merge-ops native exports): the
    merge ops are still found, by the body tensors' prefix, without any node name to go by."""
    import numpy as np
    import onnx

    from edgemerge.bench.profile import ort_profiles, profiling_graph
    from edgemerge.contracts.graphs import inline_merge_ops

    native = tmp_path / "model.onnx"
    onnx.save(inline_merge_ops(onnx.load(str(bundles["fast"] / "model.onnx"))), str(native))
    feed = {"images": np.zeros((1, 3, 128, 128), np.float32)}
    nodes = ort_profiles({"plugin": profiling_graph(bundles["fast"] / "model.onnx"), "native": profiling_graph(native)},
                         feed, threads=1, warmup=1, iters=1)
    sites = json.loads((bundles["fast"] / "manifest.json").read_text())["merge_sites"]
    for role in ("plugin", "native"):
        assert {n.merge_op for n in nodes[role] if n.merge_op} == set(sites), role


def test_profile_refusals(bundles):
    from edgemerge.cli import main

    for args, words in (([], "--unmerged or --baseline"),
                        (["--baseline", str(bundles["none"]), "--backend", "torch"], "torch backend"),
                        (["--baseline", str(bundles["none"]), "--profile-iters", "0"], "profile-iters")):
        result = CliRunner().invoke(main, ["bench", str(bundles["fast"]), "--profile", *args])
        assert result.exit_code == 2, result.output
        assert words in result.output, result.output


def test_profile_models_trt_from_layer_times(tmp_path):
    """bench's TensorRT branch after the IProfiler: per-layer times of both engines + the layer
    information build_on_device.sh leaves beside each (model.plan.layers.json) -> the profile."""
    from types import SimpleNamespace

    from edgemerge.bench.profile import profile_models

    arts = {}
    for role, layers in (("merged", [("conv", "CaskConvolution"), ("node_token_merge__1", "PluginV3")]),
                         ("baseline", [("conv", "CaskConvolution")])):
        (tmp_path / role).mkdir()
        (tmp_path / role / "model.plan.layers.json").write_text(
            json.dumps({"Layers": [{"Name": n, "LayerType": t} for n, t in layers], "Bindings": []}))
        sites = {"TokenMerge": ["node_token_merge__1"]} if role == "merged" else {}
        arts[role] = SimpleNamespace(path=tmp_path / role / "model.plan", manifest={"merge_sites": sites})
    p = profile_models(arts["merged"], arts["baseline"], "trt", {}, threads=None, warmup=1, iters=5,
                       speedup_p50=1.1, flop_ratio=1.3,
                       trt_layers={"merged": [("conv", 2.0), ("node_token_merge__1", 0.5)], "baseline": [("conv", 2.2)]})
    assert p["merge_ops_ms"] == {"TokenMerge": 0.5} and p["merge_share"] == pytest.approx(0.2)
    assert p["op_types"][0]["op"] == "CaskConvolution" and p["time_bound_ms"] is None
    with pytest.raises(EdgemergeError, match="torch"):
        profile_models(arts["merged"], arts["baseline"], "torch", {}, threads=None, warmup=1, iters=1,
                       speedup_p50=None, flop_ratio=None)
