"""Static merge counts, read off the patched model itself.

What the manifest, `edgemerge plan` and the resolution checks report is what the model does at a
resolution: a copy of it is built on the meta device (no weights, no compute), patched with the
plan, and run once; each merge site's tokens in and out are what the site saw. Nothing re-derives
the counts, so plan and model cannot disagree (a DeiT with its distillation token protects two
tokens: the model knows, a formula would have to be told).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
from torch import nn

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.merge.patch import _vit_of, apply_merging
from edgemerge.merge.plan import ALGMPlan, MergePlan
from edgemerge.models.registry import ModelConfig, build_from_config, get_config


def resolve(model: str | ModelConfig, plan: MergePlan, resolution: tuple[int, int]) -> dict[str, Any]:
    """Per-stage (Segformer) or per-site (ViT) token counts at one input resolution, from the
    patched model; a resolution the plan cannot take is refused with the nearest ones that work
    (CamVid 360x480 -> 384x512).

    `model`: a zoo name, or the config a built model carries (`model.config`: a checkpoint's DeiT
    with its distillation token differs from the zoo's). An adaptive ALGM plan (PyTorch only)
    counts as its static fractions, which is what an export of it runs."""
    cfg = get_config(model) if isinstance(model, str) else model
    try:
        return _counts(cfg, plan, resolution)
    except EdgemergeError as e:
        near = nearest_resolutions(cfg, plan, resolution)
        if not near:
            raise
        raise EdgemergeError(f"{e}; nearest resolutions that work: " + ", ".join(f"{h}x{w}" for h, w in near)
                             ) from None


def nearest_resolutions(model: str | ModelConfig, plan: MergePlan, resolution: tuple[int, int],
                        search: int = 1024) -> list[tuple[int, int]]:
    """The nearest working HxW at or above the request, then at or below it, in multiples of the
    model's total stride (Segformer: 32) or patch size (each side searched alone: the plans'
    conditions are per dimension)."""
    cfg = get_config(model) if isinstance(model, str) else model
    unit = math.prod(cfg.strides) if cfg.family == "segformer" else cfg.patch_size

    def works(h: int, w: int) -> bool:
        try:
            _counts(cfg, plan, (h, w))
            return True
        except EdgemergeError:
            return False

    def side(v: int, step: int) -> int | None:
        start = (-(-v // unit) if step > 0 else v // unit) * unit
        return next((c for c in range(start, start + step * search, step * unit) if c > 0 and works(c, c)), None)

    H, W = resolution
    out: list[tuple[int, int]] = []
    for step in (1, -1):
        h, w = side(H, step), side(W, step)
        if h is not None and w is not None and works(h, w) and (h, w) not in out:
            out.append((h, w))
    return out


def _counts(cfg: ModelConfig, plan: MergePlan, resolution: tuple[int, int]) -> dict[str, Any]:
    H, W = resolution
    if cfg.family != "segformer" and (H % cfg.patch_size or W % cfg.patch_size):
        raise EdgemergeError(f"resolution {H}x{W} is not a multiple of the patch size {cfg.patch_size}")
    if isinstance(plan, ALGMPlan) and plan.mode != "static":
        plan = dataclasses.replace(plan, mode="static")
    with torch.device("meta"):
        model = build_from_config(dataclasses.replace(cfg, resolution=(H, W)))
    apply_merging(model, plan)
    watch = _watch_segformer if cfg.family == "segformer" else _watch_vit
    seen: dict[Any, Any] = {}
    report = watch(model, seen)
    with torch.no_grad():
        model(torch.empty(1, 3, H, W, device="meta"))
    return report()


def _refusing(where: str, fn: Callable) -> Callable:
    """`fn`, with a grid the merge cannot divide (core.grid / core.window_match's ValueError)
    turned into the one-line error that names the site."""
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise EdgemergeError(f"{where}: {e}; choose a resolution whose stage grids are multiples "
                                 f"of the cell") from None
    return call


# a Segformer stage's counts, in the order `edgemerge plan` prints them
STAGE_COUNTS = ("queries_in", "queries_kept", "kv_in", "kv_kept", "ffn_in", "ffn_kept")


def _watch_segformer(model: nn.Module, seen: dict) -> Callable[[], dict[str, Any]]:
    """Wrap every merge hook (attention's reduce_queries / reduce_kv, MixFFN's reduce_tokens) to
    note tokens in and out."""
    stages = model.encoder.stages
    for s, stage in enumerate(stages, start=1):
        for attn in (blk.attn for blk in stage.blocks):
            def reduce_queries(x, hw, _s=s, _f=_refusing(f"stage {s} queries", attn.reduce_queries)):
                out = _f(x, hw)
                seen.setdefault(_s, {}).update(grid=list(hw), queries_in=x.shape[1], queries_kept=out[0].shape[1])
                return out

            def reduce_kv(kv, hw, _s=s, _f=_refusing(f"stage {s} keys/values", attn.reduce_kv)):
                out = _f(kv, hw)
                seen.setdefault(_s, {}).update(kv_in=kv.shape[1], kv_kept=out[0].shape[1])
                return out

            attn.reduce_queries, attn.reduce_kv = reduce_queries, reduce_kv
        for mlp in (blk.mlp for blk in stage.blocks):
            def reduce_ffn(x, hw, _s=s, _f=_refusing(f"stage {s} MixFFN", mlp.reduce_tokens)):
                out = _f(x, hw)
                seen.setdefault(_s, {}).update(ffn_in=x.shape[1], ffn_kept=out[0].shape[1])
                return out

            mlp.reduce_tokens = reduce_ffn

    def report() -> dict[str, Any]:
        return {"stages": [{"stage": s, "grid": seen[s]["grid"], "blocks": len(stage.blocks),
                            **{k: seen[s][k] for k in STAGE_COUNTS}}
                           for s, stage in enumerate(stages, start=1)]}
    return report


def _watch_vit(model: nn.Module, seen: dict) -> Callable[[], dict[str, Any]]:
    """A forward hook on every block notes tokens in and out."""
    blocks = _vit_of(model).blocks
    for i, blk in enumerate(blocks):
        blk.reduce_tokens = _refusing("ALGM", blk.reduce_tokens)
        blk.register_forward_hook(lambda m, args, out, _i=i: seen.__setitem__(_i, (args[0].shape[1], out[0].shape[1])))

    def report() -> dict[str, Any]:
        sites = [{"block": i, "tokens_in": n_in, "tokens_kept": n_out}
                 for i, (n_in, n_out) in sorted(seen.items()) if n_in != n_out]
        return {"sites": sites, "tokens_out": seen[len(blocks) - 1][1], "tokens_in": seen[0][0]}
    return report
