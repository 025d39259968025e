"""What a plan costs in fidelity, in PyTorch, on the user's images: agreement with the unmerged
model always, the mIoU drop when labels are given, each with a bootstrap interval over images.
The unmerged model runs once; a candidate runs once per image.

Drop, the number the target bounds: with labels, mIoU points lost (unmerged - merged, x100);
without, the share of pixels (images, for a classifier) whose class changed, in percent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgemerge.contracts.compare import confusion, miou
from edgemerge.contracts.errors import EdgemergeError

BOOTSTRAP = 200  # resamples of the images for the interval (90%: 5th..95th percentile)


def load_images(images: str | Path, labels: str | Path | None, resolution: tuple[int, int], mean, std,
                progress: Callable[[str], None] = lambda s: None
                ) -> tuple[np.ndarray, np.ndarray | None, list[Path], list[Path] | None]:
    """The images [N, 3, H, W] normalised and (by file stem) their label maps [N, H, W], every file
    checked before any work; and the image and label files."""
    from edgemerge.contracts.images import check_images, list_images, load_image, normalize
    from edgemerge.contracts.labels import check_label_files, check_label_sizes

    files = list_images(images)
    if not files:
        raise EdgemergeError(f"no images in {images} (png, jpg, ...)")
    check_images(files, progress=progress)
    label_files = None
    if labels is not None:
        folder = Path(labels)
        if not folder.is_dir():
            raise EdgemergeError(f"label folder not found: {labels}")
        by_stem = {p.stem: p for p in folder.iterdir() if p.is_file()}
        missing = [f.name for f in files if f.stem not in by_stem]
        if missing:
            raise EdgemergeError(f"--labels {labels} has no label map for {missing[0]} ({len(missing)} of "
                                 f"{len(files)}; labels are matched by file stem)")
        label_files = [by_stem[f.stem] for f in files]
        check_label_files(label_files)
        check_label_sizes(files, label_files)
    H, W = resolution
    x = np.stack([load_image(f, H, W) for f in files])
    y = None if label_files is None else np.stack([load_image(f, H, W, labels=True) for f in label_files])
    return normalize(x, mean, std).astype(np.float32), y, files, label_files


@dataclass
class Fidelity:
    """The unmerged model's predictions on the images, computed once, and a judge of plans."""

    model: torch.nn.Module
    images: np.ndarray
    labels: np.ndarray | None
    num_classes: int
    batch: int = 4
    seed: int = 0

    label_files: list[Path] | None = None

    def __post_init__(self) -> None:
        from edgemerge.contracts.labels import check_label_values
        from edgemerge.merge.patch import remove_merging

        if self.labels is not None:  # ids K..254 refused as validate and train-metric refuse them
            check_label_values(self.labels, self.label_files or [], self.num_classes)
        remove_merging(self.model)
        self.reference = self._predict()
        self.ref_conf = None if self.labels is None else self._confusions(self.reference)

    def _predict(self) -> np.ndarray:
        """Per-pixel (or per-image) classes at the labels' size, batch by batch."""
        out = []
        with torch.no_grad():
            for i in range(0, len(self.images), self.batch):
                logits = self.model(torch.from_numpy(self.images[i: i + self.batch]))
                if logits.ndim == 4:
                    logits = torch.nn.functional.interpolate(logits.float(), size=self.images.shape[-2:],
                                                             mode="bilinear", align_corners=False)
                out.append(logits.argmax(1).numpy())
        return np.concatenate(out)

    def _confusions(self, pred: np.ndarray) -> np.ndarray:
        return np.stack([confusion(p, t, self.num_classes) for p, t in zip(pred, self.labels)])

    def evaluate(self, plan: Any) -> dict[str, Any]:
        """The plan's drop (with its 90% interval over images), agreement and mIoU."""
        from edgemerge.merge.patch import apply_merging, remove_merging

        apply_merging(self.model, plan)
        try:
            pred = self._predict()
        finally:
            remove_merging(self.model)
        same = (pred == self.reference).reshape(len(pred), -1).mean(1)  # per image
        rng = np.random.default_rng(self.seed)
        picks = rng.integers(0, len(pred), size=(BOOTSTRAP, len(pred)))
        out: dict[str, Any] = {"agreement": float(same.mean()), "images": len(pred)}
        if self.labels is None:
            drops = 100.0 * (1.0 - same[picks].mean(1))
            out.update(drop=100.0 * (1.0 - float(same.mean())), drop_kind="changed %")
        else:
            conf = self._confusions(pred)
            merged, unmerged = miou(conf.sum(0)), miou(self.ref_conf.sum(0))
            drops = np.array([100.0 * ((miou(self.ref_conf[i].sum(0)) or 0) - (miou(conf[i].sum(0)) or 0))
                              for i in picks])
            out.update(drop=100.0 * ((unmerged or 0.0) - (merged or 0.0)), drop_kind="mIoU points",
                       miou=merged, miou_unmerged=unmerged)
        lo, hi = np.percentile(drops, [5, 95])
        out.update(drop_lo=float(lo), drop_hi=float(hi))
        return out
