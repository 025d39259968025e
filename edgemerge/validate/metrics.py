"""Figures that say whether an artifact computes what PyTorch computes, and the limits they must meet.

All numpy. Errors are measured against the reference (PyTorch, or its stored outputs); argmax
figures treat an output [B, K, H, W] as per-pixel class scores.
"""

from __future__ import annotations

import math

import numpy as np

from edgemerge.errors import EdgemergeError

# Limits per exported precision: (metric, comparison, value).
THRESHOLDS: dict[str, dict[str, tuple[str, float]]] = {
    "fp32": {"argmax_agreement": (">=", 0.999), "max_abs_rel_range": ("<=", 1e-3)},
    "fp16": {"argmax_agreement": (">=", 0.99), "cosine": (">=", 0.999)},
}
REL_FLOOR = 1e-3  # relative errors divide by max(|ref|, REL_FLOOR * range of ref)


def check_limits(*, atol: float | None = None, rtol: float | None = None,
                 min_agreement: float | None = None) -> None:
    """Refuse limits no comparison can meet or that mean nothing, before any work is done."""
    for name, v in (("--atol", atol), ("--rtol", rtol)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise EdgemergeError(f"{name} must be a finite number >= 0, got {v:g}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise EdgemergeError(f"--min-agreement is a fraction of pixels within [0, 1] (0.99 = 99%), "
                             f"got {min_agreement:g}")


def thresholds_for(precision: str, *, atol: float | None = None, rtol: float | None = None,
                   min_agreement: float | None = None) -> dict[str, tuple[str, float]]:
    """The precision's limits with the user's overrides: --atol bounds `max_abs` (logit units),
    --rtol bounds `max_abs_rel_range` (max abs error / range of the reference logits),
    --min-agreement bounds `argmax_agreement`."""
    limits = dict(THRESHOLDS.get(precision, THRESHOLDS["fp32"]))
    if atol is not None:
        limits["max_abs"] = ("<=", float(atol))
    if rtol is not None:
        limits["max_abs_rel_range"] = ("<=", float(rtol))
    if min_agreement is not None:
        limits["argmax_agreement"] = (">=", float(min_agreement))
    return limits


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


def output_metrics(got: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    """Error figures of one output over all inputs; `got`/`ref` are stacked over the batch axis."""
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
    out: dict[str, float | None] = {
        "max_abs": float(err.max()), "mean_abs": float(err.mean()),
        "max_rel": float(rel.max()), "mean_rel": float(rel.mean()),
        "range": span, "max_abs_rel_range": float(err.max()) / span,
        "cosine": cos, "finite": finite,
        "argmax_agreement": None, "miou_vs_reference": None,
    }
    if got.ndim == 4:  # [B, K, H, W] class scores
        pg, pr = got.argmax(1), ref.argmax(1)
        out["argmax_agreement"] = float((pg == pr).mean())
        out["miou_vs_reference"] = miou(confusion(pg, pr, got.shape[1]))
    if not finite:
        out["max_abs"] = out["max_abs_rel_range"] = out["max_rel"] = float("inf")
    return out


def check(metrics: dict, limits: dict[str, tuple[str, float]]) -> list[dict]:
    """One entry per limit: metric, value, op, threshold, passed (a missing figure fails)."""
    rows = []
    for name, (op, limit) in limits.items():
        value = metrics.get(name)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            passed = False
        else:
            passed = bool(value >= limit) if op == ">=" else bool(value <= limit)
        rows.append({"metric": name, "value": value, "op": op, "threshold": limit, "passed": passed})
    return rows


def label_metrics(ref_pred: np.ndarray, got_pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """mIoU against ground truth for the reference and the artifact, and the difference."""
    ref_miou = miou(confusion(ref_pred, labels, num_classes))
    got_miou = miou(confusion(got_pred, labels, num_classes))
    ignored = float(((labels < 0) | (labels >= num_classes)).mean())
    return {"miou_reference": ref_miou, "miou_artifact": got_miou,
            "miou_difference": None if ref_miou is None or got_miou is None else got_miou - ref_miou,
            "ignored_fraction": ignored, "num_classes": num_classes}


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of [n, H, W] label maps to the logits' resolution."""
    n, H, W = labels.shape
    if (H, W) == (height, width):
        return labels
    ys = np.minimum(((np.arange(height) + 0.5) * H / height).astype(np.int64), H - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * W / width).astype(np.int64), W - 1)
    return labels[:, ys][:, :, xs]


def slot_agreement(ref_slots: list[dict], got_slots: list[np.ndarray] | None) -> dict:
    """How many merge decisions (slot tensors) the artifact shares with the reference.

    `ref_slots`: per merge site in call order, {"kind", "slot" [n, N], "margin" [n] or None};
    `got_slots`: the artifact's slot tensors in graph order, stacked over inputs.
    """
    if got_slots is None:
        return {"available": False, "reason": "the artifact does not expose its slot tensors"}
    if len(ref_slots) != len(got_slots):
        return {"available": False, "reason": f"PyTorch made {len(ref_slots)} merge decisions per input, "
                                              f"the artifact exposes {len(got_slots)} slot tensors"}
    if not ref_slots:
        return {"available": True, "sites": 0, "site_agreement": None, "token_agreement": None, "differing": []}
    same_sites, same_tokens, total_tokens, differing = 0, 0, 0, []
    for i, (ref, got) in enumerate(zip(ref_slots, got_slots)):
        r = np.asarray(ref["slot"])
        g = np.asarray(got).reshape(r.shape) if np.asarray(got).size == r.size else None
        if g is None:
            differing.append({"site": i, "kind": ref["kind"], "reason": "shape differs"})
            total_tokens += r.size
            continue
        eq = r == g
        same_tokens += int(eq.sum())
        total_tokens += r.size
        if eq.all():
            same_sites += 1
        else:
            entry = {"site": i, "kind": ref["kind"], "tokens_differing": int((~eq).sum()), "tokens": int(r.size)}
            if ref.get("margin") is not None:
                entry["decision_margin"] = float(np.min(ref["margin"]))
            differing.append(entry)
    return {"available": True, "sites": len(ref_slots), "site_agreement": same_sites / len(ref_slots),
            "token_agreement": same_tokens / max(total_tokens, 1), "differing": differing}
