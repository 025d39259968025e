"""report.json (every figure, limit, version and hash) and report.png (what the disagreement looks
like), written together and atomically (`edgemerge.contracts.files.write_files`): both or neither."""

from __future__ import annotations

import json
import math
from pathlib import Path

from edgemerge.contracts.files import atomic_write_bytes

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
    """k class colours: Kelly's high-contrast colours while they last (up to 19), then seeded random."""
    from edgemerge.contracts.images import GROUP_COLOURS

    rng = np.random.default_rng(12345)
    extra = rng.integers(40, 256, (max(k - len(GROUP_COLOURS), 0), 3))
    return np.concatenate([GROUP_COLOURS[:k], extra]).astype(np.uint8)


IGNORED_COLOUR = (0, 0, 0)  # label pixels outside 0..K-1 (255 = ignore)
MAX_LEGEND_CLASSES = 24


def class_names(manifest: dict) -> list[str] | None:
    """The checkpoint's class names where it has them (a Hugging Face directory's id2label), else None."""
    path = (manifest.get("checkpoint") or {}).get("path")
    cfg = Path(path) / "config.json" if path else None
    if cfg is None or not cfg.is_file():
        return None
    try:
        id2label = json.loads(cfg.read_text()).get("id2label") or {}
        names = [str(id2label[str(i)]) for i in range(len(id2label))]
    except (OSError, ValueError, KeyError):
        return None
    return names or None


def write_png(path: Path, images: np.ndarray, ref_pred: np.ndarray, got_pred: np.ndarray, num_classes: int,
              artifact_label: str, **kw) -> Path:
    return _atomic_write(path, png_bytes(images, ref_pred, got_pred, num_classes, artifact_label, **kw))


def png_bytes(images: np.ndarray, ref_pred: np.ndarray, got_pred: np.ndarray, num_classes: int,
              artifact_label: str, **kw) -> bytes:
    import io

    fig = report_figure(images, ref_pred, got_pred, num_classes, artifact_label, **kw)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def report_figure(images: np.ndarray, ref_pred: np.ndarray, got_pred: np.ndarray, num_classes: int,
                  artifact_label: str, *, labels: np.ndarray | None = None, rows: int = MAX_FIGURE_INPUTS,
                  names: list[str] | None = None, classes: list[str] | None = None):
    """One row per input, up to `rows`: the image, the ground truth (with `labels`), PyTorch's
    prediction, the artifact's, the disagreement map; below, a legend of the classes shown."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = min(rows, len(images))
    pal = _palette(num_classes)

    def colour(pred):
        out = pal[np.clip(pred, 0, len(pal) - 1)]
        out[(pred < 0) | (pred >= num_classes)] = IGNORED_COLOUR
        return out

    H, W = images.shape[2:]
    cols = 5 if labels is not None else 4
    panel_w = 2.6
    panel_h = panel_w * H / W + 0.35  # the titles
    shown = [ref_pred[:n], got_pred[:n]] + ([labels[:n]] if labels is not None else [])
    present = np.unique(np.concatenate([a.reshape(-1) for a in shown]))
    ignored = bool(((present < 0) | (present >= num_classes)).any())
    present = present[(present >= 0) & (present < num_classes)]
    truncated = len(present) > MAX_LEGEND_CLASSES
    if truncated:  # the most frequent, in class order
        counts = sum(np.bincount(a[(a >= 0) & (a < num_classes)].reshape(-1), minlength=num_classes) for a in shown)
        present = np.sort(present[np.argsort(-counts[present], kind="stable")[:MAX_LEGEND_CLASSES]])
    handles = [Patch(facecolor=pal[c] / 255, edgecolor="none",
                     label=classes[c] if classes and c < len(classes) else f"class {c}") for c in present]
    if ignored:
        handles.append(Patch(facecolor=np.array(IGNORED_COLOUR) / 255, label="ignored (label 255 / >= K)"))
    legend_cols = min(len(handles), 8) or 1
    legend_h = 0.3 + 0.22 * -(-len(handles) // legend_cols)
    fig = Figure(figsize=(panel_w * cols, panel_h * n + legend_h), dpi=80, layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        diff = ref_pred[i] != got_pred[i]
        name = names[i] if names and i < len(names) else f"input {i}"
        panels = [(images[i].transpose(1, 2, 0).clip(0, 1), name)]
        if labels is not None:
            panels.append((colour(labels[i]), "ground truth"))
        panels += [(colour(ref_pred[i]), "PyTorch (reference)"), (colour(got_pred[i]), artifact_label),
                   (diff.astype(np.float32), f"disagreement {diff.mean() * 100:.2f}%")]
        for ax, (img, title) in zip(axes[i], panels):
            kw = {"cmap": "Reds", "vmin": 0, "vmax": 1} if img.ndim == 2 else {}
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    if handles:
        title = "classes" + (f" (the {MAX_LEGEND_CLASSES} most frequent shown)" if truncated else "")
        fig.legend(handles=handles, loc="outside lower center", ncols=legend_cols, fontsize=8, title=title,
                   title_fontsize=8, frameon=False)
    return fig
