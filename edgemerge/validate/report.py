"""report.json (every figure, limit, version and hash) and report.png (what the disagreement looks
like), written together and atomically (`edgemerge.files.write_files`): both or neither."""

from __future__ import annotations

import json
import math
from pathlib import Path

from edgemerge.files import atomic_write_bytes

import numpy as np

MAX_FIGURE_INPUTS = 3


def _atomic_write(path: Path, data: bytes) -> Path:
    return atomic_write_bytes(path, data, mode=0o644)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no inf/nan; "inf" says it plainly
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_bytes(report: dict) -> bytes:
    return (json.dumps(_jsonable(report), indent=2) + "\n").encode()


def write_json(path: Path, report: dict) -> Path:
    return _atomic_write(path, json_bytes(report))


def _palette(k: int) -> np.ndarray:
    rng = np.random.default_rng(12345)
    return rng.integers(40, 256, (max(k, 1), 3)).astype(np.uint8)


def write_png(path: Path, images: np.ndarray, ref_pred: np.ndarray, got_pred: np.ndarray, num_classes: int,
              artifact_label: str) -> Path:
    return _atomic_write(path, png_bytes(images, ref_pred, got_pred, num_classes, artifact_label))


def png_bytes(images: np.ndarray, ref_pred: np.ndarray, got_pred: np.ndarray, num_classes: int,
              artifact_label: str) -> bytes:
    """For up to 3 inputs: the image, PyTorch's prediction, the artifact's, the disagreement map."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    n = min(MAX_FIGURE_INPUTS, len(images))
    pal = _palette(num_classes)
    fig = Figure(figsize=(12, 3.3 * n), dpi=80, layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        diff = ref_pred[i] != got_pred[i]
        panels = [(images[i].transpose(1, 2, 0).clip(0, 1), "input"),
                  (pal[np.clip(ref_pred[i], 0, len(pal) - 1)], "PyTorch (reference)"),
                  (pal[np.clip(got_pred[i], 0, len(pal) - 1)], artifact_label),
                  (diff.astype(np.float32), f"disagreement {diff.mean() * 100:.2f}%")]
        for ax, (img, title) in zip(axes[i], panels):
            kw = {"cmap": "Reds", "vmin": 0, "vmax": 1} if img.ndim == 2 else {}
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
