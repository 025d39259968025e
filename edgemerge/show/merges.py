"""`edgemerge show`: which tokens merged, drawn over the image (as DTEM's merged-token figures).

The merged PyTorch model runs once on the image while `record_merges` listens to the merge
sites' events (`edgemerge.merge.core.observe`): every site reports its token grid and `slot` (the
merged token holding each input token). A site's groups are the grid cells that share a slot; for ViT models (ToMe, DTEM, ALGM)
the slots are composed back to the original patch grid through the tokens' `source` chain, so a
site shows everything merged up to and including that block.

Drawing: one PNG per site: the input image at its own width x height, every group of two or more
tokens in one colour (touching groups never share one) with an outline, tokens that merged with
nothing left clear inside a thin grey border; below the image (never over it) a caption strip with
the site and a legend. `--no-caption` gives exactly the image's size.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.images import GROUP_COLOURS
from edgemerge.contracts.files import check_output_file, write_files


@dataclass
class MergeSite:
    """Merge decisions of one site for the first image of the batch."""

    module: str  # e.g. 'encoder.stages.0.blocks.0.attn'
    kind: str  # 'kv' | 'queries' | 'pool' (n2d) | 'ffn' (MixFFN's fc1) | 'tokens' (ViT, cumulative)
    grid: tuple[int, int]  # token grid (h, w) the groups live on
    slot: np.ndarray  # [h*w] int: index of the merged token holding each grid token
    tokens_in: int
    tokens_out: int

    @property
    def stage(self) -> int | None:
        m = re.search(r"stages\.(\d+)\.", self.module)
        return int(m.group(1)) + 1 if m else None

    @property
    def block(self) -> int | None:
        m = re.search(r"blocks\.(\d+)", self.module)
        return int(m.group(1)) if m else None

    @property
    def name(self) -> str:
        where = (f"stage {self.stage} block {self.block}" if self.stage is not None else f"block {self.block}")
        return f"{where} {self.kind}: {self.tokens_in} -> {self.tokens_out} tokens ({self.grid[0]}x{self.grid[1]} grid)"

    def groups(self) -> np.ndarray:
        """[h, w] group id per grid token; -1 for tokens that merged with nothing."""
        _, inverse, counts = np.unique(self.slot, return_inverse=True, return_counts=True)
        g = np.where(counts[inverse] > 1, inverse, -1)
        return g.reshape(self.grid)


@contextlib.contextmanager
def record_merges(model) -> Iterator[list[MergeSite]]:
    """While open, every merge site the model passes in `forward` is appended to the yielded list.

    Subscribes to the merge hooks' SiteEvents (`core.observe`), so it works on any model a family
    adapter patched, and records nothing for an unmerged one."""
    from edgemerge.merge import core

    sites: list[MergeSite] = []

    def on_event(e) -> None:
        if isinstance(e, core.SiteEvent) and (site := _site_of(e)) is not None:
            sites.append(site)

    with core.observe(on_event):
        yield sites


def _site_of(e) -> MergeSite | None:
    """The groups a site formed, on the grid they live on; None where nothing merged."""
    h, w = e.grid
    if e.kind == "pool":  # n2d: 2x2 average pooling is a fixed grouping
        return _pool_site(e.module, e.grid)
    if e.kind == "tokens":  # ViT: composed back to the patch grid through the tokens' source
        if e.slot is None or e.source is None:
            return None
        source = e.source[0].detach().cpu().numpy().astype(np.int64)
        return MergeSite(e.module, "tokens", (h, w), source[source.shape[0] - h * w:], e.tokens_in, e.tokens_out)
    if e.slot is None:
        return None
    slot = e.slot[0].detach().cpu().numpy().astype(np.int64)
    if slot.shape[0] != h * w:  # Segformer's sites have no prefix tokens
        return None
    return MergeSite(e.module, e.kind, (h, w), slot, e.tokens_in, int(slot.max()) + 1)


def _pool_site(module: str, hw) -> MergeSite:
    """n2d pools 2x2 without matching, so its groups are fixed by the grid alone."""
    H, W = hw
    i, j = np.mgrid[0:H, 0:W]
    slot = ((i // 2) * (W // 2) + j // 2).reshape(-1)
    return MergeSite(module, "pool", (H, W), slot, H * W, (H // 2) * (W // 2))


def select_sites(sites: list[MergeSite]) -> list[MergeSite]:
    """Segformer: the first block of each stage with merging (each kind); ViT: every merging block."""
    chosen, seen = [], set()
    for s in sites:
        key = (s.stage, s.kind) if s.stage is not None else (s.module, s.kind)
        if key not in seen:
            seen.add(key)
            chosen.append(s)
    return chosen


# Kelly's colours of maximum contrast (less white, black and the greys), most distinct first.
UNMERGED_EDGE = (200, 200, 200)  # the thin border of a token that merged with nothing
CAPTION_BG, CAPTION_FG = (255, 255, 255), (0, 0, 0)


def group_colours(groups: np.ndarray) -> dict[int, int]:
    """{group id: palette index}: one colour per group, the same in all of its cells (a group may be
    split: bipartite matching pairs tokens anywhere on the grid). Touching groups never share a
    colour, so a connected area of one colour is one group; colours are spread evenly, so up to
    len(GROUP_COLOURS) groups each get their own. Largest groups are coloured first."""
    ids, counts = np.unique(groups[groups >= 0], return_counts=True)
    touching: dict[int, set[int]] = {int(i): set() for i in ids}
    for a, b in ((groups[:, 1:], groups[:, :-1]), (groups[1:, :], groups[:-1, :])):
        pairs = (a != b) & (a >= 0) & (b >= 0)
        for x, y in zip(a[pairs].tolist(), b[pairs].tolist()):
            touching[x].add(y)
            touching[y].add(x)
    used = np.zeros(len(GROUP_COLOURS), np.int64)
    colour: dict[int, int] = {}
    for i in ids[np.argsort(-counts, kind="stable")].tolist():
        taken = {colour[j] for j in touching[i] if j in colour}
        free = [c for c in range(len(GROUP_COLOURS)) if c not in taken] or list(range(len(GROUP_COLOURS)))
        c = min(free, key=lambda c: (used[c], c))
        colour[i] = c
        used[c] += 1
    return colour


def draw_site(image, site: MergeSite, alpha: float = 0.55, label: bool = True):
    """The image (PIL, any size) with the site's merged groups coloured and outlined, unmerged tokens
    left clear inside a thin grey border; `label`: a caption strip below it (the site and a legend),
    never over the image. Without `label` the picture has exactly the image's size."""
    from PIL import Image

    W0, H0 = image.size
    groups = site.groups()
    h, w = site.grid
    rows = np.minimum((np.arange(H0) * h) // H0, h - 1)
    cols = np.minimum((np.arange(W0) * w) // W0, w - 1)
    g = groups[rows[:, None], cols[None, :]]  # [H0, W0]
    cell = rows[:, None] * w + cols[None, :]  # token index per pixel
    rgb = np.asarray(image.convert("RGB"), np.float32)
    merged = g >= 0
    edge = np.zeros_like(merged)  # a pixel whose right/lower (or left/upper) neighbour is another token
    edge[:, 1:] |= cell[:, 1:] != cell[:, :-1]
    edge[1:, :] |= cell[1:, :] != cell[:-1, :]
    rgb[edge & ~merged] = UNMERGED_EDGE  # the token grid, drawn only where tokens stayed alone
    colour = group_colours(groups)
    if colour:
        lut = np.zeros((int(groups.max()) + 1, 3), np.float32)
        for gid, c in colour.items():
            lut[gid] = GROUP_COLOURS[c]
        rgb[merged] = (1 - alpha) * rgb[merged] + alpha * lut[g[merged]]
        group_edge = np.zeros_like(merged)  # outline: where the group changes
        diff_x = g[:, 1:] != g[:, :-1]
        diff_y = g[1:, :] != g[:-1, :]
        group_edge[:, 1:] |= diff_x
        group_edge[:, :-1] |= diff_x
        group_edge[1:, :] |= diff_y
        group_edge[:-1, :] |= diff_y
        rgb[group_edge & merged] = 20.0  # drawn inside the groups, so unmerged tokens stay clear
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return with_caption(out, site, colour) if label else out


def legend_entries(site: MergeSite, colour: dict[int, int] | None = None) -> list[tuple[str, str]]:
    """[(swatch kind, text)]: what the colours mean, with the counts of this site."""
    groups = site.groups()
    n_groups = len(np.unique(groups[groups >= 0]))
    alone = int((groups < 0).sum())
    return [("merged", f"merged: {n_groups} groups of {int((groups >= 0).sum())} tokens, one colour "
                       "per group (a group may be split)"),
            ("unmerged", f"clear, grey border: {alone} tokens merged with nothing")]


def _wrap(draw, text: str, width: int, font) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def with_caption(picture, site: MergeSite, colour: dict[int, int] | None = None):
    """`picture` on top, unchanged; below it a white strip with the site's name and the legend,
    wrapped to the picture's width (at least MIN_CAPTION_WIDTH, so tiny frames stay legible)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    W0, H0 = picture.size
    width = max(W0, MIN_CAPTION_WIDTH)
    pad, sw, line_h = 4, 10, 13
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    blocks = [(None, _wrap(probe, site.name, width - 2 * pad, font))]
    blocks += [(kind, _wrap(probe, text, width - 2 * pad - sw - 4, font)) for kind, text in legend_entries(site, colour)]
    height = H0 + pad + sum(len(lines) for _, lines in blocks) * line_h + pad
    canvas = Image.new("RGB", (width, height), CAPTION_BG)
    canvas.paste(picture, (0, 0))
    d = ImageDraw.Draw(canvas)
    y = H0 + pad
    for kind, lines in blocks:
        x = pad
        if kind is not None:  # the swatch, as the picture draws it
            box = (pad, y + 1, pad + sw, y + 1 + sw)
            if kind == "merged":
                d.rectangle(box, fill=tuple(int(v) for v in GROUP_COLOURS[0]), outline=(20, 20, 20))
            else:
                d.rectangle(box, fill=CAPTION_BG, outline=UNMERGED_EDGE)
            x = pad + sw + 4
        for ln in lines:
            d.text((x, y), ln, fill=CAPTION_FG, font=font)
            y += line_h
    return canvas


MIN_CAPTION_WIDTH = 160


def site_path(out: Path, index: int) -> Path:
    """merges.png for site 0, merges_site1.png, merges_site2.png, ... for the others."""
    return out if index == 0 else out.with_name(f"{out.stem}_site{index}{out.suffix}")


def show_merges(model_name: str, variant: str, image: str | Path, out: str | Path, *,
                checkpoint: str | None = None, resolution: tuple[int, int] | None = None,
                site: int | None = None, seed: int = 0, all_sites: bool = False,
                caption: bool = True) -> list[tuple[Path, MergeSite]]:
    """Run the merged model on `image`, draw its merge sites; returns [(png path, site)].

    Each PNG shows the image at its own width x height, with a caption strip (the site, a legend)
    below it; `caption=False`: exactly the image's size. `site` picks one site (written to `out`);
    otherwise site 0 goes to `out` and site k to `<out stem>_site<k>.png`.
    """
    image = Path(image)
    if not image.is_file():
        raise EdgemergeError(f"image not found: {image}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise EdgemergeError(f"--out must be a .png file, got {out}")
    check_output_file(out, "picture")  # before the model runs; the site files go beside it
    from edgemerge.contracts.images import load_image, normalize, read_rgb

    pil = read_rgb(image)  # the picture drawn on: as the model sees it (EXIF orientation, 16-bit scaled)

    import torch

    from edgemerge.merge.reference import build_reference
    from edgemerge.merge.plan import get_plan
    from edgemerge.merge.counts import resolve
    from edgemerge.models.registry import get_config

    cfg = get_config(model_name)
    H, W = resolution or cfg.resolution
    resolve(model_name, get_plan(model_name, variant), (H, W))  # a plan the resolution cannot take fails here
    model, cfg, _ = build_reference(model_name, variant, checkpoint=checkpoint, resolution=(H, W), seed=seed)
    x = normalize(load_image(image, H, W)[None], cfg.mean, cfg.std)
    with record_merges(model) as sites, torch.no_grad():
        model(torch.from_numpy(x))
    sites = sites if all_sites else select_sites(sites)
    if not sites:
        raise EdgemergeError(f"{model_name} variant {variant!r} merged no tokens at {H}x{W}: nothing to show")
    if site is not None:
        if not 0 <= site < len(sites):
            raise EdgemergeError(f"--site {site} is out of range: this model has {len(sites)} sites (0..{len(sites) - 1})")
        sites = [sites[site]]
    written, files = [], []
    for i, s in enumerate(sites):
        path = out if site is not None else site_path(out, i)
        buf = io.BytesIO()
        draw_site(pil, s, label=caption).save(buf, format="png")
        files.append((path, buf.getvalue()))
        written.append((path, s))
    write_files(files)  # all or none
    return written
