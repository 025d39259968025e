"""The four ops in torch, exactly as docs/ops.md states them: the JIT Python plugin's body.

Runs on any device (the JIT plugin calls it on TensorRT's CUDA stream; the tests on CPU). It is a
self-contained restatement of the spec so the TensorRT layer does not depend on the export side.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _normalise(metric: torch.Tensor) -> torch.Tensor:
    m = metric.float()
    return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def token_match_bipartite(metric: torch.Tensor, r: int, src: Sequence[int], dst: Sequence[int],
                          protect: int) -> torch.Tensor:
    """metric [B, N, C] -> slot [B, N] int32 (see docs/ops.md, TokenMatchBipartite)."""
    B, N, _ = metric.shape
    dev = metric.device
    src_t = torch.as_tensor([int(i) for i in src], dtype=torch.long, device=dev)
    dst_t = torch.as_tensor([int(i) for i in dst], dtype=torch.long, device=dev)
    S, D = len(src_t), len(dst_t)
    m = _normalise(metric)
    scores = m[:, src_t] @ m[:, dst_t].transpose(1, 2)  # [B, S, D]
    node_idx = scores.argmax(dim=-1)  # lowest index among equal maxima
    node_max = scores.gather(-1, node_idx[..., None])[..., 0].clone()
    node_max[:, :protect] = float("-inf")
    order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices
    is_merged = torch.zeros(B, S, dtype=torch.bool, device=dev)
    is_merged.scatter_(1, order[:, :r], True)
    unmerged_rank = torch.cumsum((~is_merged).long(), dim=1) - 1
    src_slot = torch.where(is_merged, S - r + node_idx, unmerged_rank)
    slot = torch.empty(B, N, dtype=torch.long, device=dev)
    slot[:, src_t] = src_slot
    slot[:, dst_t] = (S - r + torch.arange(D, device=dev)).expand(B, D)
    return slot.to(torch.int32)


def token_match_window(metric: torch.Tensor, height: int, width: int, k: int,
                       protect: int) -> torch.Tensor:
    """metric [B, N, C] -> slot [B, N] int32 (see docs/ops.md, TokenMatchWindow)."""
    B, N, C = metric.shape
    dev = metric.device
    h2, w2 = height // 2, width // 2
    m = _normalise(metric)[:, protect:].reshape(B, h2, 2, w2, 2, C)
    win = m.permute(0, 1, 3, 2, 4, 5).reshape(B, h2 * w2, 4, C)
    cos = win @ win.transpose(-1, -2)  # [B, W, 4, 4]
    score = (cos.sum(dim=(-1, -2)) - cos.diagonal(dim1=-2, dim2=-1).sum(-1)) / 12.0
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    win_merged = torch.zeros(B, h2 * w2, dtype=torch.bool, device=dev)
    win_merged.scatter_(1, order[:, :k], True)
    win_rank = torch.cumsum(win_merged.long(), dim=1) - 1  # rank among merged windows
    # window index of every grid token, row-major over the token grid
    rows = torch.arange(height, device=dev)[:, None] // 2
    cols = torch.arange(width, device=dev)[None, :] // 2
    token_win = (rows * w2 + cols).reshape(-1)  # [H*W]
    tok_merged = torch.cat([torch.zeros(B, protect, dtype=torch.bool, device=dev),
                            win_merged[:, token_win]], dim=1)  # [B, N]
    tok_rank = torch.cat([torch.zeros(B, protect, dtype=torch.long, device=dev),
                          win_rank[:, token_win]], dim=1)
    kept_rank = torch.cumsum((~tok_merged).long(), dim=1) - 1
    slot = torch.where(tok_merged, N - 4 * k + tok_rank, kept_rank)
    return slot.to(torch.int32)


def token_merge(x: torch.Tensor, size: torch.Tensor, slot: torch.Tensor,
                num_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, N, C], size [B, N, 1], slot [B, N] -> merged [B, M, C], merged_size [B, M, 1]."""
    B, N, C = x.shape
    idx = slot.long()[..., None]
    sz = size.float()
    sums = torch.zeros(B, num_out, C, dtype=torch.float32, device=x.device)
    sums.scatter_add_(1, idx.expand(B, N, C), x.float() * sz)
    msize = torch.zeros(B, num_out, 1, dtype=torch.float32, device=x.device)
    msize.scatter_add_(1, idx, sz)
    merged = torch.where(msize != 0, sums / torch.where(msize != 0, msize, 1.0), 0.0)
    return merged.to(x.dtype), msize.to(size.dtype)


def token_unmerge(merged: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """merged [B, M, C], slot [B, N] -> x [B, N, C] = merged[b, slot[b, i]]."""
    B, N = slot.shape
    return merged.gather(1, slot.long()[..., None].expand(B, N, merged.shape[-1]))


def run(op_name: str, inputs: list[torch.Tensor], attrs: dict) -> list[torch.Tensor]:
    """Dispatch by op name with the plugin's inputs and attributes; returns the outputs in order."""
    if op_name == "TokenMatchBipartite":
        return [token_match_bipartite(inputs[0], int(attrs["r"]), list(attrs["src"]),
                                      list(attrs["dst"]), int(attrs["protect"]))]
    if op_name == "TokenMatchWindow":
        return [token_match_window(inputs[0], int(attrs["height"]), int(attrs["width"]),
                                   int(attrs["k"]), int(attrs["protect"]))]
    if op_name == "TokenMerge":
        return list(token_merge(inputs[0], inputs[1], inputs[2], int(attrs["num_out"])))
    if op_name == "TokenUnmerge":
        return [token_unmerge(inputs[0], inputs[1])]
    raise KeyError(op_name)
