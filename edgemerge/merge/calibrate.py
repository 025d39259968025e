"""Calibrate ALGM's static counts from images.

ALGM decides per image how many 2x2 windows merge (cosine >= threshold) and how many sources the
global step merges (node_max >= mean + std / layer). An exported engine needs static counts, so
`calibrate` checks every image first (each decodes, none smaller than a patch), then runs the
adaptive (paper) mode over them, one at a time, records what
each site merged as a fraction of what it could merge, and keeps a quantile of those fractions:
a lower quantile is more conservative (fewer merges than most images would allow). `get_plan`
reads the result back as `local_fraction` / `global_fraction`.

The counts are recorded by wrapping `core.window_match` / `core.bipartite_match` for the duration
of one forward pass, so the merge code itself is not touched.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.merge import core

@dataclass
class SiteRecord:
    """One merge site of one forward pass: `count` merged out of `capacity` possible."""

    site: str  # "local" (2x2 windows) or "global" (bipartite sources)
    count: int
    capacity: int

    @property
    def fraction(self) -> float:
        return self.count / self.capacity if self.capacity else 0.0


@contextmanager
def record_merges() -> Iterator[list[SiteRecord]]:
    """While active, every window / bipartite match a patched model makes is appended to the list."""
    records: list[SiteRecord] = []

    def record(e: core.MatchEvent | core.SiteEvent) -> None:
        if isinstance(e, core.MatchEvent):
            records.append(SiteRecord("local" if e.kind == "window" else "global", e.count, e.capacity))

    with core.observe(record):
        yield records


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of a non-empty list."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _load_model(model_name: str, checkpoint: str | None, resolution: tuple[int, int] | None, seed: int):
    from edgemerge.models.registry import build_model
    from edgemerge.models.checkpoint import load_checkpoint

    if checkpoint is not None:
        model, _ = load_checkpoint(model_name, checkpoint, resolution=resolution)
        return model.eval()
    torch.manual_seed(seed)
    return build_model(model_name, resolution=resolution)


def calibrate(model_name: str, images: str | Path, *, checkpoint: str | None = None,
              resolution: tuple[int, int] | None = None, quantile: float = 0.5, seed: int = 0,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Per-image ALGM fractions over the images in a folder and their `quantile` (a calibration dict)."""
    from edgemerge.contracts.images import MIN_IMAGE_SIDE, check_images, list_images, load_image, normalize
    from edgemerge.merge.patch import apply_merging
    from edgemerge.merge.plan import get_plan
    from edgemerge.models.registry import get_config

    cfg = get_config(model_name)
    from edgemerge.merge.family import family_for

    if not family_for(cfg.family).takes_calibration:
        raise EdgemergeError(f"calibrate sets ALGM's counts, which only segmenter-* models use; {model_name} is a "
                             f"{cfg.family} model (its merge counts are static already: see `edgemerge plan`)")
    if not 0.0 <= quantile <= 1.0:
        raise EdgemergeError(f"quantile must be within [0, 1], got {quantile}")
    files = list_images(images)
    if checkpoint is not None:  # a FIFO or a device would block the load: refused with the images
        from edgemerge.models.checkpoint import check_checkpoint_path

        check_checkpoint_path(checkpoint)
    # every image decoded once before the model runs: a bad last image is refused now, not after
    # all the others were processed; none smaller than one patch
    check_images(files, min_side=max(MIN_IMAGE_SIDE, cfg.patch_size))
    model = _load_model(model_name, checkpoint, resolution, seed)
    mcfg = getattr(model, "config", cfg)
    H, W = mcfg.resolution
    plan = get_plan(model_name, "algm", mode="adaptive")
    apply_merging(model, plan)

    per_image = []
    for i, path in enumerate(files):
        x = torch.from_numpy(normalize(load_image(path, H, W)[None], mcfg.mean, mcfg.std))
        with record_merges() as records, torch.inference_mode():
            model(x)
        by_site = {r.site: r for r in records}
        if len(records) != 2 or set(by_site) != {"local", "global"}:
            raise EdgemergeError(f"expected one local and one global ALGM site, recorded {[r.site for r in records]}")
        loc, glo = by_site["local"], by_site["global"]
        per_image.append({"image": path.name, "local_k": loc.count, "local_windows": loc.capacity,
                          "local_fraction": loc.fraction, "global_r": glo.count, "global_sources": glo.capacity,
                          "global_fraction": glo.fraction})
        if progress is not None:
            progress(i + 1, len(files))

    def pick(key: str) -> float:  # plan.py turns a fraction back into the same count (1/49 of 49 is 1)
        return _quantile([p[key] for p in per_image], quantile)

    return {"model": model_name, "resolution": [H, W], "quantile": quantile, "threshold": plan.threshold,
            "local_layer": plan.local_layer, "global_layer": plan.global_layer,
            "local_fraction": pick("local_fraction"), "global_fraction": pick("global_fraction"),
            "checkpoint": str(checkpoint) if checkpoint else None, "images": len(per_image), "per_image": per_image}


def write_calibration(result: dict[str, Any], path: str | Path) -> Path:
    """Write the calibration JSON atomically (a temp file in the same folder, then a rename)."""
    from edgemerge.contracts.files import atomic_write_bytes

    return atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """min / median / max of each site's per-image fraction, and the kept quantile."""
    rows = []
    for site in ("local", "global"):
        values = [p[f"{site}_fraction"] for p in result["per_image"]]
        rows.append({"site": site, "min": min(values), "median": _quantile(values, 0.5), "max": max(values),
                     "kept": result[f"{site}_fraction"]})
    return rows


__all__ = ["SiteRecord", "calibrate", "record_merges", "summary", "write_calibration"]
