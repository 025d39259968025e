"""The inputs a validation runs on: a folder of images (and labels), or seeded synthetic scenes.

Images are resized to the manifest's resolution, normalised with its mean/std and batched by its
batch size. Synthetic inputs are `synthetic_images(n, seed=manifest seed)`, the generator the
bundle's reference.npz was made with, so their first batches are the stored reference inputs.
Needs numpy (and Pillow for folders) only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.images import IMAGE_SUFFIXES, check_images, list_images, load_image, normalize, synthetic_images
from edgemerge.contracts.labels import check_label_files, check_label_sizes, check_label_values  # the one place

DEFAULT_SYNTHETIC = 4


@dataclass
class Inputs:
    images: np.ndarray  # [n, 3, H, W] float32 in [0, 1], un-normalised (for the report)
    batches: list[np.ndarray]  # normalised, each [batch, 3, H, W]
    labels: np.ndarray | None = None  # [n, H, W] int64, at the input resolution
    source: dict = field(default_factory=dict)  # what the report says about them


def _batch(normed: np.ndarray, batch: int) -> list[np.ndarray]:
    return [normed[i:i + batch] for i in range(0, len(normed), batch)]


def _round_to_batch(n: int, batch: int, what: str) -> int:
    used = (n // batch) * batch
    if used == 0:
        raise EdgemergeError(f"{what}: {n} image(s), but the bundle's batch size is {batch}")
    return used


def synthetic_inputs(manifest: dict, num: int | None = None) -> Inputs:
    H, W = manifest["resolution"]
    batch = int(manifest.get("batch", 1))
    n = -(-(num or DEFAULT_SYNTHETIC) // batch) * batch  # whole batches
    seed = int(manifest.get("seed", 0))
    images = synthetic_images(n, H, W, seed=seed)
    source = {"kind": "synthetic", "generator": f"synthetic_images(n={n}, {H}x{W}, seed={seed})", "count": n}
    return Inputs(images, _batch(normalize(images, manifest["mean"], manifest["std"]), batch), None, source)


def match_labels(image_files: list[Path], labels_dir: str | Path) -> list[Path]:
    """The label file of every image, by file stem; a folder that misses any is refused."""
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise EdgemergeError(f"label folder not found: {labels_dir}")
    by_stem = {p.stem: p for p in sorted(labels_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [p.stem for p in image_files if p.stem not in by_stem]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise EdgemergeError(f"label folder {labels_dir} does not match the images: no label for {shown} "
                             f"({len(missing)} of {len(image_files)} images; labels are matched by file stem)")
    return [by_stem[p.stem] for p in image_files]


def ignored_labels(labels: np.ndarray, files: list[str], num_classes: int) -> str | None:
    """A warning when some label maps have no pixel of a class 0..K-1 (all ignored), else None."""
    counted = ((labels >= 0) & (labels < num_classes)).reshape(len(labels), -1).any(1)
    if counted.all():
        return None
    empty = [f for f, c in zip(files, counted) if not c]
    shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
    effect = ("so mIoU cannot be measured (n/a)" if not counted.any()
              else "they count for nothing in mIoU")
    return (f"{len(empty)} of {len(labels)} label maps have no pixel of a class 0..{num_classes - 1} "
            f"(every pixel ignored: {shown}); {effect}: are these the right labels for this model?")


def folder_inputs(manifest: dict, images_dir: str | Path, labels_dir: str | Path | None = None,
                  num: int | None = None, progress: Callable[[str], None] = lambda s: None) -> Inputs:
    """The images (and labels) of a folder; every check on names and sizes runs before any is read."""
    H, W = manifest["resolution"]
    batch = int(manifest.get("batch", 1))
    files = list_images(images_dir)
    if num is not None:
        files = files[:num]
    files = files[:_round_to_batch(len(files), batch, str(images_dir))]
    label_files = None
    if labels_dir is not None:
        label_files = match_labels(files, labels_dir)
        check_label_files(label_files)
        check_label_sizes(files, label_files)
    check_images(files)  # every image decodes and is large enough, before any is used
    labels = None
    if label_files is not None:  # before the images: a bad label map is refused first
        labels = np.stack([load_image(p, H, W, labels=True) for p in label_files])
        check_label_values(labels, label_files, manifest.get("num_classes"))
    progress(f"reading {len(files)} image(s) from {images_dir}")
    images = np.stack([load_image(p, H, W) for p in files])
    source: dict = {"kind": "folder", "images": str(Path(images_dir).resolve()),
                    "files": [p.name for p in files], "count": len(files)}
    if labels_dir is not None:
        source["labels"] = str(Path(labels_dir).resolve())
    return Inputs(images, _batch(normalize(images, manifest["mean"], manifest["std"]), batch), labels, source)


def stored_inputs(reference: dict[str, np.ndarray], manifest: dict, num: int | None = None) -> Inputs:
    """The inputs saved in reference.npz (`input_i`), un-normalised for the report."""
    keys = sorted((k for k in reference if k.startswith("input_")), key=lambda k: int(k.split("_")[1]))
    if num is not None:
        keys = keys[:max(1, -(-num // int(manifest.get("batch", 1))))]
    batches = [reference[k].astype(np.float32) for k in keys]
    normed = np.concatenate(batches)
    mean = np.asarray(manifest["mean"], np.float32)[None, :, None, None]
    std = np.asarray(manifest["std"], np.float32)[None, :, None, None]
    images = np.clip(normed * std + mean, 0, 1)
    source = {"kind": "reference.npz", "generator": manifest.get("reference", {}).get("images"),
              "count": len(normed), "keys": keys}
    return Inputs(images, batches, None, source)
