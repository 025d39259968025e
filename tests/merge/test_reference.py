"""Each merge method against a slow, loop-based reference written here from its description.

The references below use plain Python loops over tokens (float64 arithmetic on the fp32 inputs)
and share no code with `edgemerge.merge`: they are docs/ops.md (and DESIGN.md's description of
ToMe, Segformer++ and ALGM) read literally. Inputs are random floats, so there are no ties:
they are drawn until every decision margin is far above fp32 rounding (`_tie_free`).
"""

from __future__ import annotations

import math

import pytest
import torch

from edgemerge.merge import core, ops
from edgemerge.merge.patch import SegformerPPAttention
from edgemerge.merge.plan import GridSite

EPS = 1e-6


# --- loop references ---------------------------------------------------------------------------

def _unit(v: list[float]) -> list[float]:
    n = max(math.sqrt(sum(a * a for a in v)), EPS)
    return [a / n for a in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def loop_alternating(n: int, prefix: int = 0) -> tuple[list[int], list[int]]:
    """ToMe: even positions are sources (CLS at 0 among them), odd positions destinations; prefix
    tokens (CLS, DeiT's distillation token) are all sources, so protecting them keeps them whole."""
    src, dst = [], []
    for i in range(n):
        (src if i < prefix or i % 2 == 0 else dst).append(i)
    return src, dst


def loop_grid(height: int, width: int, sy: int, sx: int) -> tuple[list[int], list[int]]:
    """Segformer++: the top-left token of every sy x sx cell is the destination, all others sources."""
    src, dst = [], []
    for i in range(height):
        for j in range(width):
            (dst if i % sy == 0 and j % sx == 0 else src).append(i * width + j)
    return src, dst


def loop_bipartite(metric: torch.Tensor, r: int, src: list[int], dst: list[int], protect: int):
    """TokenMatchBipartite, one batch item at a time; returns (slot [B][N], node_max [B][S])."""
    slots, maxes = [], []
    for item in metric.tolist():
        m = [_unit(v) for v in item]
        S = len(src)
        node_max, node_idx = [], []
        for s in src:
            best, best_d = -math.inf, -1
            for d_rank, d in enumerate(dst):
                c = _dot(m[s], m[d])
                if c > best:  # strict: the lowest index keeps a tie
                    best, best_d = c, d_rank
            node_max.append(best)
            node_idx.append(best_d)
        for i in range(protect):
            node_max[i] = -math.inf
        order = sorted(range(S), key=lambda i: (-node_max[i], i))
        merged = set(order[:r])
        slot = [None] * len(item)
        nxt = 0
        for i, s in enumerate(src):
            if i in merged:
                slot[s] = S - r + node_idx[i]
            else:
                slot[s] = nxt
                nxt += 1
        for d_rank, d in enumerate(dst):
            slot[d] = S - r + d_rank
        slots.append(slot)
        maxes.append(node_max)
    return slots, maxes


def loop_window_scores(metric: torch.Tensor, height: int, width: int, protect: int) -> list[list[float]]:
    """Mean of the 12 off-diagonal cosines of every 2x2 window (windows row-major)."""
    out = []
    for item in metric.tolist():
        m = [_unit(v) for v in item]
        scores = []
        for ci in range(height // 2):
            for cj in range(width // 2):
                toks = [protect + (2 * ci + di) * width + (2 * cj + dj) for di in (0, 1) for dj in (0, 1)]
                total = sum(_dot(m[a], m[b]) for a in toks for b in toks if a != b)
                scores.append(total / 12.0)
        out.append(scores)
    return out


def loop_window(metric: torch.Tensor, height: int, width: int, k: int, protect: int) -> list[list[int]]:
    """TokenMatchWindow: the k best windows merge whole; slots as docs/ops.md lays them out
    (ALGM's order): protected tokens first, then the merged windows best first (ties: lower
    window index), then the other tokens in input order."""
    N = metric.shape[1]
    slots = []
    for scores in loop_window_scores(metric, height, width, protect):
        order = sorted(range(len(scores)), key=lambda w: (-scores[w], w))
        merged = order[:k]  # in merge order
        window_of = {}
        for ci in range(height // 2):
            for cj in range(width // 2):
                for di in (0, 1):
                    for dj in (0, 1):
                        window_of[protect + (2 * ci + di) * width + (2 * cj + dj)] = ci * (width // 2) + cj
        slot, nxt = [], 0
        for i in range(N):
            w = window_of.get(i)
            if w is not None and w in merged:
                slot.append(protect + merged.index(w))
            elif i < protect:
                slot.append(i)
            else:
                slot.append(protect + k + nxt)
                nxt += 1
        slots.append(slot)
    return slots


def loop_merge(x: torch.Tensor, size: torch.Tensor, slot: list[list[int]], num_out: int):
    """Size-weighted mean per slot: sum(size * x) / sum(size), 0 where nothing lands."""
    B, N, C = x.shape
    xs, ss = x.tolist(), size.tolist()
    merged, merged_size = [], []
    for b in range(B):
        rows, sizes = [], []
        for j in range(num_out):
            tot = sum(ss[b][i][0] for i in range(N) if slot[b][i] == j)
            acc = [sum(ss[b][i][0] * xs[b][i][c] for i in range(N) if slot[b][i] == j) for c in range(C)]
            rows.append([a / tot if tot else 0.0 for a in acc])
            sizes.append([tot])
        merged.append(rows)
        merged_size.append(sizes)
    return torch.tensor(merged, dtype=torch.float64), torch.tensor(merged_size, dtype=torch.float64)


def loop_unmerge(merged: torch.Tensor, slot: list[list[int]]) -> torch.Tensor:
    m = merged.tolist()
    return torch.tensor([[m[b][j] for j in row] for b, row in enumerate(slot)], dtype=torch.float64)


def _tie_free(values: list[float], r: int, margin: float = 1e-4) -> bool:
    """The r-th and (r+1)-th largest differ by far more than fp32 rounding."""
    finite = sorted((v for v in values if v != -math.inf), reverse=True)
    return not (0 < r < len(finite)) or finite[r - 1] - finite[r] > margin


def _bipartite_metric(B: int, N: int, C: int, r: int, src, dst, protect: int, seed: int) -> torch.Tensor:
    """Random metric whose top-r selection has a clear margin (tries seeds from `seed` on)."""
    for s in range(seed, seed + 1000, 101):
        metric = _rand(B, N, C, seed=s)
        if all(_tie_free(row, r) for row in loop_bipartite(metric, r, src, dst, protect)[1]):
            return metric
    raise AssertionError("no tie-free input found")


def _window_metric(B: int, h: int, w: int, C: int, k: int, protect: int, seed: int) -> torch.Tensor:
    for s in range(seed, seed + 1000, 101):
        metric = _rand(B, protect + h * w, C, seed=s)
        if all(_tie_free(row, k) for row in loop_window_scores(metric, h, w, protect)):
            return metric
    raise AssertionError("no tie-free input found")


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- splits --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 5, 17, 50])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_alternating_split(n, prefix):
    src, dst = core.alternating(n, prefix)
    assert (list(src), list(dst)) == loop_alternating(n, prefix)
    if prefix <= 1:  # exactly ToMe's even/odd split
        assert (src, dst) == (tuple(range(0, n, 2)), tuple(range(1, n, 2)))


@pytest.mark.parametrize("hw,cell", [((4, 4), (2, 2)), ((8, 12), (4, 4)), ((6, 4), (2, 2)), ((8, 8), (4, 2))])
def test_grid_split(hw, cell):
    src, dst = core.grid(*hw, *cell)
    assert (list(src), list(dst)) == loop_grid(*hw, *cell)
    assert len(dst) == (hw[0] // cell[0]) * (hw[1] // cell[1])  # one destination per cell


# --- bipartite matching -----------------------------------------------------------------------

BIPARTITE_CASES = [
    # (name, N or grid, r, protect)
    ("tome", 17, 5, 1),
    ("tome", 24, 11, 1),
    ("tome", 9, 0, 1),
    ("tome", 10, 5, 0),
    ("grid", (4, 4, 2, 2), 7, 0),
    ("grid", (8, 8, 4, 4), 50, 0),
    ("grid", (4, 8, 2, 2), 24, 0),
]


def _split(kind, size):
    return loop_alternating(size) if kind == "tome" else loop_grid(*size)


@pytest.mark.parametrize("kind,size,r,protect", BIPARTITE_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_bipartite_slots_match_loop(kind, size, r, protect, seed):
    src, dst = _split(kind, size)
    N = len(src) + len(dst)
    metric = _bipartite_metric(2, N, 6, r, src, dst, protect, seed)
    want, node_max = loop_bipartite(metric, r, src, dst, protect)
    got = ops.match_bipartite_ref(metric, r, src, dst, protect)
    assert got.dtype == torch.int32
    assert got.tolist() == want
    # the registered op and core's closure agree with the reference too
    assert torch.ops.edgemerge.match_bipartite(metric, r, src, dst, protect).tolist() == want
    fns = core.bipartite_match(metric, r, tuple(src), tuple(dst), protect)
    if r:
        assert fns.slot.tolist() == want
    # node_max as used by ALGM's adaptive count
    nm = core.bipartite_node_max(metric, tuple(src), tuple(dst), protect)
    assert torch.allclose(nm.double(), torch.tensor(node_max, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("kind,size,r,protect", BIPARTITE_CASES)
def test_bipartite_merged_outputs_match_loop(kind, size, r, protect):
    src, dst = _split(kind, size)
    N = len(src) + len(dst)
    metric = _bipartite_metric(2, N, 6, r, src, dst, protect, 7)
    x = _rand(2, N, 5, seed=8)
    size_t = torch.randint(1, 5, (2, N, 1), generator=torch.Generator().manual_seed(9)).float()
    want_slot, _ = loop_bipartite(metric, r, src, dst, protect)
    want_x, want_size = loop_merge(x, size_t, want_slot, N - r)
    fns = core.bipartite_match(metric, r, tuple(src), tuple(dst), protect)
    got_x, got_size = fns.merge(x, size_t)
    assert got_x.shape == (2, N - r, 5)
    if r == 0:  # core's count-0 closures are identities (the op itself would only reorder)
        assert got_x is x and got_size is size_t and fns.unmerge(x) is x
        return
    assert torch.equal(got_size.double(), want_size)
    assert torch.allclose(got_x.double(), want_x, atol=1e-5)
    assert torch.allclose(fns.unmerge(got_x).double(), loop_unmerge(want_x, want_slot), atol=1e-5)


def test_segformer_pp_kv_site_matches_loop():
    """SegformerPPAttention.reduce_kv = grid matching on the tokens themselves, size-weighted mean."""
    attn = SegformerPPAttention.__new__(SegformerPPAttention)  # only the hook is exercised
    attn.em_kv, attn.em_proportional = GridSite(0.6, 2, 2), False
    r = int(32 * 0.6)
    src, dst = loop_grid(4, 8, 2, 2)
    kv = _bipartite_metric(1, 32, 8, r, src, dst, 0, 3)  # a 4x8 key/value grid
    merged, bias = attn.reduce_kv(kv, (4, 8))
    slot, _ = loop_bipartite(kv, r, src, dst, 0)
    want, _ = loop_merge(kv, torch.ones(1, 32, 1), slot, 32 - r)
    assert bias is None and merged.shape == (1, 32 - r, 8)
    assert torch.allclose(merged.double(), want, atol=1e-6)


# --- window matching --------------------------------------------------------------------------

WINDOW_CASES = [((4, 4), 2, 1), ((4, 6), 3, 1), ((6, 8), 12, 1), ((2, 2), 1, 0), ((4, 4), 0, 1), ((4, 8), 8, 2)]


@pytest.mark.parametrize("hw,k,protect", WINDOW_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_window_slots_match_loop(hw, k, protect, seed):
    h, w = hw
    N = protect + h * w
    metric = _window_metric(2, h, w, 5, k, protect, seed)
    scores = loop_window_scores(metric, h, w, protect)
    got_scores = ops.window_scores(metric, h, w, protect)
    assert torch.allclose(got_scores.double(), torch.tensor(scores, dtype=torch.float64), atol=1e-6)
    want = loop_window(metric, h, w, k, protect)
    got = ops.match_window_ref(metric, h, w, k, protect)
    assert got.dtype == torch.int32 and got.tolist() == want
    assert torch.ops.edgemerge.match_window(metric, h, w, k, protect).tolist() == want
    for b in range(2):  # protected tokens keep their own leading slots
        assert want[b][:protect] == list(range(protect))


@pytest.mark.parametrize("hw,k,protect", WINDOW_CASES)
def test_window_merged_outputs_match_loop(hw, k, protect):
    h, w = hw
    N = protect + h * w
    metric = _window_metric(2, h, w, 5, k, protect, 11)
    x = _rand(2, N, 3, seed=12)
    size_t = torch.rand(2, N, 1, generator=torch.Generator().manual_seed(13)) + 0.5
    want_slot = loop_window(metric, h, w, k, protect)
    want_x, want_size = loop_merge(x, size_t, want_slot, N - 3 * k)
    fns = core.window_match(metric, h, w, k, protect)
    got_x, got_size = fns.merge(x, size_t)
    assert got_x.shape == (2, N - 3 * k, 3)
    if k == 0:
        assert got_x is x and got_size is size_t and fns.unmerge(x) is x
        return
    assert torch.allclose(got_size.double(), want_size, atol=1e-6)
    assert torch.allclose(got_x.double(), want_x, atol=1e-5)
    assert torch.allclose(fns.unmerge(got_x).double(), loop_unmerge(want_x, want_slot), atol=1e-5)


# --- token_merge / token_unmerge on arbitrary slots -----------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_merge_and_unmerge_match_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, N, C, M = 2, 11, 4, 6
    x = torch.randn(B, N, C, generator=g)
    size_t = torch.rand(B, N, 1, generator=g) + 0.1
    slot = torch.randint(0, M - 1, (B, N), generator=g, dtype=torch.int32)  # slot M-1 stays empty
    merged, merged_size = ops.token_merge_ref(x, size_t, slot, M)
    want_x, want_size = loop_merge(x, size_t, slot.tolist(), M)
    assert torch.allclose(merged.double(), want_x, atol=1e-6)
    assert torch.allclose(merged_size.double(), want_size, atol=1e-6)
    assert torch.equal(merged[:, M - 1], torch.zeros(B, C))  # an empty slot is 0, not NaN
    out = torch.ops.edgemerge.token_unmerge(merged, slot)
    assert torch.equal(out.double(), loop_unmerge(merged.double(), slot.tolist()))


def test_token_merge_fp16_accumulates_in_fp32():
    x = torch.full((1, 4096, 1), 1.0009765625, dtype=torch.float16)  # 1 + 2^-10
    slot = torch.zeros(1, 4096, dtype=torch.int32)
    merged, size = ops.token_merge_ref(x, torch.ones(1, 4096, 1, dtype=torch.float16), slot, 1)
    assert merged.dtype == torch.float16 and size.dtype == torch.float16
    assert merged.item() == 1.0009765625 and size.item() == 4096
