"""Figures that say whether an artifact computes what PyTorch computes, and the limits they must meet.

All numpy. Errors are measured against the reference (PyTorch, or its stored outputs); argmax
figures treat an output [B, K, H, W] as per-pixel class scores.
"""

from __future__ import annotations

import numpy as np

from edgemerge.contracts.compare import LIMITS, bad_limit, confusion, limits_for, metrics, miou
from edgemerge.contracts.errors import EdgemergeError

# The comparison (figures, limits, near-ties) lives in edgemerge.contracts.compare; validate judges an
# artifact with its "artifact" profile.
THRESHOLDS: dict[str, dict[str, tuple[str, float]]] = {p: LIMITS[("artifact", p)] for p in ("fp32", "fp16")}


def check_limits(*, atol: float | None = None, rtol: float | None = None,
                 min_agreement: float | None = None) -> None:
    """Refuse limits no comparison can meet or that mean nothing, before any work is done."""
    why = bad_limit(atol=atol, rtol=rtol, min_agreement=min_agreement)
    if why:
        raise EdgemergeError(why)


def thresholds_for(precision: str, *, atol: float | None = None, rtol: float | None = None,
                   min_agreement: float | None = None, replayed: bool = True) -> dict[str, tuple[str, float]]:
    """The "artifact" limits at `precision` (or "unreplayed" when the artifact's merge decisions
    could not be replayed), with the user's overrides (edgemerge.contracts.compare.limits_for)."""
    return limits_for("artifact" if replayed else "unreplayed", precision, atol=atol, rtol=rtol,
                      min_agreement=min_agreement)


def output_metrics(got: np.ndarray, ref: np.ndarray, precision: str = "fp32") -> dict:
    return metrics(got, ref, precision)


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
