"""The six `edgemerge` ops as PyTorch references (spec: docs/ops.md).

These functions are the ground truth the ONNX function bodies and the CUDA kernels are tested
against. They are also registered as `torch.library` custom ops (`torch.ops.edgemerge.*`), so
that `torch.onnx.export` sees one opaque node per op and the exporter can write it as an
`edgemerge`-domain node instead of tracing argsort/scatter graphs (which mis-export).

Shapes: `x [B, N, C]`, `slot [B, N] int32`; every count is a Python int (static).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NORM_EPS = 1e-6


def _normalize(metric: Tensor) -> Tensor:
    m = metric.float()
    return m / m.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def _top_mask(score: Tensor, r: int) -> Tensor:
    """Bool mask of the r largest scores per row; ties go to the lower index (stable sort)."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(score, dtype=torch.bool)
    return mask.scatter(-1, order[..., :r], True)


def match_bipartite_ref(
    metric: Tensor, r: int, src: Sequence[int], dst: Sequence[int], protect: int = 0
) -> Tensor:
    """TokenMatchBipartite: slot of every token after merging the r best-matched sources."""
    B, N, _ = metric.shape
    S, D = len(src), len(dst)
    if S + D != N:
        raise ValueError(f"src ({S}) + dst ({D}) must cover all {N} tokens")
    if not 0 <= r <= S - protect:
        raise ValueError(f"r={r} must be within [0, {S - protect}] (sources {S}, protected {protect})")
    dev = metric.device
    src_t = torch.as_tensor(list(src), dtype=torch.long, device=dev)
    dst_t = torch.as_tensor(list(dst), dtype=torch.long, device=dev)
    m = _normalize(metric)
    return bipartite_slots(m[:, src_t] @ m[:, dst_t].transpose(1, 2), r, src, dst, protect)


def bipartite_slots(scores: Tensor, r: int, src: Sequence[int], dst: Sequence[int], protect: int = 0) -> Tensor:
    """Steps 2-5 of TokenMatchBipartite on given scores [B, S, D]: the slot of every token.

    Split out so that a test can hand it masked scores (TokenMatchCell is this with every score
    but the source's own cell anchor at -inf: tests/merge/test_cell_match.py)."""
    B, S, D = scores.shape
    N = S + D
    dev = scores.device
    src_t = torch.as_tensor(list(src), dtype=torch.long, device=dev)
    dst_t = torch.as_tensor(list(dst), dtype=torch.long, device=dev)
    node_max, node_idx = scores.max(dim=-1)  # first maximum on ties
    if protect:
        node_max[:, :protect] = -torch.inf
    merged = _top_mask(node_max, r)  # [B, S]
    unm_rank = torch.cumsum((~merged).long(), dim=1) - 1
    slot_src = torch.where(merged, S - r + node_idx, unm_rank)
    slot = torch.empty(B, N, dtype=torch.long, device=dev)
    slot[:, src_t] = slot_src
    slot[:, dst_t] = (S - r + torch.arange(D, device=dev)).expand(B, D)
    return slot.int()


def cell_layout(height: int, width: int, sy: int, sx: int, device=None) -> tuple[Tensor, Tensor]:
    """(anchor [N], cell [N]) of a row-major height x width grid cut into sy x sx cells: the
    position of each token's cell anchor (its top-left token, `core.grid`'s destination) and the
    cell's row-major index (its rank among the anchors, so TokenMatchBipartite's slot layout)."""
    if height % sy or width % sx:
        raise ValueError(f"a {height}x{width} token grid does not divide into {sy}x{sx} cells")
    pos = torch.arange(height * width, device=device)
    i, j = pos // width, pos % width
    anchor = (i - i % sy) * width + (j - j % sx)
    return anchor, (i // sy) * (width // sx) + j // sx


def cell_scores(metric: Tensor, height: int, width: int, sy: int, sx: int) -> Tensor:
    """Cosine of every token to its own cell's anchor `[B, N]`, -inf at the anchors (never merged).
    One gather and one dot product per token: O(N*C), no N x N similarity."""
    anchor, _ = cell_layout(height, width, sy, sx, metric.device)
    m = _normalize(metric)
    score = (m * m[:, anchor]).sum(-1)
    return score.masked_fill(anchor == torch.arange(len(anchor), device=metric.device), -torch.inf)


def match_cell_ref(metric: Tensor, r: int, height: int, width: int, sy: int, sx: int) -> Tensor:
    """TokenMatchCell: slot of every token after merging the r sources most similar to their own
    cell's anchor (docs/ops.md). TokenMatchBipartite's slot layout over `core.grid`'s split (so
    TokenMerge / TokenUnmerge and the decision judge read it unchanged): unmerged sources in input
    order, then the anchors in cell order. Ties: the lower position merges first, which is
    TokenMatchBipartite's lower-source-index rule, sources being ascending positions."""
    B, N, _ = metric.shape
    if N != height * width:
        raise ValueError(f"{N} tokens do not form a {height}x{width} grid")
    anchor, cell = cell_layout(height, width, sy, sx, metric.device)
    S = N - (height // sy) * (width // sx)
    if not 0 <= r <= S:
        raise ValueError(f"r={r} must be within [0, {S}] (sources of {sy}x{sx} cells)")
    merged = _top_mask(cell_scores(metric, height, width, sy, sx), r)  # anchors are -inf: never among r <= S
    grouped = merged | (anchor == torch.arange(N, device=metric.device))
    kept_rank = torch.cumsum((~grouped).long(), dim=1) - 1
    return torch.where(grouped, S - r + cell, kept_rank).int()


def window_scores(metric: Tensor, height: int, width: int, protect: int = 0) -> Tensor:
    """Mean off-diagonal cosine of each 2x2 window, `[B, (height/2)*(width/2)]` (ALGM local)."""
    B, _, C = metric.shape
    m = _normalize(metric)[:, protect:]
    w = m.reshape(B, height // 2, 2, width // 2, 2, C).permute(0, 1, 3, 2, 4, 5)
    w = w.reshape(B, -1, 4, C)
    gram = w @ w.transpose(-1, -2)  # [B, W, 4, 4]
    return (gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)) / 12.0


def window_rank(score: Tensor) -> Tensor:
    """Rank of every window `[B, W]` in descending score order, ties to the lower window index:
    the number of windows with a higher score, plus those with an equal score and a lower index."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    return rank.scatter_(-1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order))


def match_window_ref(metric: Tensor, height: int, width: int, k: int, protect: int = 0) -> Tensor:
    """TokenMatchWindow: slot of every token after merging the k most uniform 2x2 windows.

    Layout (ALGM's `conditional_pooling`): the protected tokens at 0..protect-1, then the merged
    windows in descending score order (ties: lower window index), then the other tokens in input
    order."""
    B, N, _ = metric.shape
    if height % 2 or width % 2:
        raise ValueError(f"window matching needs an even token grid, got {height}x{width}")
    if N != protect + height * width:
        raise ValueError(f"{N} tokens do not form {protect} + {height}x{width}")
    nwin = (height // 2) * (width // 2)
    if not 0 <= k <= nwin:
        raise ValueError(f"k={k} must be within [0, {nwin}] windows")
    win_rank = window_rank(window_scores(metric, height, width, protect))  # [B, W]

    def to_tokens(t: Tensor) -> Tensor:  # [B, W] -> [B, h*w], each window value on its 4 tokens
        t = t.reshape(B, height // 2, 1, width // 2, 1).expand(-1, -1, 2, -1, 2)
        return t.reshape(B, height * width)

    tok_merged = torch.cat([win_rank.new_zeros(B, protect, dtype=torch.bool), to_tokens(win_rank < k)], dim=1)
    tok_rank = torch.cat([win_rank.new_zeros(B, protect), to_tokens(win_rank)], dim=1)
    kept_rank = torch.cumsum((~tok_merged).long(), dim=1) - 1  # protected tokens: their own position
    after_windows = (torch.arange(N, device=metric.device) >= protect).long() * k
    return torch.where(tok_merged, protect + tok_rank, kept_rank + after_windows).int()


def token_merge_ref(x: Tensor, size: Tensor, slot: Tensor, num_out: int) -> tuple[Tensor, Tensor]:
    """TokenMerge: size-weighted mean per slot, from sums and one division (fp32 accumulation)."""
    B, N, C = x.shape
    idx = slot.long()
    w = size.float()
    sums = x.new_zeros(B, num_out, C, dtype=torch.float32)
    sums.scatter_add_(1, idx[..., None].expand(B, N, C), x.float() * w)
    sizes = w.new_zeros(B, num_out, 1).scatter_add_(1, idx[..., None], w)
    merged = torch.where(sizes > 0, sums / sizes.clamp_min(NORM_EPS), torch.zeros_like(sums))
    return merged.to(x.dtype), sizes.to(size.dtype)


def token_merge_cell_ref(x: Tensor, size: Tensor, slot: Tensor, height: int, width: int, sy: int, sx: int,
                         num_out: int) -> tuple[Tensor, Tensor]:
    """TokenMergeCell: TokenMerge on slots in TokenMatchCell's layout, computed from the grid
    instead of the slot values, O(N*C): a token with slot >= K (K = num_out - cells) is in its own
    cell's anchor group, and the cell's sums are a reshape to [B, H/sy, sy, W/sx, sx, C] and a sum
    over the two in-cell axes (no scatter); the K kept tokens are gathered at their positions
    (ordered by slot). Sums in fp32, one division (docs/ops.md)."""
    B, N, C = x.shape
    cells = (height // sy) * (width // sx)
    K = num_out - cells
    if N != height * width or height % sy or width % sx or K < 0:
        raise ValueError(f"{N} tokens, a {height}x{width} grid of {sy}x{sx} cells and num_out={num_out} disagree")
    w = size.float()
    grouped = slot.long() >= K  # [B, N]
    gw = w * grouped[..., None]

    def per_cell(t: Tensor) -> Tensor:  # [B, N, c] -> [B, cells, c]: the sum over each cell
        t = t.reshape(B, height // sy, sy, width // sx, sx, t.shape[-1])
        return t.sum(dim=(2, 4)).reshape(B, cells, -1)

    cell_sums, cell_sizes = per_cell(x.float() * gw), per_cell(gw)
    # positions of the kept tokens ordered by their slot (grouped ones sort last, stably)
    kept_pos = torch.sort(torch.where(grouped, K, slot.long()), dim=1, stable=True).indices[:, :K]
    kept_size = w.gather(1, kept_pos[..., None])
    kept_sums = x.float().gather(1, kept_pos[..., None].expand(B, K, C)) * kept_size
    sums, sizes = torch.cat([kept_sums, cell_sums], 1), torch.cat([kept_size, cell_sizes], 1)
    merged = torch.where(sizes > 0, sums / sizes.clamp_min(NORM_EPS), torch.zeros_like(sums))
    return merged.to(x.dtype), sizes.to(size.dtype)


def token_unmerge_ref(merged: Tensor, slot: Tensor) -> Tensor:
    """TokenUnmerge: copy each merged token back to every position it came from."""
    B, N = slot.shape
    return merged.gather(1, slot.long()[..., None].expand(B, N, merged.shape[-1]))


# --- torch.library registration: one opaque node per op for the ONNX exporter ---------------

@torch.library.custom_op("edgemerge::match_bipartite", mutates_args=())
def match_bipartite(metric: Tensor, r: int, src: list[int], dst: list[int], protect: int) -> Tensor:
    return match_bipartite_ref(metric, r, src, dst, protect)


@match_bipartite.register_fake
def _(metric, r, src, dst, protect):
    return metric.new_empty(metric.shape[:2], dtype=torch.int32)


@torch.library.custom_op("edgemerge::match_cell", mutates_args=())
def match_cell(metric: Tensor, r: int, height: int, width: int, sy: int, sx: int) -> Tensor:
    return match_cell_ref(metric, r, height, width, sy, sx)


@match_cell.register_fake
def _(metric, r, height, width, sy, sx):
    return metric.new_empty(metric.shape[:2], dtype=torch.int32)


@torch.library.custom_op("edgemerge::match_window", mutates_args=())
def match_window(metric: Tensor, height: int, width: int, k: int, protect: int) -> Tensor:
    return match_window_ref(metric, height, width, k, protect)


@match_window.register_fake
def _(metric, height, width, k, protect):
    return metric.new_empty(metric.shape[:2], dtype=torch.int32)


@torch.library.custom_op("edgemerge::token_merge", mutates_args=())
def token_merge(x: Tensor, size: Tensor, slot: Tensor, num_out: int) -> tuple[Tensor, Tensor]:
    return token_merge_ref(x, size, slot, num_out)


@token_merge.register_fake
def _(x, size, slot, num_out):
    return x.new_empty(x.shape[0], num_out, x.shape[2]), size.new_empty(x.shape[0], num_out, 1)


@torch.library.custom_op("edgemerge::token_merge_cell", mutates_args=())
def token_merge_cell(x: Tensor, size: Tensor, slot: Tensor, height: int, width: int, sy: int, sx: int,
                     num_out: int) -> tuple[Tensor, Tensor]:
    return token_merge_cell_ref(x, size, slot, height, width, sy, sx, num_out)


@token_merge_cell.register_fake
def _(x, size, slot, height, width, sy, sx, num_out):
    return x.new_empty(x.shape[0], num_out, x.shape[2]), size.new_empty(x.shape[0], num_out, 1)


@torch.library.custom_op("edgemerge::token_unmerge", mutates_args=())
def token_unmerge(merged: Tensor, slot: Tensor) -> Tensor:
    return token_unmerge_ref(merged, slot)


@token_unmerge.register_fake
def _(merged, slot):
    return merged.new_empty(slot.shape[0], slot.shape[1], merged.shape[2])
