"""Inputs for checks and benchmarks: real images from a folder, or seeded synthetic ones.

Synthetic inputs look like scenes (flat regions, smooth gradients, hard edges, a little sensor
noise), not white noise: merging behaves differently on noise, where nothing is similar.
Needs only numpy (and Pillow for real images), so the device side can use it without torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgemerge.contracts.errors import EdgemergeError, reraise_out_of_memory

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


def file_kind(path: str | Path) -> str | None:
    """None for a regular file (or a symlink to one); else what the path is ('a FIFO', 'a directory',
    'a character device', ...), from stat alone: opening a FIFO would block until a writer comes."""
    import stat

    mode = os.stat(path).st_mode
    for test, name in ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def require_regular_file(path: str | Path, what: str = "image", *, allow_dir: bool = False) -> Path:
    """`path` if it is a regular file (or, with `allow_dir`, a directory); else a one-line error
    saying what it is instead (a FIFO or a device would block or never end the read)."""
    path = Path(path)
    try:
        kind = file_kind(path)
    except FileNotFoundError:
        raise EdgemergeError(f"{what} not found: {path}") from None
    except OSError as e:
        raise EdgemergeError(f"cannot read {what} {path}: {e.strerror}") from None
    if kind is not None and not (allow_dir and kind == "a directory"):
        raise EdgemergeError(f"{what} {path} is {kind}, not a regular file")
    return path


def list_images(folder: str | Path) -> list[Path]:
    """The image files of a folder (by suffix), sorted; an entry with an image suffix that is not a
    regular file (a FIFO would block the read forever, a directory cannot be read) is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgemergeError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgemergeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    for p in files:
        require_regular_file(p)
    return files


# Smaller than this on a side, an image is refused: below one ViT patch (16 px) or one Segformer
# stage-4 cell (32 px) a picture holds no tokens of its own; resizing a 1x1 pixel up is one colour.
MIN_IMAGE_SIDE = 16

# EXIF orientations (2..8) that swap width and height once applied
_TRANSPOSING = {5, 6, 7, 8}


def _open(path: str | Path, what: str):
    from PIL import Image

    require_regular_file(path, what)
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:
        reraise_out_of_memory(e)
        raise EdgemergeError(f"cannot read {what} {path}: {e}") from None
    return im


def oriented(im):
    """The image as it is meant to be seen: its EXIF orientation applied (phones store portrait
    photos as landscape pixels plus an orientation tag)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(im)


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """(H, W) as the image is meant to be seen (EXIF orientation applied), from the header only."""
    from PIL import Image

    require_regular_file(path, what)
    try:
        with Image.open(path) as im:
            h, w = im.height, im.width
            orientation = im.getexif().get(0x0112, 1)
    except Exception as e:
        reraise_out_of_memory(e)
        raise EdgemergeError(f"cannot read {what} {path}: {e}") from None
    return (w, h) if orientation in _TRANSPOSING else (h, w)


def check_min_size(path: str | Path, hw: tuple[int, int], min_side: int = MIN_IMAGE_SIDE, what: str = "image") -> None:
    if min(hw) < min_side:
        raise EdgemergeError(f"{what} {path} is {hw[0]}x{hw[1]} (HxW): images must be at least "
                             f"{min_side}x{min_side} pixels")


def to_rgb_array(im, path: str | Path = "") -> np.ndarray:
    """A PIL image as float32 [H, W, 3] in [0, 1], every bit depth scaled by its own range: 16-bit
    grayscale ('I;16', or 'I' holding 16-bit values) by 65535 (PIL's convert('RGB') would clip it
    to a white frame), floats ('F') taken as [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im, np.float64)
        if mode == "F":
            scale = 1.0
        elif mode.startswith("I;16"):
            scale = 65535.0
        else:  # 32-bit integer: PNG's 16-bit grayscale on older Pillow; 8-bit values if they fit
            if a.min() < 0 or a.max() > 65535:
                raise EdgemergeError(f"image {path} has 32-bit pixel values (mode {mode}): use 8- or 16-bit images")
            scale = 65535.0 if a.max() > 255 else 255.0
        g = np.clip(a / scale, 0, 1).astype(np.float32)
        return np.repeat(g[..., None], 3, axis=-1)
    check_mode(im, path)
    return np.asarray(im.convert("RGB"), np.float32) / 255.0


_8BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def check_mode(im, path: str | Path = "") -> None:
    if not (im.mode in _8BIT_MODES or _high_depth(im)):
        raise EdgemergeError(f"image {path} has pixel mode {im.mode}, which edgemerge cannot read: use 8- or "
                             "16-bit grayscale or RGB(A) images")


def read_image(path: str | Path, *, min_side: int = MIN_IMAGE_SIDE, what: str = "image"):
    """The image decoded (every pixel: a truncated file fails here), EXIF orientation applied, at
    least `min_side` pixels on each side; a PIL image."""
    im = oriented(_open(path, what))
    check_min_size(path, (im.height, im.width), min_side, what)
    return im


def check_images(files: Sequence[str | Path], *, min_side: int = MIN_IMAGE_SIDE,
                 progress: Callable[[str], None] | None = None) -> None:
    """Decode every image once (and drop it), so that a bad one (unreadable, truncated, too small,
    an unknown pixel mode, not a regular file) is refused before the work starts, not after the
    others were processed."""
    if progress is not None:
        progress(f"checking {len(files)} image(s)")
    for p in files:
        check_mode(read_image(p, min_side=min_side), p)


def load_image(path: str | Path, height: int, width: int, *, labels: bool = False,
               min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """An image resized to HxW as float32 [3, H, W] in [0, 1], or a label map [H, W] (nearest).

    EXIF orientation is applied; 16-bit images are scaled by their own range; images smaller than
    `min_side` on a side are refused (labels are never resized from such a size either)."""
    from PIL import Image

    what = "label" if labels else "image"
    im = read_image(path, min_side=min_side, what=what)
    if labels:
        return np.asarray(im.resize((width, height), Image.NEAREST), dtype=np.int64)
    if _high_depth(im):  # scaled to [0, 1] first, then resized in float
        rgb = to_rgb_array(im, path)
        chans = [Image.fromarray(np.ascontiguousarray(rgb[..., c])).resize((width, height), Image.BILINEAR)
                 for c in range(3)]
        return np.clip(np.stack([np.asarray(c, np.float32) for c in chans]), 0, 1)
    check_mode(im, path)
    im = im.convert("RGB").resize((width, height), Image.BILINEAR)
    return np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0


def read_rgb(path: str | Path, *, min_side: int = MIN_IMAGE_SIDE, what: str = "image"):
    """The image as it is meant to be seen, for drawing on: a PIL 8-bit RGB image, EXIF orientation
    applied and 16-bit images scaled by their own range (PIL's convert('RGB') clips them white)."""
    from PIL import Image

    im = read_image(path, min_side=min_side, what=what)
    if _high_depth(im):
        return Image.fromarray(np.round(to_rgb_array(im, path) * 255).astype(np.uint8))
    check_mode(im, path)
    return im.convert("RGB")


def _high_depth(im) -> bool:
    return im.mode.startswith("I;16") or im.mode in ("I", "F")


# Distinct colours (Kelly's) for merged groups (show) and classes (validate's report).
GROUP_COLOURS = np.array([
    (255, 179, 0), (128, 62, 117), (255, 104, 0), (166, 189, 215), (193, 0, 32), (206, 162, 98),
    (0, 125, 52), (246, 118, 142), (0, 83, 138), (255, 122, 92), (83, 55, 122), (255, 142, 0),
    (179, 40, 81), (244, 200, 0), (127, 24, 13), (147, 170, 0), (89, 51, 21), (241, 58, 19),
    (35, 44, 22)], np.float32)
