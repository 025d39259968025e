"""Merge plans: variants as data (`export_configs/<model>.toml`), resolved to static counts.

A variant is a small frozen spec; the same count functions serve the patched model (which calls
them on static shapes) and `edgemerge plan` (which prints them), so the two cannot disagree.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from edgemerge.errors import EdgemergeError

VARIANTS = {
    "segformer": ("none", "hq", "fast", "hq-pa", "fast-pa", "hq-lm", "fast-lm", "hq-pa-lm", "fast-pa-lm", "n2d"),
    "segmenter": ("none", "algm"),
    "vit": ("none", "tome", "dtem"),
    "deit": ("none", "tome", "dtem"),
}


@dataclass(frozen=True)
class GridSite:
    """Segformer++ merging of one token set: r = int(n * ratio) sources into one dst per cell."""

    ratio: float
    sy: int
    sx: int

    def count(self, n: int) -> int:
        return int(n * self.ratio)


@dataclass(frozen=True)
class SegformerPlan:
    kv: dict[int, GridSite] = field(default_factory=dict)  # stage (1-based) -> site
    q: dict[int, GridSite] = field(default_factory=dict)
    q_pool: tuple[int, ...] = ()  # n2d: stages whose queries are 2x2-average-pooled
    proportional: bool = False  # log(size) on merged keys (Segformer++ does not use it)
    metric: str = "tokens"  # "tokens" (Segformer++: cosine of the tokens) or "learned" (a Linear(C -> C) per site)


@dataclass(frozen=True)
class ToMePlan:
    r: int  # tokens merged per block (ToMe's constant schedule)
    metric: str = "keys"  # "keys" (ToMe) or "dtem" (a projection on norm1(x): the checkpoint's, else the keys')
    metric_dim: int = 64
    proportional: bool = True


@dataclass(frozen=True)
class ALGMPlan:
    local_layer: int  # block index (0-based) after whose attention 2x2 windows merge
    global_layer: int
    threshold: float  # adaptive local threshold (paper values per model/dataset)
    local_fraction: float  # static mode: fraction of 2x2 windows merged
    global_fraction: float  # static mode: fraction of mergeable sources merged
    mode: str = "static"  # "static" (exportable) or "adaptive" (paper, PyTorch only)


@dataclass(frozen=True)
class NoPlan:
    pass


MergePlan = SegformerPlan | ToMePlan | ALGMPlan | NoPlan


def config_dir() -> Path:
    """export_configs/ beside the package (source tree) or installed as package data."""
    here = Path(__file__).resolve().parents[2] / "export_configs"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / "export_configs"  # installed wheel


def family_of(model: str) -> str:
    from edgemerge.models import get_config

    return get_config(model).family


def load_variants(model: str) -> dict[str, dict[str, Any]]:
    path = config_dir() / f"{model}.toml"
    if not path.is_file():
        family_of(model)  # raises the 'unknown model' error first
        raise EdgemergeError(f"no merge config for {model} ({path} is missing)")
    with open(path, "rb") as f:
        return tomllib.load(f).get("variants", {})


def _grid_sites(d: dict[str, Any]) -> dict[int, GridSite]:
    return {int(s): GridSite(float(d["ratio"]), int(d["grid"][0]), int(d["grid"][1])) for s in d.get("stages", [])}


def get_plan(model: str, variant: str, *, calibration: dict[str, Any] | None = None,
             mode: str | None = None) -> MergePlan:
    """The variant's spec for `model`; `calibration` (from `edgemerge calibrate`) overrides ALGM's fractions."""
    family = family_of(model)
    variants = load_variants(model)
    if calibration is not None:
        check_calibration(model, family, calibration)
    if variant not in variants:
        raise EdgemergeError(f"unknown variant '{variant}' for {model}; known: {', '.join(variants)}")
    v = variants[variant]
    if variant == "none":
        return NoPlan()
    if family == "segformer":
        pool = v.get("q_pool", {})
        return SegformerPlan(kv=_grid_sites(v.get("kv", {})), q=_grid_sites(v.get("q", {})),
                             q_pool=tuple(int(s) for s in pool.get("stages", [])),
                             proportional=bool(v.get("proportional", False)), metric=v.get("metric", "tokens"))
    if family in ("vit", "deit"):
        return ToMePlan(r=int(v["r"]), metric=v.get("metric", "keys"), metric_dim=int(v.get("metric_dim", 64)))
    if family == "segmenter":
        cal = calibration or {}
        return ALGMPlan(local_layer=int(v["local_layer"]), global_layer=int(v["global_layer"]),
                        threshold=float(v["threshold"]),
                        local_fraction=float(cal.get("local_fraction", v["local_fraction"])),
                        global_fraction=float(cal.get("global_fraction", v["global_fraction"])),
                        mode=mode or "static")
    raise EdgemergeError(f"no merging method for family {family}")


def check_calibration(model: str, family: str, calibration: dict[str, Any]) -> None:
    """A calibration is for one model's ALGM sites: refuse it for another model or family, and one
    without both fractions (which would silently mean the defaults)."""
    if family != "segmenter":
        raise EdgemergeError(f"a calibration sets ALGM's counts, which only segmenter-* models use; {model} is a "
                             f"{family} model: drop --calibration")
    made_for = calibration.get("model") if isinstance(calibration, dict) else None
    if made_for is not None and made_for != model:
        raise EdgemergeError(f"the calibration was made for {made_for}, not {model}: run `edgemerge calibrate "
                             f"--model {model}`")
    for key in ("local_fraction", "global_fraction"):
        v = calibration.get(key) if isinstance(calibration, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise EdgemergeError(f"the calibration has no {key} in [0, 1] (got {v!r}): use a file written by "
                                 "`edgemerge calibrate`")


def load_calibration(path: str | Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise EdgemergeError(f"cannot read calibration file {path}: {e}") from None


# --- static counts -------------------------------------------------------------------------

def tome_count(r: int, n: int, protect: int) -> int:
    """ToMe's clamp: at most half of the unprotected tokens can merge in one step."""
    return max(0, min(r, (n - protect) // 2))


def _fraction_of(fraction: float, n: int) -> int:
    """floor(fraction * n), robust to the representation error of calibrated fractions (1/49*49 < 1)."""
    return int(fraction * n + 1e-9)


def algm_local_count(fraction: float, grid_hw: tuple[int, int]) -> int:
    return _fraction_of(fraction, (grid_hw[0] // 2) * (grid_hw[1] // 2))


def algm_global_count(fraction: float, n: int, protect: int) -> int:
    n_src = (n + 1) // 2
    return _fraction_of(fraction, n_src - protect)


def _check_divisible(name: str, hw: tuple[int, int], sy: int, sx: int) -> None:
    if hw[0] % sy or hw[1] % sx:
        raise EdgemergeError(f"{name}: a {hw[0]}x{hw[1]} token grid does not divide into {sy}x{sx} cells; "
                             f"choose a resolution whose stage grids are multiples of the cell")


def resolve(model: str, plan: MergePlan, resolution: tuple[int, int], protect: int = 1) -> dict[str, Any]:
    """Per-stage (Segformer) or per-site (ViT) token counts for one input resolution; a resolution
    the plan cannot divide is refused with the nearest ones that work (CamVid 360x480 -> 384x512).

    `protect`: the ViT's prefix tokens (CLS, plus DeiT's distillation token: 2), which the model
    a checkpoint builds decides; the spatial-reduction ratios come from the model's config.
    tests/merge/test_counts_from_model.py runs every patched zoo model on the meta device and
    checks these counts against the merges it makes."""
    try:
        return _resolve(model, plan, resolution, protect)
    except EdgemergeError as e:
        near = nearest_resolutions(model, plan, resolution)
        if not near:
            raise
        raise EdgemergeError(f"{e}; nearest resolutions that work: " + ", ".join(f"{h}x{w}" for h, w in near)
                             ) from None


def nearest_resolutions(model: str, plan: MergePlan, resolution: tuple[int, int],
                        search: int = 1024) -> list[tuple[int, int]]:
    """The nearest working HxW at or above the request, then at or below it, in multiples of the
    model's total stride (Segformer: 32) or patch size (each side searched alone: the plans'
    conditions are per dimension)."""
    import math

    from edgemerge.models import get_config

    cfg = get_config(model)
    unit = math.prod(cfg.strides) if cfg.family == "segformer" else cfg.patch_size

    def works(h: int, w: int) -> bool:
        try:
            _resolve(model, plan, (h, w))
            return True
        except EdgemergeError:
            return False

    def side(v: int, step: int) -> int | None:
        start = (-(-v // unit) if step > 0 else v // unit) * unit
        return next((c for c in range(start, start + step * search, step * unit) if c > 0 and works(c, c)), None)

    H, W = resolution
    out = []
    for step in (1, -1):
        h, w = side(H, step), side(W, step)
        if h is not None and w is not None and works(h, w) and (h, w) not in out:
            out.append((h, w))
    return out


def _resolve(model: str, plan: MergePlan, resolution: tuple[int, int], protect: int = 1) -> dict[str, Any]:
    from edgemerge.models import get_config

    cfg = get_config(model)
    H, W = resolution
    if cfg.family == "segformer":
        stages, h, w = [], H, W
        sr = tuple(cfg.extra.get("sr_ratios", (8, 4, 2, 1)))
        for s, stride in enumerate(cfg.strides, start=1):
            h, w = -(-h // stride), -(-w // stride)  # overlapping patch embeddings round up
            n_q = h * w
            kv_hw = (h // sr[s - 1], w // sr[s - 1])
            n_kv = kv_hw[0] * kv_hw[1]
            q_kept, kv_kept = n_q, n_kv
            if isinstance(plan, SegformerPlan):
                if s in plan.q_pool:
                    if h % 2 or w % 2:
                        raise EdgemergeError(f"n2d: stage {s} grid {h}x{w} is not even")
                    q_kept = n_q // 4
                elif s in plan.q:
                    site = plan.q[s]
                    _check_divisible(f"stage {s} queries", (h, w), site.sy, site.sx)
                    q_kept = n_q - site.count(n_q)
                if s in plan.kv:
                    site = plan.kv[s]
                    _check_divisible(f"stage {s} keys/values", kv_hw, site.sy, site.sx)
                    kv_kept = n_kv - site.count(n_kv)
            stages.append({"stage": s, "grid": [h, w], "blocks": cfg.depths[s - 1], "queries_in": n_q,
                           "queries_kept": q_kept, "kv_in": n_kv, "kv_kept": kv_kept})
        return {"stages": stages}
    p = cfg.patch_size
    if H % p or W % p:
        raise EdgemergeError(f"resolution {H}x{W} is not a multiple of the patch size {p}")
    grid_hw = (H // p, W // p)
    n = protect + grid_hw[0] * grid_hw[1]
    sites = []
    depth = cfg.depths[0]
    for i in range(depth):
        kept = n
        if isinstance(plan, ToMePlan):
            kept = n - tome_count(plan.r, n, protect)
        elif isinstance(plan, ALGMPlan) and i == plan.local_layer:
            if grid_hw[0] % 2 or grid_hw[1] % 2:
                raise EdgemergeError(f"ALGM: the {grid_hw[0]}x{grid_hw[1]} patch grid is not even")
            kept = n - 3 * algm_local_count(plan.local_fraction, grid_hw)
        elif isinstance(plan, ALGMPlan) and i == plan.global_layer:
            kept = n - algm_global_count(plan.global_fraction, n, protect)
        if kept != n or i == 0:
            sites.append({"block": i, "tokens_in": n, "tokens_kept": kept})
        n = kept
    return {"sites": [s for s in sites if s["tokens_in"] != s["tokens_kept"]], "tokens_out": n,
            "tokens_in": protect + grid_hw[0] * grid_hw[1]}


def plan_dict(plan: MergePlan) -> dict[str, Any]:
    d = asdict(plan) if not isinstance(plan, NoPlan) else {}
    d["method"] = type(plan).__name__.removesuffix("Plan").lower()
    return json.loads(json.dumps(d, default=str))
