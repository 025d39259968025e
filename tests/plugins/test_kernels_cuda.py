"""The CUDA kernels against a small pure-torch reference of docs/ops.md (needs a CUDA GPU).

The kernels are compiled with nvcc into a ctypes library (kernels_capi.cu) and called on torch
CUDA tensors. Match ops: exact ties (duplicated rows) must follow the spec's tie rules exactly;
with random data the kernel's fp32 scores may order near-equal values differently from the
float64 reference, so there the chosen set is checked to be optimal within a tolerance and the
slots to follow from it exactly.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from .conftest import build_capi  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TOL = 1e-4  # fp32 cosine vs float64 reference


@pytest.fixture(scope="module")
def lib(nvcc: str, tmp_path_factory) -> ctypes.CDLL:
    major, minor = torch.cuda.get_device_capability()
    path = build_capi(nvcc, Path(tmp_path_factory.mktemp("capi")), f"sm_{major}{minor}")
    lib = ctypes.CDLL(str(path))
    lib.em_capi_match_bipartite_workspace.restype = ctypes.c_size_t
    lib.em_capi_match_window_workspace.restype = ctypes.c_size_t
    lib.em_capi_match_cell_workspace.restype = ctypes.c_size_t
    return lib


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    assert t.is_cuda and t.is_contiguous()
    return ctypes.c_void_p(t.data_ptr())


# ---------------------------------------------------------------- reference (docs/ops.md)
def _normalise(metric: torch.Tensor) -> torch.Tensor:
    m = metric.double()
    return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _first_argmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    best = scores.max(dim=-1).values
    ar = torch.arange(scores.shape[-1]).expand_as(scores)
    idx = torch.where(scores == best.unsqueeze(-1), ar, scores.shape[-1]).min(dim=-1).values
    return best, idx


def _stable_top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k largest per row, ties to the lower index (stable descending sort)."""
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(values, dtype=torch.bool)
    mask.scatter_(-1, order[:, :k], True)
    return mask


def bipartite_scores(metric, src, dst, protect):
    m = _normalise(metric.cpu())
    scores = m[:, src] @ m[:, dst].transpose(1, 2)
    node_max, node_idx = _first_argmax(scores)
    node_max[:, :protect] = float("-inf")
    return scores, node_max, node_idx


def bipartite_slots(merged, node_idx, src, dst, n):
    """Slots of docs/ops.md step 5 for a given merged mask [B, S]."""
    b, s = merged.shape
    r = int(merged[0].sum())
    slot = torch.empty(b, n, dtype=torch.int32)
    keep_rank = torch.cumsum((~merged).int(), dim=1) - 1
    src_slot = torch.where(merged, s - r + node_idx, keep_rank).int()
    slot[:, src] = src_slot
    slot[:, dst] = (s - r + torch.arange(len(dst))).int()
    return slot


def ref_bipartite(metric, r, src, dst, protect):
    _, node_max, node_idx = bipartite_scores(metric, src, dst, protect)
    return bipartite_slots(_stable_top(node_max, r), node_idx, src, dst, metric.shape[1])


def window_scores(metric, height, width, protect):
    m = _normalise(metric.cpu())[:, protect:]
    b, _, c = m.shape
    g = m.reshape(b, height // 2, 2, width // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, 4, c)
    gram = g @ g.transpose(-1, -2)
    return (gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)) / 12.0


def _stable_rank(values: torch.Tensor) -> torch.Tensor:
    """Rank of every entry in a stable descending sort (ties: lower index first)."""
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(-1, order, torch.arange(values.shape[-1]).expand_as(order))


def window_slots(win_rank, k, n, height, width, protect):
    """docs/ops.md: protected tokens 0..protect-1, the merged window of rank w (rank < k) at
    protect + w, the other tokens in input order from protect + k."""
    b, _ = win_rank.shape
    grid = torch.arange(height * width)
    win_of = (grid // width // 2) * (width // 2) + (grid % width) // 2
    tok_merged = torch.zeros(b, n, dtype=torch.bool)
    tok_merged[:, protect:] = win_rank[:, win_of] < k
    keep_rank = torch.cumsum((~tok_merged).int(), dim=1) - 1
    slot = keep_rank.clone()
    slot[:, protect:] = torch.where(tok_merged[:, protect:], protect + win_rank[:, win_of], keep_rank[:, protect:] + k)
    return slot.int()


def ref_window(metric, height, width, k, protect):
    score = window_scores(metric, height, width, protect)
    return window_slots(_stable_rank(score), k, metric.shape[1], height, width, protect)


def ref_merge(x, size, slot, m):
    b, n, c = x.shape
    xs, ss = x.double().cpu(), size.double().cpu()
    idx = slot.long().cpu()
    sums = torch.zeros(b, m, c, dtype=torch.float64).scatter_add_(1, idx[..., None].expand(b, n, c), xs * ss)
    msize = torch.zeros(b, m, 1, dtype=torch.float64).scatter_add_(1, idx[..., None], ss)
    merged = torch.where(msize != 0, sums / torch.where(msize != 0, msize, 1.0), torch.zeros_like(sums))
    return merged, msize


# ---------------------------------------------------------------- kernel calls
def run_bipartite(lib, metric, r, src, dst, protect):
    b, n, c = metric.shape
    metric = metric.float().cuda().contiguous()
    slot = torch.full((b, n), -7, dtype=torch.int32, device="cuda")
    src_t = torch.tensor(src, dtype=torch.int32, device="cuda")
    dst_t = torch.tensor(dst, dtype=torch.int32, device="cuda")
    ws = torch.empty(lib.em_capi_match_bipartite_workspace(b, n, c, len(src)), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    err = lib.em_capi_match_bipartite(_p(metric), _p(slot), _p(src_t), _p(dst_t), b, n, c, len(src), len(dst),
                                      r, protect, _p(ws))
    torch.cuda.synchronize()
    assert err == 0
    return slot.cpu()


def run_window(lib, metric, height, width, k, protect):
    b, n, c = metric.shape
    metric = metric.float().cuda().contiguous()
    slot = torch.full((b, n), -7, dtype=torch.int32, device="cuda")
    ws = torch.empty(lib.em_capi_match_window_workspace(b, n, c, height, width), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    err = lib.em_capi_match_window(_p(metric), _p(slot), b, n, c, height, width, k, protect, _p(ws))
    torch.cuda.synchronize()
    assert err == 0
    return slot.cpu()


def run_merge(lib, x, size, slot, m):
    b, n, c = x.shape
    x, size, slot = x.cuda().contiguous(), size.cuda().contiguous(), slot.int().cuda().contiguous()
    merged = torch.full((b, m, c), float("nan"), dtype=x.dtype, device="cuda")
    msize = torch.full((b, m, 1), float("nan"), dtype=x.dtype, device="cuda")
    torch.cuda.synchronize()
    err = lib.em_capi_token_merge(_p(x), _p(size), _p(slot), _p(merged), _p(msize), b, n, m, c,
                                  1 if x.dtype == torch.float16 else 0)
    torch.cuda.synchronize()
    assert err == 0
    return merged.cpu(), msize.cpu()


def run_unmerge(lib, merged, slot, n):
    b, m, c = merged.shape
    merged, slot = merged.cuda().contiguous(), slot.int().cuda().contiguous()
    out = torch.full((b, n, c), float("nan"), dtype=merged.dtype, device="cuda")
    torch.cuda.synchronize()
    err = lib.em_capi_token_unmerge(_p(merged), _p(slot), _p(out), b, n, m, c,
                                    1 if merged.dtype == torch.float16 else 0)
    torch.cuda.synchronize()
    assert err == 0
    return out.cpu()


# ---------------------------------------------------------------- layouts
def alternating(n, protect_cls):
    """ToMe: even positions src (CLS first), odd dst."""
    return list(range(0, n, 2)), list(range(1, n, 2)), (1 if protect_cls else 0)


def grid_layout(h, w, sy, sx):
    """Segformer++: the top-left token of every sy x sx cell is a dst, all others src."""
    dst = [y * w + x for y in range(h) for x in range(w) if y % sy == 0 and x % sx == 0]
    dset = set(dst)
    src = [i for i in range(h * w) if i not in dset]
    return src, dst, 0


def check_bipartite(slot, metric, r, src, dst, protect):
    """Kernel slots: optimal set within TOL, argmax within TOL, and slots exactly derived from them."""
    scores, node_max, _ = bipartite_scores(metric, src, dst, protect)
    s, base = len(src), len(src) - r
    src_slot = slot[:, src].long()
    merged = src_slot >= base
    assert (merged.sum(1) == r).all()
    assert not merged[:, :protect].any()
    assert (slot[:, dst] == base + torch.arange(len(dst))).all()
    chosen = (src_slot - base).clamp(min=0)
    for b in range(slot.shape[0]):
        if 0 < r < s - protect:
            assert node_max[b][merged[b]].min() >= node_max[b][~merged[b]][protect:].max() - TOL
        got = scores[b, torch.arange(s), chosen[b]]
        assert (got[merged[b]] >= node_max[b][merged[b]] - TOL).all()
    expected = bipartite_slots(merged, chosen, src, dst, metric.shape[1])
    assert torch.equal(slot, expected)


# ---------------------------------------------------------------- tests
BIPARTITE_CASES = [
    # name, B, (layout), C, r
    ("vit-cls", 2, alternating(197, True), 64, 50),
    ("vit-r0", 2, alternating(197, True), 64, 0),
    ("vit-rmax", 1, alternating(197, True), 64, 98),
    ("odd-n", 3, alternating(51, False), 33, 20),
    ("grid-2x2", 1, grid_layout(32, 32, 2, 2), 64, int(1024 * 0.6)),
    # largest Segformer stage at 1024x2048: N = 8192, 4x4 grid -> S = 7680, D = 512, C = 320
    ("segformer-8192", 1, grid_layout(64, 128, 4, 4), 320, int(8192 * 0.9)),
]


@pytest.mark.parametrize("case", BIPARTITE_CASES, ids=lambda c: c[0])
def test_match_bipartite_random(lib, case):
    _, b, (src, dst, protect), c, r = case
    g = torch.Generator().manual_seed(0)
    metric = torch.randn(b, len(src) + len(dst), c, generator=g)
    if c == 320:
        assert (len(src), len(dst)) == (7680, 512)
    slot = run_bipartite(lib, metric, r, src, dst, protect)
    check_bipartite(slot, metric, r, src, dst, protect)
    # deterministic: a second run is bitwise identical
    assert torch.equal(slot, run_bipartite(lib, metric, r, src, dst, protect))


@pytest.mark.parametrize("r", [0, 5, 17, 40])
def test_match_bipartite_exact_ties(lib, r):
    """Rows are scaled one-hot vectors (power-of-two scales): every cosine is exactly 0 or 1 in
    fp32 and fp64 alike, so node_max and argmax tie exactly and the spec's order must hold."""
    g = torch.Generator().manual_seed(1)
    n, c = 96, 16
    cls = torch.randint(0, 4, (2, n), generator=g)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0])[torch.randint(0, 4, (2, n), generator=g)]
    metric = torch.nn.functional.one_hot(cls, c).float() * scale[..., None]
    src, dst, protect = alternating(n, True)
    slot = run_bipartite(lib, metric, r, src, dst, protect)
    assert torch.equal(slot, ref_bipartite(metric, r, src, dst, protect))


def test_match_bipartite_zero_metric(lib):
    """All-zero rows: norm clamp 1e-6, every score 0, ties everywhere -> lowest indices."""
    metric = torch.zeros(1, 20, 8)
    src, dst, protect = alternating(20, False)
    slot = run_bipartite(lib, metric, 4, src, dst, protect)
    assert torch.equal(slot, ref_bipartite(metric, 4, src, dst, protect))


WINDOW_CASES = [
    ("vit-14", 2, 14, 14, 64, 20, 1),
    ("k0", 1, 14, 14, 64, 0, 1),
    ("kall", 1, 8, 8, 16, 16, 0),
    ("rect", 1, 32, 64, 384, 300, 0),
    ("large", 1, 64, 128, 192, 1500, 1),
]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=lambda c: c[0])
def test_match_window_random(lib, case):
    _, b, h, w, c, k, protect = case
    g = torch.Generator().manual_seed(2)
    n = protect + h * w
    metric = torch.randn(b, n, c, generator=g)
    metric[:, protect:] += 2.0 * torch.randn(b, 1, c, generator=g)  # realistic, higher cosines
    slot = run_window(lib, metric, h, w, k, protect)
    score = window_scores(metric, h, w, protect)
    win = (h // 2) * (w // 2)
    # merged windows and their order from the slots of their top-left tokens: protect + rank
    grid = torch.arange(win)
    tl = protect + (grid // (w // 2)) * 2 * w + (grid % (w // 2)) * 2
    rank = slot[:, tl].long() - protect
    merged = rank < k
    assert (merged.sum(1) == k).all()
    for bb in range(b):
        if 0 < k < win:
            assert score[bb][merged[bb]].min() >= score[bb][~merged[bb]].max() - TOL
        by_rank = score[bb][merged[bb]][rank[bb][merged[bb]].argsort()]  # descending order, up to TOL
        assert sorted(rank[bb][merged[bb]].tolist()) == list(range(k))
        assert (by_rank[1:] <= by_rank[:-1] + TOL).all()
    rank = torch.where(merged, rank, win)  # kept windows: any rank >= k
    assert torch.equal(slot, window_slots(rank, k, n, h, w, protect))
    assert torch.equal(slot, run_window(lib, metric, h, w, k, protect))


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_match_window_exact_ties(lib, k):
    """Three kinds of window built from one-hot tokens (scores exactly 1, 1/3 and 0): identical
    windows tie exactly and the lower window index must win."""
    g = torch.Generator().manual_seed(3)
    e = torch.eye(8)
    kinds = [
        [e[0], e[0], e[0], 2 * e[0]],  # score 1
        [e[0], e[1], e[0], e[1]],      # score 1/3
        [e[0], e[2], e[1], e[3]],      # score 0
    ]
    h, w, protect = 10, 12, 1
    x = torch.zeros(1, protect + h * w, 8)
    x[0, 0] = e[5]
    kind = torch.randint(0, 3, ((h // 2) * (w // 2),), generator=g)
    for win, kd in enumerate(kind.tolist()):
        y0, x0 = (win // (w // 2)) * 2, (win % (w // 2)) * 2
        for q, tok in enumerate(kinds[kd]):
            x[0, protect + (y0 + q // 2) * w + x0 + q % 2] = tok
    slot = run_window(lib, x, h, w, k, protect)
    assert torch.equal(slot, ref_window(x, h, w, k, protect))


MERGE_CASES = [
    ("small", 2, 50, 20, 8),
    ("vit", 2, 197, 147, 384),
    ("c-odd", 1, 300, 64, 33),
    ("segformer-8192", 1, 8192, 820, 320),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", MERGE_CASES, ids=lambda c: c[0])
def test_merge_and_unmerge(lib, case, dtype):
    _, b, n, m, c = case
    g = torch.Generator().manual_seed(4)
    x = torch.randn(b, n, c, generator=g).to(dtype)
    size = torch.randint(1, 5, (b, n, 1), generator=g).to(dtype)
    slot = torch.randint(0, m - 1, (b, n), generator=g, dtype=torch.int32)  # slot m-1 stays empty
    merged, msize = run_merge(lib, x, size, slot, m)
    ref, ref_size = ref_merge(x, size, slot, m)
    assert merged.dtype == dtype and msize.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(msize.double(), ref_size, rtol=tol, atol=tol)
    torch.testing.assert_close(merged.double(), ref, rtol=tol, atol=tol)
    assert (merged[:, m - 1] == 0).all() and (msize[:, m - 1] == 0).all()
    again, _ = run_merge(lib, x, size, slot, m)
    assert torch.equal(merged, again)  # deterministic, bitwise

    out = run_unmerge(lib, merged, slot, n)
    expected = torch.gather(merged, 1, slot.long()[..., None].expand(b, n, c))
    assert torch.equal(out, expected)


def test_match_then_merge_roundtrip(lib):
    """Bipartite slots feed merge; with r = 0 merge+unmerge is the identity."""
    g = torch.Generator().manual_seed(5)
    metric = torch.randn(1, 197, 64, generator=g)
    src, dst, protect = alternating(197, True)
    slot = run_bipartite(lib, metric, 0, src, dst, protect)
    assert sorted(slot[0].tolist()) == list(range(197))
    merged, _ = run_merge(lib, metric, torch.ones(1, 197, 1), slot, 197)
    torch.testing.assert_close(run_unmerge(lib, merged, slot, 197), metric)


# ---------------------------------------------------------------- TokenMatchCell
def _cell(lib, metric: torch.Tensor, h: int, w: int, sy: int, sx: int, r: int) -> torch.Tensor:
    b, n, c = metric.shape
    metric = metric.contiguous().cuda()
    slot = torch.empty(b, n, dtype=torch.int32, device="cuda")
    ws = torch.empty(lib.em_capi_match_cell_workspace(b, n), dtype=torch.uint8, device="cuda")
    err = lib.em_capi_match_cell(_p(metric), _p(slot), b, n, c, h, w, sy, sx, r, _p(ws))
    assert err == 0
    torch.cuda.synchronize()
    return slot.cpu()


@pytest.mark.parametrize("case", [(8, 8, 2, 2, 20), (8, 8, 4, 4, 50), (6, 8, 3, 2, 40), (64, 64, 2, 2, 2048)])
def test_match_cell_random(lib, case):
    """Random metrics: the kernel's selection is optimal within TOL of the float64 scores and its
    slots follow from that selection exactly (docs/ops.md TokenMatchCell)."""
    from edgemerge.merge import ops

    h, w, sy, sx, r = case
    metric = torch.randn(2, h * w, 24, generator=torch.Generator().manual_seed(0))
    got = _cell(lib, metric, h, w, sy, sx, r)
    score = ops.cell_scores(metric.double(), h, w, sy, sx)
    S = h * w - (h // sy) * (w // sx)
    merged = got >= S - r
    anchor, cell = ops.cell_layout(h, w, sy, sx)
    is_anchor = anchor == torch.arange(h * w)
    merged &= ~is_anchor
    assert int(merged[0].sum()) == r
    worst_in = torch.where(merged, score, torch.inf).amin(-1)
    best_out = torch.where(~merged & ~is_anchor, score, -torch.inf).amax(-1)
    assert bool((worst_in >= best_out - TOL).all())
    kept = torch.cumsum((~merged & ~is_anchor).int(), 1) - 1
    want = torch.where(merged | is_anchor, S - r + cell, kept).int()
    assert torch.equal(got, want)


@pytest.mark.parametrize("r", [3, 11, 30])
def test_match_cell_exact_ties(lib, r):
    from edgemerge.merge import ops

    values = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [-1.0, 0, 0], [0, 0, 4.0]])
    metric = values[torch.randint(0, 4, (2, 48), generator=torch.Generator().manual_seed(5))]
    assert torch.equal(_cell(lib, metric, 6, 8, 2, 2, r), ops.match_cell_ref(metric, r, 6, 8, 2, 2))


# ---------------------------------------------------------------- TokenMergeCell
def run_merge_cell(lib, x, size, slot, m, h, w, sy, sx):
    b, n, c = x.shape
    x, size, slot = x.cuda().contiguous(), size.cuda().contiguous(), slot.int().cuda().contiguous()
    merged = torch.full((b, m, c), float("nan"), dtype=x.dtype, device="cuda")
    msize = torch.full((b, m, 1), float("nan"), dtype=x.dtype, device="cuda")
    torch.cuda.synchronize()
    err = lib.em_capi_token_merge_cell(_p(x), _p(size), _p(slot), _p(merged), _p(msize), b, n, m, c, h, w, sy, sx,
                                       1 if x.dtype == torch.float16 else 0)
    torch.cuda.synchronize()
    assert err == 0
    return merged.cpu(), msize.cpu()


@pytest.mark.parametrize("case", [(8, 8, 2, 2, 20), (8, 8, 4, 4, 48), (6, 8, 3, 2, 0), (6, 4, 2, 1, 7),
                                  (64, 64, 2, 2, 2048), (64, 64, 2, 2, 3072)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_merge_cell_random(lib, case, dtype):
    """On TokenMatchCell's slots (r = 0, some, all sources at 3072 and 48; sy != sx) the kernel is
    the PyTorch reference and TokenMerge's kernel (the same sums in the same position order), and
    writes every output (NaN-filled before)."""
    from edgemerge.merge import ops

    h, w, sy, sx, r = case
    g = torch.Generator().manual_seed(1)
    metric = torch.randn(2, h * w, 8, generator=g)
    slot = ops.match_cell_ref(metric, r, h, w, sy, sx)
    x = (torch.randn(2, h * w, 40, generator=g) * 3).to(dtype)
    size = torch.randint(1, 6, (2, h * w, 1), generator=g).to(dtype)
    m = h * w - r
    got = run_merge_cell(lib, x, size, slot, m, h, w, sy, sx)
    ref = ops.token_merge_cell_ref(x, size, slot, h, w, sy, sx, m)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got[0], ref[0], **tol)
    assert torch.equal(got[1], ref[1])
    generic = run_merge(lib, x, size, slot, m)
    torch.testing.assert_close(got[0], generic[0], **tol)
    assert torch.equal(got[1], generic[1])


def test_merge_cell_fp16_sums_in_fp32(lib):
    """One 64x64 cell of fp16 tokens 1 + 2^-10, and a cell whose size * x passes 65504."""
    x = torch.full((1, 4096, 1), 1.0009765625, dtype=torch.float16)
    merged, size = run_merge_cell(lib, x, torch.ones(1, 4096, 1, dtype=torch.float16),
                                  torch.zeros(1, 4096, dtype=torch.int32), 1, 64, 64, 64, 64)
    assert merged.item() == 1.0009765625 and size.item() == 4096
    big = torch.tensor([[[700.0], [900.0], [1.0], [1.0]]], dtype=torch.float16)
    sizes = torch.tensor([[[100.0], [120.0], [1.0], [1.0]]], dtype=torch.float16)
    merged, _ = run_merge_cell(lib, big, sizes, torch.zeros(1, 4, dtype=torch.int32), 1, 2, 2, 2, 2)
    assert torch.isfinite(merged).all() and merged.item() == pytest.approx((700 * 100 + 900 * 120 + 2) / 222, rel=1e-3)
