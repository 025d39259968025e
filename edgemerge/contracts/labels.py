"""Label maps (per-pixel class ids), checked the same way wherever they are read: `validate
--labels` (mIoU against them) and `train-metric --labels` (cross-entropy against them).

Stored losslessly (a JPEG smears the ids at every edge: refused, told by content and suffix), of
their image's size, single-channel, and holding only class ids 0..K-1 and 255 (ignore): an id
K..254 (another dataset's labels, a colour map read as ids) would silently count for nothing.
Needs numpy and Pillow only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgemerge.contracts.errors import EdgemergeError, reraise_out_of_memory
from edgemerge.contracts.images import image_size, require_regular_file

IGNORE_INDEX = 255


def label_format(path: Path) -> str | None:
    """Pillow's name of the file's format, from its content."""
    from PIL import Image

    require_regular_file(path, "label")
    try:
        with Image.open(path) as im:
            return im.format
    except Exception as e:
        reraise_out_of_memory(e)
        raise EdgemergeError(f"cannot read label {path}: {e}") from None


def check_label_files(label_files: Sequence[Path]) -> None:
    """Label maps must be stored losslessly (PNG, BMP, TIFF, ...): refuse JPEG (by content, not name)."""
    for lab in label_files:
        lab = Path(lab)
        # lossy: a JPEG smears the class ids at every edge into values that are no class at all
        if label_format(lab) in ("JPEG", "MPO") or lab.suffix.lower() in (".jpg", ".jpeg"):
            raise EdgemergeError(f"label {lab} is a JPEG: JPEG is lossy and turns class ids at every edge into "
                                 "other values; save label maps as PNG")


def check_label_sizes(image_files: Sequence[Path], label_files: Sequence[Path]) -> None:
    """A label map must have its image's size: resizing a 100x100 map onto 360x480 frames
    stretches it, and whatever is measured or trained against it means nothing."""
    for img, lab in zip(image_files, label_files):
        hw, lhw = image_size(img), image_size(lab, "label")
        if hw != lhw:
            raise EdgemergeError(f"label {lab} is {lhw[0]}x{lhw[1]} (HxW) but its image {Path(img).name} is "
                                 f"{hw[0]}x{hw[1]}: labels must have their image's size")


def check_label_values(labels: np.ndarray, files: Sequence[Path], num_classes: int | None) -> None:
    """Label maps [N, H, W] of single-channel class ids: each value a class id 0..K-1 or 255
    (ignore); an id K..254 is refused, naming the file and the ids."""
    if labels.ndim == 4:  # an RGB label image: CamVid-style index maps are single-channel
        raise EdgemergeError(f"label {files[0]} has colour channels; labels must be class-index "
                             f"images (values 0..K-1, {IGNORE_INDEX} = ignore)")
    if not num_classes:
        return
    for lab, f in zip(labels, files):
        bad = np.unique(lab[((lab < 0) | (lab >= num_classes)) & (lab != IGNORE_INDEX)])
        if bad.size:
            shown = ", ".join(map(str, bad[:5].tolist())) + (f" and {bad.size - 5} more" if bad.size > 5 else "")
            raise EdgemergeError(f"label {f} has class ids {shown}, outside 0..{num_classes - 1} (and "
                                 f"{IGNORE_INDEX} = ignore) of this {num_classes}-class model: are these the "
                                 "right labels for it?")
