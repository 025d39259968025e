"""`edgemerge show`: which tokens merged, drawn over the image (as DTEM's merged-token figures).

The merged PyTorch model runs once on the image while `record_merges` watches the matching
functions (`edgemerge.merge.core.bipartite_match` / `window_match`) and the merge hooks that call
them, so every merge site reports its token grid and `slot` (the merged token holding each input
token). A site's groups are the grid cells that share a slot; for ViT models (ToMe, DTEM, ALGM)
the slots are composed back to the original patch grid through the tokens' `source` chain, so a
site shows everything merged up to and including that block.

Drawing: one PNG per site, each exactly the input image's width x height; every group of two or
more tokens gets one colour and an outline, unmerged tokens are left clear.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgemerge.errors import EdgemergeError
from edgemerge.files import check_output_file, write_files


@dataclass
class MergeSite:
    """Merge decisions of one site for the first image of the batch."""

    module: str  # e.g. 'encoder.stages.0.blocks.0.attn'
    kind: str  # 'kv' | 'queries' | 'pool' (n2d) | 'tokens' (ViT, cumulative)
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


class _Recorder:
    def __init__(self):
        self.sites: list[MergeSite] = []
        self.context: dict | None = None


@contextlib.contextmanager
def record_merges(model) -> Iterator[list[MergeSite]]:
    """While open, every merge the model makes in `forward` is appended to the yielded list.

    Wraps `core.bipartite_match` / `core.window_match` and the merge hooks of the patched classes
    (restored on exit), so it works on any model `apply_merging` patched, and records nothing
    for an unmerged one.
    """
    from edgemerge.merge import core, patch

    rec = _Recorder()
    names = {id(m): n for n, m in model.named_modules()}
    vit = None
    with contextlib.suppress(EdgemergeError):
        vit = patch._vit_of(model)

    orig_kv, orig_q = patch.SegformerPPAttention.reduce_kv, patch.SegformerPPAttention.reduce_queries
    orig_tokens = patch.MergingBlock.reduce_tokens

    def record_slot(e: core.MatchEvent) -> None:
        ctx = rec.context
        if ctx is None or ctx["kind"] == "tokens" or e.slot is None:
            return
        slot = e.slot[0].detach().cpu().numpy().astype(np.int64)
        h, w = ctx["grid"]
        if slot.shape[0] == h * w:  # Segformer sites have no prefix tokens
            rec.sites.append(MergeSite(ctx["module"], ctx["kind"], (h, w), slot, e.metric.shape[1], int(slot.max()) + 1))

    def reduce_kv(self, kv, hw):
        rec.context = {"module": names.get(id(self), "?"), "kind": "kv", "grid": tuple(hw)}
        try:
            return orig_kv(self, kv, hw)
        finally:
            rec.context = None

    def reduce_queries(self, x, hw):
        rec.context = {"module": names.get(id(self), "?"), "kind": "queries", "grid": tuple(hw)}
        try:
            out = orig_q(self, x, hw)
        finally:
            rec.context = None
        if self.em_pool:  # n2d: 2x2 average pooling is a fixed grouping
            H, W = hw
            i, j = np.mgrid[0:H, 0:W]
            slot = ((i // 2) * (W // 2) + j // 2).reshape(-1)
            rec.sites.append(MergeSite(names.get(id(self), "?"), "pool", (H, W), slot, H * W, (H // 2) * (W // 2)))
        return out

    def reduce_tokens(self, x, state, keys, normed):
        rec.context = {"module": names.get(id(self), "?"), "kind": "tokens", "grid": None}
        try:
            x_out, state_out = orig_tokens(self, x, state, keys, normed)
        finally:
            rec.context = None
        if vit is not None and state_out.source is not None and state_out.source is not state.source:
            p = vit.num_prefix_tokens
            source = state_out.source[0].detach().cpu().numpy().astype(np.int64)[p:]
            rec.sites.append(MergeSite(names.get(id(self), "?"), "tokens", tuple(vit.grid_size), source,
                                       x.shape[1], x_out.shape[1]))
        return x_out, state_out

    patch.SegformerPPAttention.reduce_kv, patch.SegformerPPAttention.reduce_queries = reduce_kv, reduce_queries
    patch.MergingBlock.reduce_tokens = reduce_tokens
    try:
        with core.observe(record_slot):
            yield rec.sites
    finally:
        patch.SegformerPPAttention.reduce_kv, patch.SegformerPPAttention.reduce_queries = orig_kv, orig_q
        patch.MergingBlock.reduce_tokens = orig_tokens


def select_sites(sites: list[MergeSite]) -> list[MergeSite]:
    """Segformer: the first block of each stage with merging (each kind); ViT: every merging block."""
    chosen, seen = [], set()
    for s in sites:
        key = (s.stage, s.kind) if s.stage is not None else (s.module, s.kind)
        if key not in seen:
            seen.add(key)
            chosen.append(s)
    return chosen


def _palette(n: int, seed: int = 0) -> np.ndarray:
    """n distinct, saturated colours (golden-ratio hues, shuffled so neighbours differ)."""
    import colorsys

    hues = (np.arange(n) * 0.618033988749895) % 1.0
    rng = np.random.default_rng(seed)
    rng.shuffle(hues)
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues], np.float32) * 255


def draw_site(image, site: MergeSite, alpha: float = 0.55, label: bool = True):
    """The image (PIL, any size) with the site's merged groups coloured and outlined; same size."""
    from PIL import Image, ImageDraw

    W0, H0 = image.size
    groups = site.groups()
    h, w = site.grid
    rows = np.minimum((np.arange(H0) * h) // H0, h - 1)
    cols = np.minimum((np.arange(W0) * w) // W0, w - 1)
    g = groups[rows[:, None], cols[None, :]]  # [H0, W0]
    rgb = np.asarray(image.convert("RGB"), np.float32)
    ids = np.unique(g[g >= 0])
    if ids.size:
        colours = np.zeros((int(ids.max()) + 1, 3), np.float32)
        colours[ids] = _palette(ids.size)
        merged = g >= 0
        rgb[merged] = (1 - alpha) * rgb[merged] + alpha * colours[g[merged]]
        edge = np.zeros_like(merged)  # outline: a pixel whose right/lower neighbour is in another group
        diff_x = g[:, 1:] != g[:, :-1]
        diff_y = g[1:, :] != g[:-1, :]
        edge[:, 1:] |= diff_x & (merged[:, 1:] | merged[:, :-1])
        edge[:, :-1] |= diff_x & (merged[:, 1:] | merged[:, :-1])
        edge[1:, :] |= diff_y & (merged[1:, :] | merged[:-1, :])
        edge[:-1, :] |= diff_y & (merged[1:, :] | merged[:-1, :])
        rgb[edge & merged] = 20.0  # drawn inside the groups, so unmerged tokens stay clear
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if label and W0 >= 64 and H0 >= 24:
        d = ImageDraw.Draw(out)
        text = site.name
        box = d.textbbox((3, 3), text)
        d.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        d.text((3, 3), text, fill=(255, 255, 255))
    return out


def site_path(out: Path, index: int) -> Path:
    """merges.png for site 0, merges_site1.png, merges_site2.png, ... for the others."""
    return out if index == 0 else out.with_name(f"{out.stem}_site{index}{out.suffix}")


def show_merges(model_name: str, variant: str, image: str | Path, out: str | Path, *,
                checkpoint: str | None = None, resolution: tuple[int, int] | None = None,
                site: int | None = None, seed: int = 0, all_sites: bool = False) -> list[tuple[Path, MergeSite]]:
    """Run the merged model on `image`, draw its merge sites; returns [(png path, site)].

    Each PNG has the image's own width x height. `site` picks one site (written to `out`);
    otherwise site 0 goes to `out` and site k to `<out stem>_site<k>.png`.
    """
    from PIL import Image

    image = Path(image)
    if not image.is_file():
        raise EdgemergeError(f"image not found: {image}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise EdgemergeError(f"--out must be a .png file, got {out}")
    check_output_file(out, "picture")  # before the model runs; the site files go beside it
    try:
        pil = Image.open(image)
        pil.load()
    except Exception as e:
        raise EdgemergeError(f"cannot read image {image}: {e}") from None

    import torch

    from edgemerge.reference import build_reference
    from edgemerge.images import load_image, normalize
    from edgemerge.merge import get_plan, resolve
    from edgemerge.models import get_config

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
        draw_site(pil, s).save(buf, format="png")
        files.append((path, buf.getvalue()))
        written.append((path, s))
    write_files(files)  # all or none
    return written
