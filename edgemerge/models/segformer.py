"""Segformer (MiT encoder + all-MLP decode head), written to match transformers' numerics.

One readable file in the nanoGPT spirit. Parameter names are our own; `edgemerge.models.convert`
maps Hugging Face, mmsegmentation and NVlabs checkpoints onto them.

Merge hook: `SegformerAttention.reduce_queries` / `reduce_kv` are identities here; Segformer++
style merging swaps the module's class for a subclass overriding them (see edgemerge.merge).
All spatial sizes are Python ints taken from static tensor shapes, so the model exports with
`torch.onnx.export(dynamo=True)`.

LayerNorm eps: transformers uses torch's default 1e-5 everywhere (its config's
`layer_norm_eps=1e-6` is never read); NVlabs uses 1e-6 in blocks and stage norms and 1e-5 in the
patch-embedding and spatial-reduction norms; mmsegmentation uses 1e-6 everywhere. `embed_eps`
(patch embedding + spatial reduction norms) and `block_eps` (block + stage norms) let each
checkpoint format be reproduced exactly; the zoo default follows transformers.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlap (kernel 7 stride 4, then 3/2), then LayerNorm over channels."""

    def __init__(self, in_ch: int, dim: int, kernel: int, stride: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)  # [B, C, H, W]
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])), hw  # [B, H*W, C]


class SegformerAttention(nn.Module):
    """Efficient self-attention: full-resolution queries, keys/values spatially reduced by `sr`.

    `reduce_queries` and `reduce_kv` are the merge hooks (identities here).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def reduce_queries(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """Merge hook: fewer queries [B, Nq, C] and a function restoring [B, Nq, C] -> [B, N, C]."""
        return x, lambda t: t

    def reduce_kv(self, kv: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        """Merge hook: fewer key/value tokens and an optional additive bias [B, 1, 1, Nkv]."""
        return kv, None

    def _heads(self, t: Tensor) -> Tensor:
        B, N, C = t.shape
        return t.view(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)  # [B, h, N, d]

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, N, C = x.shape  # x is the normed block input
        q_in, restore = self.reduce_queries(x, hw)
        kv, kv_hw = x, hw
        if self.sr_ratio > 1:
            kv = self.sr(x.reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2))  # [B, C, H/sr, W/sr]
            kv_hw = (kv.shape[2], kv.shape[3])
            kv = self.norm(kv.permute(0, 2, 3, 1).reshape(B, -1, C))  # [B, Nkv, C]
        kv, bias = self.reduce_kv(kv, kv_hw)
        q, k, v = self._heads(self.q(q_in)), self._heads(self.k(kv)), self._heads(self.v(kv))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, h, Nq, d]
        out = out.transpose(1, 2).reshape(B, q.shape[2], C)
        return restore(self.proj(out))  # [B, N, C]


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv (the only positional signal in Segformer) -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def reduce_tokens(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """Merge hook (identity here): fc1 runs on the tokens returned, and its output is restored
        to the grid for the depthwise conv. Only fc1's input is merged: merging fc2's too (GELU's
        outputs averaged) cost CamVid 2.8 mIoU where fc1 alone cost nothing (benchmarks/README.md)."""
        return x, lambda t: t

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x, restore = self.reduce_tokens(x, hw)
        x = restore(self.fc1(x))  # [B, N, 4C]
        B, N, C = x.shape
        x = self.dwconv(x.reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(B, N, C)
        return self.fc2(F.gelu(x))  # [B, N, C]


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, embed_eps: float, block_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=block_eps)
        self.attn = SegformerAttention(dim, num_heads, sr_ratio, embed_eps)
        self.norm2 = nn.LayerNorm(dim, eps=block_eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x), hw)


class Stage(nn.Module):
    def __init__(self, in_ch: int, dim: int, depth: int, heads: int, sr: int, kernel: int, stride: int,
                 mlp_ratio: int, embed_eps: float, block_eps: float):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_ch, dim, kernel, stride, embed_eps)
        self.blocks = nn.ModuleList(Block(dim, heads, sr, mlp_ratio, embed_eps, block_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=block_eps)

    def forward(self, x: Tensor) -> Tensor:
        x, hw = self.patch_embed(x)  # [B, N, C]
        for blk in self.blocks:
            x = blk(x, hw)
        x = self.norm(x)
        return x.reshape(x.shape[0], hw[0], hw[1], x.shape[2]).permute(0, 3, 1, 2)  # [B, C, H, W]


class MixTransformer(nn.Module):
    """The MiT encoder: four stages at strides 4, 8, 16, 32."""

    def __init__(self, depths: Sequence[int], widths: Sequence[int], heads: Sequence[int],
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), kernels: Sequence[int] = (7, 3, 3, 3),
                 strides: Sequence[int] = (4, 2, 2, 2), mlp_ratio: int = 4,
                 embed_eps: float = 1e-5, block_eps: float = 1e-5, in_ch: int = 3):
        super().__init__()
        ins = [in_ch, *widths[:-1]]
        self.stages = nn.ModuleList(
            Stage(ins[s], widths[s], depths[s], heads[s], sr_ratios[s], kernels[s], strides[s], mlp_ratio,
                  embed_eps, block_eps)
            for s in range(len(depths))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)  # [B, C_s, H/stride_s, W/stride_s]
        return feats


class SegformerHead(nn.Module):
    """All-MLP head: per-stage linear to `width`, upsample to 1/4, concat (last stage first, as
    transformers/NVlabs do), 1x1 fuse conv (no bias) + BN + ReLU, 1x1 classifier.

    `stage_norm=True` adds mmsegmentation's per-stage BN + ReLU after each projection (its
    `ConvModule`); with it the projections usually have no bias (`stage_bias=False`).
    """

    def __init__(self, in_dims: Sequence[int], width: int, num_classes: int,
                 stage_norm: bool = False, stage_bias: bool = True):
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, width, bias=stage_bias) for c in in_dims)
        self.linear_c_bn = nn.ModuleList(nn.BatchNorm2d(width) for _ in in_dims) if stage_norm else None
        self.fuse = nn.Conv2d(width * len(in_dims), width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.folded = False
        self.fold_stale = False  # trained since the fold: fold again when back in eval
        self.register_load_state_dict_post_hook(_fold_again_after_load)

    def train(self, mode: bool = True) -> "SegformerHead":
        """In training the head runs unfolded (BN folds only with its running statistics), and its
        weights may change: back in eval it is folded again from them."""
        super().train(mode)
        if self.folded and mode:
            self.fold_stale = True
        elif self.folded and self.fold_stale:
            self.fold()
        return self

    @torch.no_grad()
    def fold(self) -> bool:
        """Fold each stage's projection, its slice of the fuse conv and the BN after it into one
        C_s -> width product per stage, run at the stage's own resolution before upsampling.

        Exact in real arithmetic: bilinear upsampling is linear per channel with weights that sum
        to 1, so it commutes with a 1x1 conv and a bias, and BN in eval is an affine map. The
        fuse conv over 4 x width channels at 1/4 of the input is most of a small Segformer's FLOPs
        (b0 at 384x512: 6.4 of 12.2 GFLOPs); folded, it disappears, for the merged model and its
        unmerged baseline alike. Not with mmsegmentation's per-stage BN + ReLU (not linear): then
        nothing changes and this returns False. The folded tensors are non-persistent buffers
        (state_dict and checkpoints are unchanged). A folded head folds again by itself after
        load_state_dict (on it or on any module above it) and when it returns to eval after
        training; weights changed in place in eval mode (outside load_state_dict) need fold() again."""
        if self.linear_c_bn is not None:
            return False
        n, width = len(self.linear_c), self.fuse.weight.shape[0]
        fuse = self.fuse.weight[:, :, 0, 0]  # [width, n * width], stages concatenated last first
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shift = self.bn.bias - self.bn.running_mean * scale
        for i, lin in enumerate(self.linear_c):
            block = scale[:, None] * fuse[:, (n - 1 - i) * width:(n - i) * width]
            bias = block @ lin.bias if lin.bias is not None else torch.zeros_like(shift)
            self.register_buffer(f"folded_weight_{i}", block @ lin.weight, persistent=False)
            self.register_buffer(f"folded_bias_{i}", bias + (shift if i == 0 else 0), persistent=False)
        self.folded = True
        self.fold_stale = False
        return True

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = (feats[0].shape[2], feats[0].shape[3])  # 1/4 of the input
        if self.folded and not self.training:
            return self.classifier(F.relu(self._folded(feats, size)))
        outs = []
        for i, f in enumerate(feats):
            B, _, h, w = f.shape
            y = self.linear_c[i](f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            if self.linear_c_bn is not None:
                y = F.relu(self.linear_c_bn[i](y))
            outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        x = F.relu(self.bn(self.fuse(torch.cat(outs[::-1], dim=1))))  # [B, D, H/4, W/4]
        return self.classifier(x)  # [B, K, H/4, W/4]

    def _folded(self, feats: list[Tensor], size: tuple[int, int]) -> Tensor:
        """sum over stages of upsample(f_s W_s^T + b_s): the fuse conv's output, BN applied."""
        x = None
        for i, f in enumerate(feats):
            B, _, h, w = f.shape
            y = F.linear(f.permute(0, 2, 3, 1), getattr(self, f"folded_weight_{i}"),
                         getattr(self, f"folded_bias_{i}")).permute(0, 3, 1, 2)
            if (h, w) != size:
                y = upsample_bilinear(y, size)
            x = y if x is None else x + y
        return x


# Largest work per output pixel (multiply-adds) for which `upsample_bilinear` uses two MatMuls
# instead of Resize. ONNX Runtime CPU, one thread, 256 channels to 96x128: Resize 3.3-3.5 ms
# whatever the input; MatMuls 0.41 ms from 12x16 (28 per output), 0.85 from 24x32 (32), 2.1 from
# 48x64 (80); the crossover is near 130 (benchmarks/README.md, "Where the time goes").
MATMUL_UPSAMPLE_MAX_WORK = 96


def upsample_bilinear(y: Tensor, size: tuple[int, int]) -> Tensor:
    """F.interpolate(y, size, mode="bilinear", align_corners=False), as two MatMuls with the
    interpolation matrices when that is less work than Resize: `A_h @ (y @ A_w^T)`, each row of an A
    holding the two tap weights PyTorch uses. Equal in real arithmetic (the same two products per
    direction; the other entries are exact zeros); in fp32 within an ulp or two. A Resize costs about
    the same per output pixel whatever its input, the MatMuls h*w/H + h multiply-adds: small inputs
    upsampled far (a Segformer head's stages 3-4) are where they win."""
    (h, w), (H, W) = y.shape[-2:], size
    if h * w / H + h > MATMUL_UPSAMPLE_MAX_WORK:
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    a_h = interpolation_matrix(h, H).to(device=y.device, dtype=y.dtype)
    a_wt = interpolation_matrix(w, W).to(device=y.device, dtype=y.dtype).T
    return a_h @ (y @ a_wt)


def interpolation_matrix(n_in: int, n_out: int) -> Tensor:
    """[n_out, n_in] weights of 1-D linear interpolation with half-pixel centres, PyTorch's
    align_corners=False rule (aten's area_pixel_compute_source_index and its linear taps): source
    (i + 0.5) * n_in / n_out - 0.5, clamped at 0; taps floor(source) and the next, the last
    repeated at the edge; in float32 as aten computes it, so the taps and weights are its own."""
    f32 = np.float32  # aten computes the source index in float for float tensors: so do we
    scale = f32(n_in) / f32(n_out)
    rows = []
    for i in range(n_out):
        src = max(scale * (f32(i) + f32(0.5)) - f32(0.5), f32(0.0))
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = float(min(max(src - f32(i0), f32(0.0)), f32(1.0)))
        row = [0.0] * n_in
        row[i0] += 1.0 - lam
        row[i1] += lam
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def _fold_again_after_load(head: SegformerHead, incompatible_keys) -> None:
    """load_state_dict post-hook: a folded head runs the weights just loaded, never the old fold."""
    if head.folded:
        head.fold()


class Segformer(nn.Module):
    """images [B, 3, H, W] -> logits [B, K, H/4, W/4] (like transformers, not upsampled)."""

    def __init__(self, depths: Sequence[int], widths: Sequence[int], heads: Sequence[int], num_classes: int,
                 decoder_width: int = 256, sr_ratios: Sequence[int] = (8, 4, 2, 1), mlp_ratio: int = 4,
                 embed_eps: float = 1e-5, block_eps: float = 1e-5,
                 head_stage_norm: bool = False, head_stage_bias: bool = True):
        super().__init__()
        self.encoder = MixTransformer(depths, widths, heads, sr_ratios, mlp_ratio=mlp_ratio,
                                      embed_eps=embed_eps, block_eps=block_eps)
        self.decode_head = SegformerHead(widths, decoder_width, num_classes, head_stage_norm, head_stage_bias)
        self.num_classes = num_classes

    def fold_decoder(self) -> bool:
        """See SegformerHead.fold: the deployed form of the head (export, validate, bench)."""
        return self.decode_head.fold()

    def forward(self, images: Tensor) -> Tensor:
        return self.decode_head(self.encoder(images))
