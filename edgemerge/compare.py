"""The one comparison of an artifact's outputs with PyTorch's: figures, limits, the verdict.

The export's self-check (ONNX Runtime against PyTorch, in the exporting process) and `validate`
(an ONNX file or an engine, on any runtime, against PyTorch or its stored outputs) both call
`compare`; their limits sit side by side in `LIMITS`. Numpy only.

Argmax agreement is judged fairly: a pixel whose reference top-2 margin is below the near-tie
bound (twice the measured max abs error, capped at the precision's `NEAR_TIE_CAP` times the
logits' range) can flip with rounding alone, on any correct runtime. Such pixels are counted and
reported (how many, how many flipped, their largest margin) and left out of `argmax_agreement`;
every other pixel must agree. The cap keeps a broken artifact (a changed weight, a merge lowered
as an overwrite) from excusing itself with its own large error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# (profile, precision) -> {metric: (op, limit)}. "self-check": ONNX Runtime on this CPU against
# PyTorch on the same inputs, merge decisions replayed: strict. "artifact": any runtime (TensorRT
# kernels, other CPUs), merge decisions its own: fp32 within 1e-3 of the range, fp16 99% of the
# decidable pixels and a cosine of 0.999.
LIMITS: dict[tuple[str, str], dict[str, tuple[str, float]]] = {
    ("self-check", "fp32"): {"max_abs_rel_range": ("<=", 1e-4), "argmax_agreement": (">=", 1.0)},
    ("self-check", "fp16"): {"argmax_agreement": (">=", 0.995)},
    ("artifact", "fp32"): {"argmax_agreement": (">=", 0.999), "max_abs_rel_range": ("<=", 1e-3)},
    ("artifact", "fp16"): {"argmax_agreement": (">=", 0.99), "cosine": (">=", 0.999)},
}
PROFILES = ("self-check", "artifact")
NEAR_TIE_FACTOR = 2.0  # a pixel is a near-tie when its margin <= this x the max abs error ...
NEAR_TIE_CAP = {"fp32": 1e-4, "fp16": 1e-2}  # ... and never above this x the range
REL_FLOOR = 1e-3  # relative errors divide by max(|ref|, REL_FLOOR * range of ref)


def limits_for(profile: str, precision: str, *, atol: float | None = None, rtol: float | None = None,
               min_agreement: float | None = None) -> dict[str, tuple[str, float]]:
    """The limits of `profile` at `precision`, with a user's overrides: --atol bounds `max_abs`
    (logit units), --rtol bounds `max_abs_rel_range` (max abs error / the reference logits' range,
    not polygraphy's per-element rtol), --min-agreement bounds `argmax_agreement`."""
    limits = dict(LIMITS[(profile, precision if precision in ("fp32", "fp16") else "fp32")])
    if atol is not None:
        limits["max_abs"] = ("<=", float(atol))
    if rtol is not None:
        limits["max_abs_rel_range"] = ("<=", float(rtol))
    if min_agreement is not None:
        limits["argmax_agreement"] = (">=", float(min_agreement))
    return limits


def bad_limit(*, atol: float | None = None, rtol: float | None = None,
              min_agreement: float | None = None) -> str | None:
    """Why user limits can be met by no comparison or mean nothing; None when they are fine."""
    for name, v in (("--atol", atol), ("--rtol", rtol)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            return f"{name} must be a finite number >= 0, got {v:g}"
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        return f"--min-agreement is a fraction of pixels within [0, 1] (0.99 = 99%), got {min_agreement:g}"
    return None


def _top2_margin(ref: np.ndarray) -> np.ndarray:
    """Per pixel (or image): best minus second-best class score along axis 1."""
    part = np.partition(ref, -2, axis=1)
    return part[:, -1] - part[:, -2]


def metrics(got: np.ndarray, ref: np.ndarray, precision: str = "fp32") -> dict:
    """Error figures of one output over all inputs (`got`/`ref` stacked over the batch axis);
    argmax figures for class scores on axis 1 ([B, K] or [B, K, H, W]), near-ties told apart."""
    got = got.astype(np.float64)
    ref = ref.astype(np.float64)
    span = float(ref.max() - ref.min()) or 1.0
    err = np.abs(got - ref)
    finite = bool(np.isfinite(got).all())
    rel = err / np.maximum(np.abs(ref), REL_FLOOR * span)
    g = got.reshape(len(got), -1)
    r = ref.reshape(len(ref), -1)
    cos = float("nan")
    if finite:
        cos = float(((g * r).sum(1) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1), 1e-30)).min())
    max_abs = float(err.max()) if finite else float("inf")
    out: dict = {
        "max_abs": max_abs, "mean_abs": float(err.mean()),
        "max_rel": float(rel.max()) if finite else float("inf"), "mean_rel": float(rel.mean()),
        "range": span, "max_abs_rel_range": max_abs / span,
        "cosine": cos, "finite": finite,
        "argmax_agreement": None, "argmax_agreement_all": None, "near_ties": None, "miou_vs_reference": None,
    }
    if got.ndim >= 2 and got.shape[1] > 1:  # axis 1 holds class scores: [B, K] or [B, K, H, W]
        pg, pr = got.argmax(1), ref.argmax(1)
        same = pg == pr
        bound = min(NEAR_TIE_FACTOR * max_abs, NEAR_TIE_CAP.get(precision, NEAR_TIE_CAP["fp32"]) * span)
        margin = _top2_margin(ref)
        tie = margin <= bound
        decidable = int((~tie).sum())
        flipped = tie & ~same
        out["argmax_agreement"] = float(same[~tie].mean()) if decidable else 1.0
        out["argmax_agreement_all"] = float(same.mean())
        out["near_ties"] = {"bound": bound, "pixels": int(tie.sum()), "flipped": int(flipped.sum()),
                            "largest_flipped_margin": float(margin[flipped].max()) if flipped.any() else None,
                            "decidable": decidable, "decidable_disagree": int((~tie & ~same).sum())}
        if got.ndim == 4:
            out["miou_vs_reference"] = miou(confusion(pg, pr, got.shape[1]))
    return out


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts (rows: target, cols: pred); target values outside 0..K-1 (255) are ignored."""
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def miou(conf: np.ndarray) -> float | None:
    """Mean IoU over classes with a non-empty union (mmseg's nanmean); None when nothing counted."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    valid = union > 0
    if not valid.any():
        return None
    return float((inter[valid] / union[valid]).mean())


def first_merging_slot(kind: str, count: int, n: int, src: tuple | list | None = None) -> int:
    """The first slot that tokens merge into, at a site of `n` tokens (docs/ops.md's layout): the
    kept tokens are numbered first, in order; then bipartite's destinations (after the
    len(src) - r kept sources) or window's merged windows (after the n - 4k kept tokens)."""
    return n - 4 * count if kind == "window" else len(src) - count


def same_fates(got: np.ndarray, want: np.ndarray, first_merging: int) -> np.ndarray:
    """Bool [.., N]: the token met the same fate in both decisions: merged into the same slot, or
    kept. Slot numbers alone are not comparable: kept tokens are numbered in order, so one
    near-tie that swaps which source merges renumbers every later kept token; the merging slots
    keep their numbers. A wrong matching still differs nearly everywhere."""
    keep = lambda s: np.where(np.asarray(s, np.int64) >= first_merging, np.asarray(s, np.int64), -1)  # noqa: E731
    return keep(got) == keep(want)


def check(figures: dict, limits: dict[str, tuple[str, float]]) -> list[dict]:
    """One row per limit: metric, value, op, threshold, passed (a missing figure fails)."""
    rows = []
    for name, (op, limit) in limits.items():
        value = figures.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            passed = False
        else:
            passed = bool(value >= limit) if op == ">=" else bool(value <= limit)
        rows.append({"metric": name, "value": value, "op": op, "threshold": limit, "passed": passed})
    return rows


def describe(row: dict, figures: dict) -> str:
    """'argmax_agreement = 0.999988 (6 of 524282 decidable pixels differ; limit >= 1)'."""
    value = row["value"]
    text = f"{row['metric']} = {'n/a' if value is None else f'{value:.6g}'}"
    ties = figures.get("near_ties")
    if row["metric"] == "argmax_agreement" and ties:
        text += (f" ({ties['decidable_disagree']} of {ties['decidable']} decidable pixels differ; "
                 f"{ties['flipped']} of {ties['pixels']} near-ties flipped, bound {ties['bound']:.3g})")
    return f"{text} (limit {row['op']} {row['threshold']:g})"


@dataclass
class Comparison:
    figures: dict
    checks: list[dict]

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def failures(self) -> str:
        """The failed checks, each with its digits and the counts behind a fraction."""
        return ", ".join(describe(c, self.figures) for c in self.checks if not c["passed"])


def compare(got: np.ndarray, ref: np.ndarray, profile: str, precision: str, **overrides) -> Comparison:
    """`got` against `ref` under `profile`'s limits at `precision` (overrides: atol, rtol, min_agreement)."""
    figures = metrics(got, ref, precision)
    return Comparison(figures, check(figures, limits_for(profile, precision, **overrides)))
