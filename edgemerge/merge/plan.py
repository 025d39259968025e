"""Merge plans: variants as data (`export_configs/<model>.toml`), and the count functions the
patched model calls on static shapes. What a plan does at a resolution is read off the patched
model itself: `edgemerge.merge.counts.resolve`.
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
    ffn: dict[int, GridSite] = field(default_factory=dict)  # MixFFN's fc1 input merged (cosine), restored for the conv
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
    metric: str = "tokens"  # global site: "tokens" (ALGM) or "learned" (a Linear(C -> C) on them)


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
                             q_pool=tuple(int(s) for s in pool.get("stages", [])), ffn=_grid_sites(v.get("ffn", {})),
                             proportional=bool(v.get("proportional", False)), metric=v.get("metric", "tokens"))
    if family in ("vit", "deit"):
        return ToMePlan(r=int(v["r"]), metric=v.get("metric", "keys"), metric_dim=int(v.get("metric_dim", 64)))
    if family == "segmenter":
        cal = calibration or {}
        return ALGMPlan(local_layer=int(v["local_layer"]), global_layer=int(v["global_layer"]),
                        threshold=float(v["threshold"]),
                        local_fraction=float(cal.get("local_fraction", v["local_fraction"])),
                        global_fraction=float(cal.get("global_fraction", v["global_fraction"])),
                        mode=mode or "static", metric=v.get("metric", "tokens"))
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


def plan_dict(plan: MergePlan) -> dict[str, Any]:
    d = asdict(plan) if not isinstance(plan, NoPlan) else {}
    d["method"] = type(plan).__name__.removesuffix("Plan").lower()
    return json.loads(json.dumps(d, default=str))
