"""Each op's ONNX form (node + function body, and the inlined native body) equals the PyTorch reference.

One `edgemerge` node at a time, run by ONNX Runtime: the body it carries (what TensorRT inlines
without our plugin) and the same body inlined and constant-folded (`--merge-ops native`).
Selections must be identical; merged values equal up to summation order.
"""

from __future__ import annotations

import numpy as np
import onnx.inliner
import onnxruntime as ort
import onnxscript.optimizer
import pytest
import torch

from edgemerge.export.bundle import native_problems
from edgemerge.export.functions import OPS, function_proto, one_op_model
from edgemerge.contracts.graphs import BODY_PREFIX
from edgemerge.contracts.opspec import OPS as SPEC_OPS
from edgemerge.merge import core, ops


def _run_both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
    """Outputs of the node with its function, and of the inlined, folded body."""
    native = onnxscript.optimizer.optimize(onnx.inliner.inline_local_functions(model))
    assert native_problems(native) == []
    return [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
            for m in (model, native)]


def _metric(rng: np.random.Generator, B: int, N: int, C: int) -> np.ndarray:
    return rng.standard_normal((B, N, C)).astype(np.float32)


BIPARTITE = [  # (name, N, src/dst split, r, protect)
    ("tome-cls", 17, core.alternating(17, 1), 5, 1),
    ("tome-distilled", 18, core.alternating(18, 2), 7, 2),
    ("grid2x2-hq", 64, core.grid(8, 8, 2, 2), 28, 0),       # r < S - r: TopK over the merged side
    ("grid4x4-fast", 64, core.grid(8, 8, 4, 4), 57, 0),     # r > S - r: TopK over the kept side
    ("all-sources", 16, core.grid(4, 4, 2, 2), 12, 0),      # every source merges: K = 0
    ("none-but-one", 16, core.grid(4, 4, 2, 2), 1, 0),
]


@pytest.mark.parametrize("name,N,split,r,protect", BIPARTITE, ids=[c[0] for c in BIPARTITE])
@pytest.mark.parametrize("seed", [0, 1])
def test_match_bipartite_body(name, N, split, r, protect, seed):
    src, dst = split
    metric = _metric(np.random.default_rng(seed), 2, N, 8)
    model = one_op_model("TokenMatchBipartite", {"metric": metric}, r=r, src=list(src), dst=list(dst),
                         protect=protect)
    ref = ops.match_bipartite_ref(torch.from_numpy(metric), r, src, dst, protect).numpy()
    for (got,) in _run_both(model, {"metric": metric}):
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref)


def test_match_bipartite_body_exact_ties():
    """Equal rows: equal node_max (lower source first) and equal destinations (lower one first)."""
    rows = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 0, 2, 0, 3, 2, 2, 1, 0]]
    metric = np.stack([rows, rows[::-1].copy()])
    src, dst = core.alternating(12)
    for r in (2, 3, 5):
        model = one_op_model("TokenMatchBipartite", {"metric": metric}, r=r, src=list(src), dst=list(dst), protect=0)
        ref = ops.match_bipartite_ref(torch.from_numpy(metric), r, src, dst).numpy()
        for (got,) in _run_both(model, {"metric": metric}):
            np.testing.assert_array_equal(got, ref)


WINDOW = [  # (height, width, k, protect)
    (8, 8, 5, 1),
    (8, 8, 12, 0),   # k > windows - k
    (4, 6, 6, 0),    # every window merges
    (6, 4, 1, 1),
]


@pytest.mark.parametrize("height,width,k,protect", WINDOW)
@pytest.mark.parametrize("seed", [0, 1])
def test_match_window_body(height, width, k, protect, seed):
    metric = _metric(np.random.default_rng(seed), 2, protect + height * width, 6)
    model = one_op_model("TokenMatchWindow", {"metric": metric}, height=height, width=width, k=k, protect=protect)
    ref = ops.match_window_ref(torch.from_numpy(metric), height, width, k, protect).numpy()
    for (got,) in _run_both(model, {"metric": metric}):
        np.testing.assert_array_equal(got, ref)


CELL = [  # (height, width, sy, sx, r)
    (8, 8, 2, 2, 20),    # r < N - r: TopK over the merged side
    (8, 8, 4, 4, 50),    # r > N - r: TopK over the kept side (anchors at +inf there)
    (6, 8, 3, 2, 40),    # every source merges
    (4, 6, 2, 3, 0),     # none: K = 0
    (4, 4, 1, 2, 1),
]


@pytest.mark.parametrize("height,width,sy,sx,r", CELL)
@pytest.mark.parametrize("seed", [0, 1])
def test_match_cell_body(height, width, sy, sx, r, seed):
    metric = _metric(np.random.default_rng(seed), 2, height * width, 6)
    model = one_op_model("TokenMatchCell", {"metric": metric}, r=r, height=height, width=width, sy=sy, sx=sx)
    ref = ops.match_cell_ref(torch.from_numpy(metric), r, height, width, sy, sx).numpy()
    for (got,) in _run_both(model, {"metric": metric}):
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("r", [3, 11, 30])
def test_match_cell_body_exact_ties(r):
    """Axis vectors scaled by powers of two: every score is exactly -1, 0 or 1, ties everywhere,
    so the body must follow the spec's lower-position-first rule (on both TopK sides)."""
    rng = np.random.default_rng(5)
    values = np.array([[1, 0, 0], [0, 2, 0], [-1, 0, 0], [0, 0, 4]], np.float32)
    metric = values[rng.integers(0, 4, (2, 48))]
    model = one_op_model("TokenMatchCell", {"metric": metric}, r=r, height=6, width=8, sy=2, sx=2)
    ref = ops.match_cell_ref(torch.from_numpy(metric), r, 6, 8, 2, 2).numpy()
    for (got,) in _run_both(model, {"metric": metric}):
        np.testing.assert_array_equal(got, ref)


def _merge_case(seed: int, dtype, B=2, N=40, M=13, C=24):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, N, C)).astype(dtype)
    size = rng.integers(1, 6, (B, N, 1)).astype(dtype)
    slot = rng.integers(0, M - 2, (B, N)).astype(np.int32)  # the last two slots stay empty: 0, not NaN
    return {"x": x, "size": size, "slot": slot}, M


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_merge_body(dtype, seed):
    feeds, M = _merge_case(seed, dtype)
    ref = ops.token_merge_ref(*(torch.from_numpy(feeds[n]) for n in ("x", "size", "slot")), M)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-3, atol=1e-3)
    for merged, merged_size in _run_both(one_op_model("TokenMerge", feeds, num_out=M), feeds):
        assert merged.dtype == dtype and merged_size.dtype == dtype
        np.testing.assert_allclose(merged, ref[0].numpy(), **tol)
        np.testing.assert_array_equal(merged_size, ref[1].numpy())
        assert not merged[:, -2:].any() and not merged_size[:, -2:].any()


def test_token_merge_body_sums_in_fp32():
    """fp16 tokens of a few hundred with sizes of a hundred: size * x is past fp16's 65504.

    ONNX Runtime's CPU provider runs fp16 Mul/MatMul through fp32 anyway, so the values alone
    cannot show it; the body's products and sums must be typed fp32, which is what TensorRT runs.
    """
    body = onnx.inliner.inline_local_functions(
        one_op_model("TokenMerge", {"x": np.zeros((1, 4, 8), np.float16), "size": np.ones((1, 4, 1), np.float16),
                                    "slot": np.zeros((1, 4), np.int32)}, num_out=2))
    typed = onnx.shape_inference.infer_shapes(body, strict_mode=True)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input]}
    arith = [n for n in typed.graph.node if n.op_type in ("Mul", "MatMul", "Div")]
    assert len(arith) == 4 and all(elem[i] == onnx.TensorProto.FLOAT for n in arith for i in n.input)
    x = np.full((1, 4, 8), 700.0, np.float16)
    x[0, 1] = 900.0
    size = np.array([[[100.0], [120.0], [1.0], [1.0]]], np.float16)
    slot = np.array([[0, 0, 1, 1]], np.int32)
    feeds = {"x": x, "size": size, "slot": slot}
    ref = ops.token_merge_ref(*(torch.from_numpy(feeds[n]) for n in ("x", "size", "slot")), 2)
    assert np.isfinite(ref[0].numpy()).all()
    for merged, merged_size in _run_both(one_op_model("TokenMerge", feeds, num_out=2), feeds):
        np.testing.assert_array_equal(merged, ref[0].numpy())
        np.testing.assert_array_equal(merged_size, ref[1].numpy())


MERGE_CELL = [  # (height, width, sy, sx, r)
    (8, 8, 2, 2, 20),
    (8, 8, 4, 4, 50),
    (6, 8, 3, 2, 40),    # every source merged: K = 0 kept tokens
    (4, 6, 2, 3, 0),     # r = 0: all sources kept
    (4, 4, 1, 2, 1),
    (6, 4, 2, 1, 7),
]


def _merge_cell_case(height, width, sy, sx, r, seed, dtype, metric=None):
    rng = np.random.default_rng(seed)
    N = height * width
    metric = _metric(rng, 2, N, 6) if metric is None else metric
    slot = ops.match_cell_ref(torch.from_numpy(metric), r, height, width, sy, sx).numpy()
    feeds = {"x": (rng.standard_normal((2, N, 5)) * 3).astype(dtype),
             "size": rng.integers(1, 6, (2, N, 1)).astype(dtype), "slot": slot}
    attrs = dict(height=height, width=width, sy=sy, sx=sx, num_out=N - r)
    ref = ops.token_merge_cell_ref(*(torch.from_numpy(feeds[n]) for n in ("x", "size", "slot")), **attrs)
    return feeds, attrs, ref


@pytest.mark.parametrize("height,width,sy,sx,r", MERGE_CELL)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_token_merge_cell_body(height, width, sy, sx, r, dtype):
    feeds, attrs, ref = _merge_cell_case(height, width, sy, sx, r, 0, dtype)
    generic = ops.token_merge_ref(*(torch.from_numpy(feeds[n]) for n in ("x", "size", "slot")), attrs["num_out"])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-3, atol=1e-3)
    for merged, merged_size in _run_both(one_op_model("TokenMergeCell", feeds, **attrs), feeds):
        assert merged.dtype == dtype and merged_size.dtype == dtype
        assert merged.shape == (2, attrs["num_out"], 5)
        np.testing.assert_allclose(merged, ref[0].numpy(), **tol)
        np.testing.assert_allclose(merged, generic[0].numpy(), **tol)
        np.testing.assert_array_equal(merged_size, ref[1].numpy())


@pytest.mark.parametrize("r", [0, 5, 23, 36])
def test_token_merge_cell_body_ties(r):
    """All tokens identical (every score ties at 1): the slots the tie rule gives, merged."""
    feeds, attrs, ref = _merge_cell_case(6, 8, 2, 2, r, 1, np.float32, metric=_heavy_tie_metric(2, 48))
    for merged, merged_size in _run_both(one_op_model("TokenMergeCell", feeds, **attrs), feeds):
        np.testing.assert_allclose(merged, ref[0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(merged_size, ref[1].numpy())


def test_token_merge_cell_body_is_linear_in_n():
    """No [B, N, M] tensor (TokenMerge's one-hot): every tensor of the inlined, typed body holds at
    most B * N * C elements, and there is no MatMul and no ScatterElements with a reduction."""
    B, N, C, r = 2, 64, 8, 24
    feeds = {"x": np.zeros((B, N, C), np.float32), "size": np.ones((B, N, 1), np.float32),
             "slot": np.zeros((B, N), np.int32)}
    model = onnx.inliner.inline_local_functions(
        one_op_model("TokenMergeCell", feeds, height=8, width=8, sy=2, sx=2, num_out=N - r))
    typed = onnx.shape_inference.infer_shapes(onnx.shape_inference.infer_shapes(model), data_prop=True)
    dims = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in typed.graph.value_info]
    assert dims and all(int(np.prod(d)) <= B * N * C for d in dims if d and all(d)), dims
    assert all(n.op_type != "MatMul" for n in typed.graph.node)
    assert all(a.name != "reduction" or a.s == b"none" for n in typed.graph.node for a in n.attribute)


def test_token_merge_cell_body_sums_in_fp32():
    """fp16 tokens: every product, sum and division of the body is typed fp32 (ONNX Runtime's CPU
    provider runs fp16 arithmetic through fp32 anyway, so values alone cannot show it)."""
    feeds = {"x": np.zeros((1, 16, 8), np.float16), "size": np.ones((1, 16, 1), np.float16),
             "slot": np.zeros((1, 16), np.int32)}
    body = onnx.inliner.inline_local_functions(
        one_op_model("TokenMergeCell", feeds, height=4, width=4, sy=2, sx=2, num_out=6))
    typed = onnx.shape_inference.infer_shapes(body, strict_mode=True)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input]}
    arith = [n for n in typed.graph.node if n.op_type in ("Mul", "Div", "ReduceSum", "Concat")
             and elem.get(n.output[0]) != onnx.TensorProto.INT64]
    assert len(arith) >= 7 and all(elem[n.input[0]] == onnx.TensorProto.FLOAT for n in arith), \
        [(n.op_type, elem[n.input[0]]) for n in arith]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_token_unmerge_body(dtype):
    rng = np.random.default_rng(0)
    merged = rng.standard_normal((2, 7, 5)).astype(dtype)
    slot = rng.integers(0, 7, (2, 19)).astype(np.int32)
    feeds = {"merged": merged, "slot": slot}
    ref = ops.token_unmerge_ref(torch.from_numpy(merged), torch.from_numpy(slot)).numpy()
    for (got,) in _run_both(one_op_model("TokenUnmerge", feeds), feeds):
        np.testing.assert_array_equal(got, ref)


# --- what TensorRT's ONNX parser (10.1) needs of the bodies (functions.py, top comment) --------

def _bodies(opset: int = 18) -> list[onnx.FunctionProto]:
    return [function_proto(op, opset) for op in OPS]


def _typed_body(f: onnx.FunctionProto) -> tuple[onnx.GraphProto, dict[str, int]]:
    """The body inlined into a one-op model with fp32 tokens, and each tensor's element type."""
    B, N, M, C = 2, 16, 5, 8
    if f.name.startswith("TokenMatch"):
        feeds, attrs = {"metric": np.zeros((B, N, C), np.float32)}, (
            dict(r=3, src=list(core.alternating(N)[0]), dst=list(core.alternating(N)[1]), protect=0)
            if f.name == "TokenMatchBipartite" else dict(r=3, height=4, width=4, sy=2, sx=2)
            if f.name == "TokenMatchCell" else dict(height=4, width=4, k=1, protect=0))
    elif f.name.startswith("TokenMerge"):
        feeds, attrs = {"x": np.zeros((B, N, C), np.float32), "size": np.ones((B, N, 1), np.float32),
                        "slot": np.zeros((B, N), np.int32)}, dict(num_out=M)
        if f.name == "TokenMergeCell":
            attrs.update(height=4, width=4, sy=2, sx=2)
    else:
        feeds, attrs = {"merged": np.zeros((B, M, C), np.float32), "slot": np.zeros((B, N), np.int32)}, {}
    model = onnx.inliner.inline_local_functions(one_op_model(f.name, feeds, **attrs))
    typed = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = typed.graph
    return g, {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}


@pytest.mark.parametrize("op", list(OPS))
def test_body_cumsum_runs_in_float(op):
    """CumSum is FP32/FP16/BF16 only in TensorRT 10.1's operators.md: never on int64."""
    g, elem = _typed_body(function_proto(op, 18))
    for n in g.node:
        if n.op_type == "CumSum":
            assert elem[n.input[0]] in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16), n.name


def test_body_cumsum_count():
    """Guards the test above against passing vacuously: the match bodies do count with CumSum."""
    counts = {f.name: sum(n.op_type == "CumSum" for n in f.node) for f in _bodies()}
    assert counts["TokenMatchBipartite"] >= 3 and counts["TokenMatchWindow"] >= 1


@pytest.mark.parametrize("f", _bodies(), ids=list(OPS))
def test_body_never_reads_tie_order(f):
    """TensorRT's TopK/ArgMax promise no order among ties: no body reads TopK's indices, and an
    ArgMax index is used only to read the (tie-independent) maximum, or over distinct values."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer = {o: n for n in f.node for o in n.output}
    for n in f.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in f.node:
        if n.op_type == "TopK" and len(n.output) > 1 and n.output[1]:
            assert n.output[1] not in consumers and n.output[1] not in f.output, "TopK indices used"
        if n.op_type == "ArgMax":
            src = producer.get(n.input[0])
            distinct = src is not None and src.op_type == "Where" and producer[src.input[0]].op_type == "Equal"
            assert distinct or all(c.op_type == "GatherElements" and c.input[1] == n.output[0]
                                   for c in consumers.get(n.output[0], [])), "ArgMax index used on ties"


@pytest.mark.parametrize("f", _bodies(), ids=list(OPS))
def test_body_formal_names_reserved(f):
    """The 10.1 local-function importer binds formal names into the outer tensor map (and skips
    one that already names an outer tensor): every formal input/output uses the reserved prefix."""
    assert f.input and f.output
    assert all(name.startswith(BODY_PREFIX) for name in [*f.input, *f.output])
    assert set(f.input) | set(f.output) <= {o for n in f.node for o in n.output} | set(f.input)


def _scramble_ties(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the freedom TensorRT has among ties taken the other way: every TopK runs on
    its input reversed along its axis, indices mapped back (same values; among equal values the
    higher index first), and every ArgMax picks the last maximum."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    make = onnx.helper.make_node
    for f in model.functions:
        nodes: list[onnx.NodeProto] = []

        def add(op, *inputs, **attrs):
            out = f"scramble_{len(nodes)}"
            nodes.append(make(op, list(inputs), [out], **attrs))
            return out

        def const(v):
            return add("Constant", value=onnx.helper.make_tensor("c", onnx.TensorProto.INT64, [1], [v]))

        for n in f.node:
            if n.op_type == "ArgMax":
                n.attribute.append(onnx.helper.make_attribute("select_last_index", 1))
            if n.op_type != "TopK":
                nodes.append(n)
                continue
            axis = next(a.i for a in n.attribute if a.name == "axis")
            n.input[0] = add("Slice", n.input[0], const(-1), const(-(2**62)), const(axis), const(-1))
            idx, rev_idx = n.output[1] or f"scramble_unused_{len(nodes)}", f"scramble_rev_idx_{len(nodes)}"
            n.output[1] = rev_idx
            nodes.append(n)
            last = add("Sub", add("Gather", add("Shape", n.input[0]), const(axis)), const(1))
            nodes.append(make("Sub", [last, rev_idx], [idx]))
        del f.node[:]
        f.node.extend(nodes)
    return model


def _heavy_tie_metric(B: int, N: int, C: int = 4) -> np.ndarray:
    """All tokens identical, exactly: each normalized entry is 0.5, every cosine exactly 1."""
    return np.ones((B, N, C), np.float32)


BIPARTITE_TIES = [  # (name, N, split, protect); every r from 0 to S - protect is run
    ("alternating-cls", 17, core.alternating(17, 1), 1),
    ("alternating-distilled", 18, core.alternating(18, 2), 2),
    ("grid2x2", 16, core.grid(4, 4, 2, 2), 0),
]


@pytest.mark.parametrize("name,N,split,protect", BIPARTITE_TIES, ids=[c[0] for c in BIPARTITE_TIES])
def test_match_bipartite_body_all_tied(name, N, split, protect):
    """All scores equal, both TopK sides (r < S - r, r > S - r, K = 0 at r = 0 and r = S), also
    with TopK/ArgMax resolving ties the other way round."""
    src, dst = split
    metric = _heavy_tie_metric(2, N)
    feeds = {"metric": metric}
    for r in range(len(src) - protect + 1):
        model = one_op_model("TokenMatchBipartite", feeds, r=r, src=list(src), dst=list(dst), protect=protect)
        ref = ops.match_bipartite_ref(torch.from_numpy(metric), r, src, dst, protect).numpy()
        for m in (model, _scramble_ties(model)):
            for (got,) in _run_both(m, feeds):
                np.testing.assert_array_equal(got, ref, err_msg=f"r={r}")


@pytest.mark.parametrize("height,width,protect", [(4, 4, 0), (6, 6, 2)])
def test_match_window_body_all_tied(height, width, protect):
    """All window scores equal, every k from 0 to the number of windows (both TopK sides)."""
    rng = np.random.default_rng(0)
    metric = _heavy_tie_metric(2, protect + height * width)
    metric[:, :protect] = rng.standard_normal((2, protect, metric.shape[2]))  # protected: any values
    feeds = {"metric": metric}
    for k in range((height // 2) * (width // 2) + 1):
        model = one_op_model("TokenMatchWindow", feeds, height=height, width=width, k=k, protect=protect)
        ref = ops.match_window_ref(torch.from_numpy(metric), height, width, k, protect).numpy()
        for m in (model, _scramble_ties(model)):
            for (got,) in _run_both(m, feeds):
                np.testing.assert_array_equal(got, ref, err_msg=f"k={k}")


def test_match_bodies_partial_ties_scrambled():
    """Some scores tied at the selection boundary, others not: the scrambled model still matches."""
    rows = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 0, 2, 0, 3, 2, 2, 1, 0, 3, 3, 1, 2]]
    metric = np.stack([rows, rows[::-1].copy()])
    src, dst = core.alternating(16)
    for r in range(len(src) + 1):
        model = one_op_model("TokenMatchBipartite", {"metric": metric}, r=r, src=list(src), dst=list(dst), protect=0)
        ref = ops.match_bipartite_ref(torch.from_numpy(metric), r, src, dst).numpy()
        for (got,) in _run_both(_scramble_ties(model), {"metric": metric}):
            np.testing.assert_array_equal(got, ref, err_msg=f"r={r}")
    tok = np.eye(3, dtype=np.float32)[np.random.default_rng(1).integers(0, 3, (2, 36))]
    for k in range(10):
        model = one_op_model("TokenMatchWindow", {"metric": tok}, height=6, width=6, k=k, protect=0)
        ref = ops.match_window_ref(torch.from_numpy(tok), 6, 6, k).numpy()
        for (got,) in _run_both(_scramble_ties(model), {"metric": tok}):
            np.testing.assert_array_equal(got, ref, err_msg=f"k={k}")


@pytest.mark.parametrize("name", sorted(SPEC_OPS))
def test_torch_op_and_translation_follow_the_spec(name):
    """The torch op (merge/ops.py) takes the spec's inputs then plugin attributes, the exporter's
    translation has that signature, and its node is the spec's (an `edgemerge` node per op)."""
    import inspect

    from edgemerge.export.exporter import TRANSLATIONS

    spec = SPEC_OPS[name]
    want = [p.name for p in spec.inputs] + [a.name for a in spec.plugin_attributes()]
    torch_op = getattr(torch.ops.edgemerge, spec.torch_op).default
    assert [a.name for a in torch_op._schema.arguments] == want
    assert len(torch_op._schema.returns) == len(spec.outputs)
    assert list(inspect.signature(TRANSLATIONS[torch_op]).parameters) == want
