"""Token bookkeeping shared by the plain-ViT models and the merge patches.

A merged model carries a `TokenState` from block to block, so that proportional attention and
the final unmerge (a gather by `source`) need no hidden mutable state on the modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class TokenState:
    """What the tokens currently stand for; all fields stay None in an unmerged model.

    size [B, N, 1]: how many original tokens each current token stands for.
    source [B, N0] int64: index of the current token that holds each original token
        (prefix tokens included, so `source[:, 0] == 0` for the CLS token).
    proportional: add log(size) to the attention logits (ToMe's proportional attention).
    """

    size: Tensor | None = None
    source: Tensor | None = None
    proportional: bool = False

    def attn_bias(self) -> Tensor | None:
        """Additive attention bias [B, 1, 1, N] for proportional attention, or None."""
        if self.size is None or not self.proportional:
            return None
        return self.size.log().transpose(1, 2)[:, None]
