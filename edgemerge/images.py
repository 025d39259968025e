"""Inputs for checks and benchmarks: real images from a folder, or seeded synthetic ones.

Synthetic inputs look like scenes (flat regions, smooth gradients, hard edges, a little sensor
noise), not white noise: merging behaves differently on noise, where nothing is similar.
Needs only numpy (and Pillow for real images), so the device side can use it without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgemerge.errors import EdgemergeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def synthetic_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """n RGB images [n, 3, H, W] float32 in [0, 1]: Voronoi regions of flat colour + gradient + noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        k = int(rng.integers(5, 12))
        cy, cx = rng.uniform(0, height, k), rng.uniform(0, width, k)
        region = np.argmin((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2, axis=-1)  # [H, W]
        colours = rng.uniform(0, 1, (k, 3)).astype(np.float32)
        img = colours[region].transpose(2, 0, 1)  # [3, H, W]
        gy, gx = rng.uniform(-0.3, 0.3, 2)
        img = img + (gy * yy / height + gx * xx / width)[None]
        img = img + rng.normal(0, 0.01, img.shape).astype(np.float32)
        out[i] = np.clip(img, 0, 1)
    return out


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    m = np.asarray(mean, np.float32)[None, :, None, None]
    s = np.asarray(std, np.float32)[None, :, None, None]
    return ((images - m) / s).astype(np.float32)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgemergeError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgemergeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def load_image(path: str | Path, height: int, width: int, *, labels: bool = False) -> np.ndarray:
    """An image resized to HxW as float32 [3, H, W] in [0, 1], or a label map [H, W] (nearest)."""
    from PIL import Image

    try:
        im = Image.open(path)
        im.load()
    except Exception as e:
        raise EdgemergeError(f"cannot read image {path}: {e}") from None
    if labels:
        return np.asarray(im.resize((width, height), Image.NEAREST), dtype=np.int64)
    im = im.convert("RGB").resize((width, height), Image.BILINEAR)
    return np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0


# Distinct colours (Kelly's) for merged groups (show) and classes (validate's report).
GROUP_COLOURS = np.array([
    (255, 179, 0), (128, 62, 117), (255, 104, 0), (166, 189, 215), (193, 0, 32), (206, 162, 98),
    (0, 125, 52), (246, 118, 142), (0, 83, 138), (255, 122, 92), (83, 55, 122), (255, 142, 0),
    (179, 40, 81), (244, 200, 0), (127, 24, 13), (147, 170, 0), (89, 51, 21), (241, 58, 19),
    (35, 44, 22)], np.float32)
