"""Proportional attention checked by value: softmax(q k^T * scale + log size) v, written out here
with loops in float64 from the modules' own weights (none of edgemerge's attention, merge or bias
code is used for the expected values), against

- the patched PyTorch modules: the Segformer++ key/value site (segformer-b0 fast-pa / hq-pa:
  spatial reduction + LayerNorm, x_kv merged, keys/values from the merged tokens, + log size on
  each merged key's logit) and the ToMe site (deit-t tome: + log size on the keys of the tokens
  the earlier blocks merged);
- the same computation exported with edgemerge's exporter and run in ONNX Runtime.

The merge decision is the one thing taken from the run (recorded with `core.observe`); the merged
tokens, their sizes and the attention are recomputed from it. Each test also checks that the
reference with the bias's sign flipped, or without the bias, misses by far more than the
tolerance: a model doing either fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgemerge.merge.patch import apply_merging
from edgemerge.merge import core
from edgemerge.merge.plan import get_plan
from edgemerge.models.registry import build_model
from edgemerge.models.tokens import TokenState

SEG_RES = (256, 256)  # stage 1: 64x64 tokens, keys/values 8x8 after the sr-8 reduction
VIT_RES = (112, 112)
RTOL = 1e-4  # of the output's largest magnitude; float32 module vs float64 loops
MISS = 50 * RTOL  # what a flipped or missing bias must miss by, at least


# ---- the reference, written out ----------------------------------------------------------------------

def _linear(x: np.ndarray, lin: nn.Linear) -> np.ndarray:
    w = lin.weight.detach().double().numpy()
    b = lin.bias.detach().double().numpy() if lin.bias is not None else np.zeros(w.shape[0])
    return x @ w.T + b


def _layer_norm(x: np.ndarray, ln: nn.LayerNorm) -> np.ndarray:
    out = np.empty_like(x)
    w, b = ln.weight.detach().double().numpy(), ln.bias.detach().double().numpy()
    for i in range(x.shape[0]):
        mu = x[i].mean()
        var = ((x[i] - mu) ** 2).mean()
        out[i] = (x[i] - mu) / math.sqrt(var + ln.eps) * w + b
    return out


def _merge_by_slot(tokens: np.ndarray, size: np.ndarray, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Size-weighted mean of the tokens that share a slot, and the summed sizes (loops)."""
    n_out = int(slot.max()) + 1
    sums = np.zeros((n_out, tokens.shape[1]))
    sizes = np.zeros(n_out)
    for i, s in enumerate(slot):
        sums[s] += size[i] * tokens[i]
        sizes[s] += size[i]
    assert (sizes > 0).all(), "a slot without tokens"
    return sums / sizes[:, None], sizes


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, key_bias: np.ndarray) -> np.ndarray:
    """q [Nq, C], k/v [Nk, C], key_bias [Nk] (log size, or zeros): per head
    softmax(q k^T / sqrt(d) + key_bias) v, heads concatenated -> [Nq, C]."""
    Nq, C = q.shape
    d = C // heads
    scale = 1.0 / math.sqrt(d)
    out = np.zeros((Nq, C))
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        kh, vh = k[:, sl], v[:, sl]
        for i in range(Nq):
            logits = np.array([float(q[i, sl] @ kh[j]) * scale + key_bias[j] for j in range(k.shape[0])])
            p = np.exp(logits - logits.max())
            p /= p.sum()
            out[i, sl] = p @ vh
    return out


def segformer_kv_site_ref(attn, x: np.ndarray, hw: tuple[int, int], slot: np.ndarray, sign: float) -> np.ndarray:
    """A Segformer attention with merged keys/values, from its weights: x [N, C] is the normed block
    input; the sr conv (kernel = stride = sr) as a patch product, LayerNorm, merge by `slot`, keys
    and values from the merged tokens, + sign * log(size) on their logits, output projection."""
    H, W = hw
    C = x.shape[1]
    sr = attn.sr_ratio
    grid = x.reshape(H, W, C)
    conv_w = attn.sr.weight.detach().double().numpy()  # [C, C, sr, sr]
    conv_b = attn.sr.bias.detach().double().numpy()
    h2, w2 = H // sr, W // sr
    kv = np.zeros((h2 * w2, C))
    for i in range(h2):
        for j in range(w2):
            patch = grid[i * sr:(i + 1) * sr, j * sr:(j + 1) * sr]  # [sr, sr, C_in]
            kv[i * w2 + j] = np.einsum("oiab,abi->o", conv_w, patch) + conv_b
    kv = _layer_norm(kv, attn.norm)
    merged, size = _merge_by_slot(kv, np.ones(len(kv)), slot)
    q, k, v = _linear(x, attn.q), _linear(merged, attn.k), _linear(merged, attn.v)
    out = attention_ref(q, k, v, attn.num_heads, sign * np.log(size))
    return _linear(out, attn.proj)


def vit_attention_ref(blk, x: np.ndarray, size: np.ndarray, sign: float) -> np.ndarray:
    """A ViT block's attention output from its weights: LayerNorm, qkv, + sign * log(size) on the
    keys' logits, output projection. x [N, C], size [N]."""
    C = x.shape[1]
    qkv = _linear(_layer_norm(x, blk.norm1), blk.attn.qkv)
    q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
    out = attention_ref(q, k, v, blk.attn.num_heads, sign * np.log(size))
    return _linear(out, blk.attn.proj)


def _assert_close_and_discriminating(got: np.ndarray, want: np.ndarray, flipped: np.ndarray,
                                     dropped: np.ndarray, what: str) -> None:
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    assert err <= RTOL * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"
    # the data must tell the bias from its absence and from its negation
    assert np.abs(flipped - want).max() > MISS * scale, f"{what}: -log size indistinguishable here"
    assert np.abs(dropped - want).max() > MISS * scale, f"{what}: no bias indistinguishable here"
    assert np.abs(got - flipped).max() > MISS * scale and np.abs(got - dropped).max() > MISS * scale


# ---- capturing a site's input, output and decision ----------------------------------------------------

def _capture_segformer(model, images, stages=(1, 2)):
    """Per attention of `stages`: (module, normed input [N, C], hw, output [N, C], kv slot [Nkv])."""
    seen: list = []
    current: list = []
    hooks = []
    for s in stages:
        for blk in model.encoder.stages[s - 1].blocks:
            attn = blk.attn

            def pre(m, args, attn=attn):
                current.append({"attn": m, "x": args[0][0].double().numpy(), "hw": args[1], "slots": []})

            def post(m, args, out):
                rec = current.pop()
                rec["out"] = out[0].double().numpy()
                seen.append(rec)

            hooks += [attn.register_forward_pre_hook(pre), attn.register_forward_hook(post)]

    def on_match(e):
        if current and isinstance(e, core.MatchEvent) and e.slot is not None:
            current[-1]["slots"].append(e.slot[0].long().numpy())

    try:
        with torch.no_grad(), core.observe(on_match):
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.fixture(scope="module", params=["fast-pa", "hq-pa"])
def segformer(request):
    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=SEG_RES).eval()
    plan = get_plan("segformer-b0", request.param)
    assert plan.proportional and set(plan.kv) == {1, 2}
    apply_merging(model, plan)
    images = torch.randn(1, 3, *SEG_RES, generator=torch.Generator().manual_seed(1))
    return request.param, model, images


def test_segformer_kv_site_is_softmax_qk_plus_log_size(segformer):
    variant, model, images = segformer
    seen = _capture_segformer(model, images)
    assert len(seen) == 4  # 2 blocks in each of stages 1-2
    for n, rec in enumerate(seen):
        attn = rec["attn"]
        assert len(rec["slots"]) == 1, "one merge (keys/values) per stage 1-2 attention"
        slot = rec["slots"][0]
        sizes = np.bincount(slot)
        assert sizes.max() > 1 and len(set(sizes.tolist())) > 1  # merged keys of different sizes
        args = (attn, rec["x"], rec["hw"], slot)
        want, flipped, dropped = (segformer_kv_site_ref(*args, sign) for sign in (1.0, -1.0, 0.0))
        _assert_close_and_discriminating(rec["out"], want, flipped, dropped, f"{variant} attention {n}")


def test_segformer_without_pa_has_no_bias():
    """The plain variant (Segformer++'s own rule) is the same reference with sign 0."""
    torch.manual_seed(0)
    model = apply_merging(build_model("segformer-b0", resolution=SEG_RES).eval(), get_plan("segformer-b0", "fast"))
    images = torch.randn(1, 3, *SEG_RES, generator=torch.Generator().manual_seed(1))
    rec = _capture_segformer(model, images, stages=(1,))[0]
    want = segformer_kv_site_ref(rec["attn"], rec["x"], rec["hw"], rec["slots"][0], 0.0)
    assert np.abs(rec["out"] - want).max() <= RTOL * np.abs(want).max()


def _capture_vit(model, images, blocks):
    """Per block in `blocks`: (block, input [N, C], size [N], attention output [N, C])."""
    seen = {}
    hooks = []
    vit = model
    for i in blocks:
        blk = vit.blocks[i]

        def pre(m, args, i=i):
            x, state = args
            assert isinstance(state, TokenState)
            size = state.size[0, :, 0].double().numpy() if state.size is not None else np.ones(x.shape[1])
            seen[i] = {"blk": m, "x": x[0].double().numpy(), "size": size}

        def post(m, args, out, i=i):
            seen[i]["out"] = out[0][0].double().numpy()

        hooks += [blk.register_forward_pre_hook(pre), blk.attn.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.fixture(scope="module")
def deit():
    torch.manual_seed(0)
    model = build_model("deit-t", resolution=VIT_RES).eval()
    plan = get_plan("deit-t", "tome")
    assert plan.proportional
    apply_merging(model, plan)
    images = torch.randn(1, 3, *VIT_RES, generator=torch.Generator().manual_seed(1))
    return model, images


def test_tome_site_is_softmax_qk_plus_log_size(deit):
    model, images = deit
    seen = _capture_vit(model, images, blocks=(1, 2, 3))
    for i, rec in seen.items():
        size = rec["size"]
        assert size.max() > 1 and len(set(size.tolist())) > 1, f"block {i}: nothing merged before it"
        n0 = model.grid_size[0] * model.grid_size[1] + model.num_prefix_tokens
        assert size.sum() == n0 and size.shape[0] < n0, "the sizes count every original token once"
        args = (rec["blk"], rec["x"], size)
        want, flipped, dropped = (vit_attention_ref(*args, sign) for sign in (1.0, -1.0, 0.0))
        _assert_close_and_discriminating(rec["out"], want, flipped, dropped, f"deit-t tome block {i}")


# ---- the same in the exported ONNX, run in ONNX Runtime --------------------------------------------------

class _Stage1Attention(nn.Module):
    """images -> the first stage-1 attention's output (the kv site with + log size)."""

    def __init__(self, model):
        super().__init__()
        self.stage = model.encoder.stages[0]

    def forward(self, images):
        x, hw = self.stage.patch_embed(images)
        blk = self.stage.blocks[0]
        return blk.attn(blk.norm1(x), hw)


class _SecondBlockAttention(nn.Module):
    """images -> block 1's attention output: block 0 merges (ToMe), block 1 attends with + log size."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, images):
        x, state = self.vit.embed(images), TokenState()
        x, state = self.vit.blocks[0](x, state)
        blk = self.vit.blocks[1]
        return blk.attn(blk.norm1(x), state.attn_bias())[0]


def _onnx_run(module: nn.Module, images: torch.Tensor, merge_ops: str) -> np.ndarray:
    import onnxruntime as ort

    from edgemerge.export.exporter import finalize, torch_to_onnx

    proto = finalize(torch_to_onnx(module.eval(), images, 18), merge_ops=merge_ops, precision="fp32")
    if merge_ops == "plugin":
        assert any(n.domain == "edgemerge" for n in proto.graph.node)
    assert any(n.op_type == "Log" for n in proto.graph.node), "no log(size) in the graph"
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: images.numpy()})[0][0].astype(np.float64)


@pytest.mark.parametrize("merge_ops", ["plugin", "native"])
def test_onnx_segformer_kv_site_by_value(segformer, merge_ops):
    variant, model, images = segformer
    rec = _capture_segformer(model, images, stages=(1,))[0]
    got = _onnx_run(_Stage1Attention(model), images, merge_ops)
    args = (rec["attn"], rec["x"], rec["hw"], rec["slots"][0])
    want, flipped, dropped = (segformer_kv_site_ref(*args, sign) for sign in (1.0, -1.0, 0.0))
    _assert_close_and_discriminating(got, want, flipped, dropped, f"ONNX {variant} {merge_ops}")


@pytest.mark.parametrize("merge_ops", ["plugin", "native"])
def test_onnx_tome_site_by_value(deit, merge_ops):
    model, images = deit
    rec = _capture_vit(model, images, blocks=(1,))[1]
    got = _onnx_run(_SecondBlockAttention(model), images, merge_ops)
    args = (rec["blk"], rec["x"], rec["size"])
    want, flipped, dropped = (vit_attention_ref(*args, sign) for sign in (1.0, -1.0, 0.0))
    _assert_close_and_discriminating(got, want, flipped, dropped, f"ONNX deit-t tome {merge_ops}")
