"""The JIT plugin's body (`torch_impl.run`) against straightforward numpy readings of docs/ops.md."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from edgemerge.trt import torch_impl  # noqa: E402


def bipartite(metric, r, src, dst, protect):
    return torch_impl.run("TokenMatchBipartite", [metric], {"r": r, "src": src, "dst": dst, "protect": protect})[0]


def window(metric, height, width, k, protect):
    return torch_impl.run("TokenMatchWindow", [metric], {"height": height, "width": width, "k": k,
                                                         "protect": protect})[0]


def merge(x, size, slot, num_out):
    return torch_impl.run("TokenMerge", [x, size, slot], {"num_out": num_out})


def unmerge(merged, slot):
    return torch_impl.run("TokenUnmerge", [merged, slot], {})[0]


def np_unit(m):
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-6)


def np_bipartite(metric, r, src, dst, protect):
    B, N, _ = metric.shape
    S = len(src)
    out = np.zeros((B, N), np.int32)
    for b in range(B):
        m = np_unit(metric[b].astype(np.float64))
        scores = m[src] @ m[dst].T
        idx = scores.argmax(-1)
        mx = scores.max(-1)
        mx[:protect] = -np.inf
        order = sorted(range(S), key=lambda i: (-mx[i], i))
        merged = set(order[:r])
        rank = 0
        for i, pos in enumerate(src):
            if i in merged:
                out[b, pos] = S - r + idx[i]
            else:
                out[b, pos] = rank
                rank += 1
        for d, pos in enumerate(dst):
            out[b, pos] = S - r + d
    return out


def test_bipartite_matches_numpy():
    g = np.random.default_rng(0)
    metric = g.standard_normal((2, 9, 5)).astype(np.float32)
    src, dst = [0, 2, 4, 6, 8], [1, 3, 5, 7]
    got = bipartite(torch.from_numpy(metric), 3, src, dst, 1).numpy()
    np.testing.assert_array_equal(got, np_bipartite(metric, 3, src, dst, 1))
    assert got.dtype == np.int32 and got.max() == 9 - 3 - 1


def test_bipartite_ties_go_to_lower_index():
    metric = np.ones((1, 4, 2), np.float32)  # all cosines 1
    got = bipartite(torch.from_numpy(metric), 1, [0, 2], [1, 3], 0).numpy()
    # source 0 (lower index) merges into dst 0 (lowest argmax); source 2 stays at slot 0
    np.testing.assert_array_equal(got, [[1, 1, 0, 2]])


def test_window_merges_the_most_similar_window():
    g = np.random.default_rng(1)
    metric = g.standard_normal((1, 1 + 4 * 4, 3)).astype(np.float32)  # CLS + 4x4 grid
    same = g.standard_normal(3).astype(np.float32)
    for pos in (1 + 2, 1 + 3, 1 + 6, 1 + 7):  # window 1 (top-right 2x2 cell)
        metric[0, pos] = same
    slot = window(torch.from_numpy(metric), 4, 4, 1, 1).numpy()[0]
    N, k = 17, 1
    assert all(slot[p] == 1 for p in (3, 4, 7, 8))  # docs/ops.md: CLS, merged windows, the rest
    kept = [p for p in range(N) if p not in (3, 4, 7, 8)]
    np.testing.assert_array_equal(slot[kept], [0] + list(range(2, N - 3 * k)))


def test_merge_is_size_weighted_mean_and_unmerge_gathers():
    g = np.random.default_rng(2)
    x = g.standard_normal((2, 6, 3)).astype(np.float32)
    size = g.uniform(1, 3, (2, 6, 1)).astype(np.float32)
    slot = np.array([[0, 1, 1, 2, 0, 3], [3, 3, 3, 0, 1, 2]], np.int32)
    merged, msize = merge(torch.from_numpy(x), torch.from_numpy(size), torch.from_numpy(slot), 5)
    ref = np.zeros((2, 5, 3))
    ref_size = np.zeros((2, 5, 1))
    for b in range(2):
        for i in range(6):
            ref[b, slot[b, i]] += size[b, i] * x[b, i]
            ref_size[b, slot[b, i]] += size[b, i]
    ref = np.where(ref_size > 0, ref / np.where(ref_size > 0, ref_size, 1), 0)
    np.testing.assert_allclose(merged.numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(msize.numpy(), ref_size, rtol=1e-6)
    assert merged[0, 4].abs().sum() == 0  # empty slot -> 0
    back = unmerge(merged, torch.from_numpy(slot)).numpy()
    np.testing.assert_allclose(back, np.take_along_axis(merged.numpy(), slot[..., None].astype(np.int64), 1))


def test_merge_fp16_keeps_dtype():
    x = torch.randn(1, 4, 2, dtype=torch.float16)
    size = torch.ones(1, 4, 1, dtype=torch.float16)
    merged, msize = merge(x, size, torch.tensor([[0, 0, 1, 1]], dtype=torch.int32), 2)
    assert merged.dtype == torch.float16 and msize.dtype == torch.float16


def test_unknown_op_is_refused():
    with pytest.raises(KeyError):
        torch_impl.run("TokenShuffle", [], {})
