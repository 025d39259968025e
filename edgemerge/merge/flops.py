"""GFLOPs of a merged model vs the unmerged one, counted by torch on the meta device.

torch's FlopCounterMode counts matmuls, convolutions and attention as they actually run, so the
merged figure follows the real token counts; the merge ops add their own cost through formulas
registered below (the similarity matmul dominates).
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from edgemerge.merge import ops  # noqa: F401
from edgemerge.models.registry import ModelConfig, build_from_config, get_config


@register_flop_formula(torch.ops.edgemerge.match_bipartite)
def _match_bipartite_flops(metric_shape, r, src, dst, protect, *args, out_shape=None, **kw) -> int:
    B, N, C = metric_shape
    return 2 * B * len(src) * len(dst) * C + 3 * B * N * C


@register_flop_formula(torch.ops.edgemerge.match_cell)
def _match_cell_flops(metric_shape, *args, out_shape=None, **kw) -> int:
    """Normalising (3 N C) plus one dot product per token with its cell's anchor (2 N C): no S x D."""
    B, N, C = metric_shape
    return 2 * B * N * C + 3 * B * N * C


@register_flop_formula(torch.ops.edgemerge.match_window)
def _match_window_flops(metric_shape, *args, out_shape=None, **kw) -> int:
    B, N, C = metric_shape
    return 2 * B * N * 4 * C + 3 * B * N * C


@register_flop_formula(torch.ops.edgemerge.token_merge)
def _token_merge_flops(x_shape, *args, out_shape=None, **kw) -> int:
    B, N, C = x_shape
    return 3 * B * N * C


@register_flop_formula(torch.ops.edgemerge.token_merge_cell)
def _token_merge_cell_flops(x_shape, *args, out_shape=None, **kw) -> int:
    """TokenMerge's count: the same products, sums and divisions, only without the one-hot."""
    B, N, C = x_shape
    return 3 * B * N * C


def count_gflops(model: torch.nn.Module, resolution: tuple[int, int], batch: int = 1) -> float:
    model = model.to("meta")
    x = torch.empty(batch, 3, *resolution, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def gflops(model: str | ModelConfig, variant: str, resolution: tuple[int, int], *,
           calibration: dict | None = None, plan=None) -> dict:
    """{'merged': G, 'unmerged': G, 'ratio': unmerged / merged} for batch 1 at `resolution`.

    `model`: a zoo name, or the config a built model carries (`model.config`), as for
    `counts.resolve`: a checkpoint's class count changes Segformer's classifier (150 classes cost
    0.94 GFLOPs at 384x512, CamVid's 11 cost 0.07), a distilled DeiT has one token more.
    `plan`: the MergePlan itself (a user's plan file), instead of the variant's."""
    from edgemerge.merge.patch import apply_merging
    from edgemerge.merge.plan import get_plan
    from edgemerge.models.registry import deployed_form

    cfg = get_config(model) if isinstance(model, str) else model
    with torch.device("meta"):
        net = build_from_config(dataclasses.replace(cfg, resolution=tuple(resolution)))
    deployed_form(net)  # FLOPs of what is exported
    unmerged = count_gflops(net, resolution)
    apply_merging(net, plan if plan is not None else get_plan(cfg.name, variant, calibration=calibration))
    merged = count_gflops(net, resolution)
    return {"merged": round(merged, 3), "unmerged": round(unmerged, 3), "ratio": round(unmerged / merged, 3)}
