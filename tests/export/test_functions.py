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
from edgemerge.export.functions import one_op_model
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


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_token_unmerge_body(dtype):
    rng = np.random.default_rng(0)
    merged = rng.standard_normal((2, 7, 5)).astype(dtype)
    slot = rng.integers(0, 7, (2, 19)).astype(np.int32)
    feeds = {"merged": merged, "slot": slot}
    ref = ops.token_unmerge_ref(torch.from_numpy(merged), torch.from_numpy(slot)).numpy()
    for (got,) in _run_both(one_op_model("TokenUnmerge", feeds), feeds):
        np.testing.assert_array_equal(got, ref)
