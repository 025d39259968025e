"""Plain ViT / DeiT with timm's parameter names, so timm state dicts load directly.

Merge hook: `Block.reduce_tokens` is an identity here; ToMe/ALGM/DTEM swap the block's class for
a subclass overriding it. `Attention` returns the head-averaged keys, ToMe's merge metric, so a
patch needs no second pass. Position embeddings are resized when the model is built (or a
checkpoint is loaded), never in `forward`, so the exported graph has no resize.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgemerge.models.tokens import TokenState


def resize_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                     old_grid: tuple[int, int] | None = None) -> Tensor:
    """Bicubic resize of the patch part of pos_embed [1, P + N, C] to `new_grid` (as timm does)."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if old_grid is None:
        side = int(math.isqrt(grid.shape[1]))
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    C = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], C).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], C).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int, in_ch: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, patch_size, patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, C]


class Attention(nn.Module):
    """Multi-head self-attention via SDPA; also returns the keys averaged over heads (ToMe's metric)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.attend(self.qkv(x), bias)

    def attend(self, qkv: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attention from the qkv projection [B, N, 3C] (so a patch can compute it fused with more)."""
        B, N, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        qkv = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, h, N, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))
        return out, k.mean(dim=1)  # [B, N, C], [B, N, d]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def reduce_tokens(self, x: Tensor, state: TokenState, keys: Tensor, normed: Tensor) -> tuple[Tensor, TokenState]:
        """Merge hook between attention and MLP: x [B, N, C] -> [B, N', C] (identity here)."""
        return x, state

    def forward(self, x: Tensor, state: TokenState) -> tuple[Tensor, TokenState]:
        xn = self.norm1(x)
        a, k = self.attn(xn, state.attn_bias())
        x = x + a
        x, state = self.reduce_tokens(x, state, keys=k, normed=xn)
        x = x + self.mlp(self.norm2(x))
        return x, state


class VisionTransformer(nn.Module):
    """images [B, 3, H, W] -> class logits [B, num_classes] from the CLS token.

    `distilled=True` adds DeiT's distillation token (as in Hugging Face `DeiTForImageClassification`
    checkpoints) and makes `num_prefix_tokens` 2; `head_dist` is only created with `dist_head=True`.
    `num_classes=0` gives an identity head (Segmenter's backbone).
    """

    def __init__(self, img_size: tuple[int, int] = (224, 224), patch_size: int = 16, dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, num_classes: int = 1000,
                 qkv_bias: bool = True, eps: float = 1e-6, distilled: bool = False, dist_head: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_prefix_tokens = 2 if distilled else 1
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distilled else None
        n = self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = nn.Linear(dim, num_classes) if (distilled and dist_head and num_classes > 0) else None

    def embed(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)  # [B, N, C]
        prefix = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        prefix = torch.cat(prefix, dim=1).expand(x.shape[0], -1, -1)
        return torch.cat([prefix, x], dim=1) + self.pos_embed  # [B, P + N, C]

    def forward_features(self, images: Tensor) -> tuple[Tensor, TokenState]:
        """Normed tokens [B, P + N', C] (N' < N when merged) and the final TokenState."""
        x, state = self.embed(images), TokenState()
        for blk in self.blocks:
            x, state = blk(x, state)
        return self.norm(x), state

    def forward(self, images: Tensor) -> Tensor:
        x, _ = self.forward_features(images)
        logits = self.head(x[:, 0])  # [B, K]
        if self.head_dist is not None:
            logits = (logits + self.head_dist(x[:, 1])) / 2
        return logits
