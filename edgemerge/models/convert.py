"""Key mappings between our parameter names and the published checkpoint layouts.

Plain functions on state dicts (name -> tensor), both directions, so tests and users can convert:

    segformer: hf_to_segformer / segformer_to_hf       (transformers, legacy or v5-internal names)
               mmseg_to_segformer / segformer_to_mmseg (mmsegmentation MiT + SegformerHead)
               nvlabs_to_segformer / segformer_to_nvlabs (NVlabs/SegFormer)
    vit/deit:  hf_to_vit / vit_to_hf                    (ViT/DeiTForImageClassification)
               timm state dicts already use our names
    segmenter: segmenter_to_ours / ours_to_segmenter    (rstrudel/segmenter `encoder.*`, `decoder.*`)

A rule pairs our module path with theirs; `{s}`, `{j}`, `{i}` match an integer, `{s+1}` the same
integer plus one (NVlabs counts stages from 1). A rule matches a module path followed by one leaf
name (`.weight`, `.running_mean`, ...) or a whole key. Keys no rule matches are kept unchanged, so
they show up as "unexpected" when loading, which is the error message we want for foreign files.
"""

from __future__ import annotations

import re
from functools import lru_cache

import torch
from torch import Tensor

StateDict = dict[str, Tensor]
Rules = list[tuple[str, str]]  # (ours, theirs)

_PLACEHOLDER = re.compile(r"\{(\w)(\+1)?\}")


@lru_cache(maxsize=None)
def _pattern(pat: str) -> re.Pattern[str]:
    out, pos = "", 0
    for m in _PLACEHOLDER.finditer(pat):
        out += re.escape(pat[pos : m.start()]) + f"(?P<{m.group(1)}{'_p1' if m.group(2) else ''}>\\d+)"
        pos = m.end()
    return re.compile("^" + out + re.escape(pat[pos:]) + r"(?P<_leaf>(\.[^.]+)?)$")


def _format(pat: str, values: dict[str, int]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)] + (1 if m.group(2) else 0)), pat)


def rename(state: StateDict, rules: Rules, to_ours: bool = True) -> StateDict:
    """Rename every key by the first matching rule (theirs -> ours, or ours -> theirs)."""
    out: StateDict = {}
    for key, value in state.items():
        new = key
        for ours, theirs in rules:
            src, dst = (theirs, ours) if to_ours else (ours, theirs)
            m = _pattern(src).match(key)
            if m:
                values = {k.removesuffix("_p1"): int(v) - (1 if k.endswith("_p1") else 0)
                          for k, v in m.groupdict().items() if k != "_leaf"}
                new = _format(dst, values) + m.group("_leaf")
                break
        out[new] = value
    return out


def _split(state: StateDict, fused: str, parts: tuple[str, ...]) -> StateDict:
    """Split keys containing `.{fused}.` along dim 0 into one key per part (qkv -> q, k, v)."""
    out: StateDict = {}
    for key, value in state.items():
        token = f".{fused}."
        if token in key:
            for part, chunk in zip(parts, value.chunk(len(parts), dim=0)):
                out[key.replace(token, f".{part}.")] = chunk.clone()
        else:
            out[key] = value
    return out


def _fuse(state: StateDict, parts: tuple[str, ...], fused: str) -> StateDict:
    """Inverse of `_split`: concatenate `.q.`/`.k.`/`.v.` keys into one `.{fused}.` key."""
    first = f".{parts[0]}."
    groups = {}
    for key in state:
        if first in key:
            partners = [key.replace(first, f".{p}.") for p in parts]
            if all(p in state for p in partners):
                groups[key] = partners
    consumed = {p for partners in groups.values() for p in partners}
    out: StateDict = {}
    for key, value in state.items():
        if key in groups:
            out[key.replace(first, f".{fused}.")] = torch.cat([state[p] for p in groups[key]])
        elif key not in consumed:
            out[key] = value
    return out


# --- Segformer -------------------------------------------------------------------------------

_B = "encoder.stages.{s}.blocks.{j}."  # our block prefix


def _segformer_rules(stage: str, block: str, names: dict[str, str], tail: Rules) -> Rules:
    rules: Rules = [(_B + ours, block + theirs) for ours, theirs in names.items()]
    return [("encoder.stages.{s}.patch_embed.proj", stage + "proj"),
            ("encoder.stages.{s}.patch_embed.norm", stage + "norm")] + rules + tail


HF_SEGFORMER: Rules = [
    ("encoder.stages.{s}.patch_embed.proj", "segformer.encoder.patch_embeddings.{s}.proj"),
    ("encoder.stages.{s}.patch_embed.norm", "segformer.encoder.patch_embeddings.{s}.layer_norm"),
    *[(_B + o, "segformer.encoder.block.{s}.{j}." + t) for o, t in {
        "norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
        "attn.k": "attention.self.key", "attn.v": "attention.self.value", "attn.sr": "attention.self.sr",
        "attn.norm": "attention.self.layer_norm", "attn.proj": "attention.output.dense",
        "mlp.fc1": "mlp.dense1", "mlp.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.dense2"}.items()],
    ("encoder.stages.{s}.norm", "segformer.encoder.layer_norm.{s}"),
    ("decode_head.linear_c.{i}", "decode_head.linear_c.{i}.proj"),
    ("decode_head.fuse", "decode_head.linear_fuse"),
    ("decode_head.bn", "decode_head.batch_norm"),
    ("decode_head.classifier", "decode_head.classifier"),
]

# transformers >= 5 module names (what `model.state_dict()` gives; save_pretrained writes legacy names)
HF5_SEGFORMER: Rules = [
    ("encoder.stages.{s}.patch_embed.proj", "segformer.stages.{s}.patch_embeddings.proj"),
    ("encoder.stages.{s}.patch_embed.norm", "segformer.stages.{s}.patch_embeddings.layer_norm"),
    *[(_B + o, "segformer.stages.{s}.blocks.{j}." + t) for o, t in {
        "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.q": "attention.q_proj",
        "attn.k": "attention.k_proj", "attn.v": "attention.v_proj",
        "attn.sr": "attention.sequence_reduction.sequence_reduction",
        "attn.norm": "attention.sequence_reduction.layer_norm", "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1", "mlp.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.fc2"}.items()],
    ("encoder.stages.{s}.norm", "segformer.stages.{s}.layer_norm"),
    ("decode_head.linear_c.{i}", "decode_head.linear_projections.{i}.proj"),
]

NVLABS_SEGFORMER: Rules = [
    ("encoder.stages.{s}.patch_embed.proj", "backbone.patch_embed{s+1}.proj"),
    ("encoder.stages.{s}.patch_embed.norm", "backbone.patch_embed{s+1}.norm"),
    *[(_B + o, "backbone.block{s+1}.{j}." + t) for o, t in {
        "norm1": "norm1", "norm2": "norm2", "attn.q": "attn.q", "attn.kv": "attn.kv", "attn.sr": "attn.sr",
        "attn.norm": "attn.norm", "attn.proj": "attn.proj", "mlp.fc1": "mlp.fc1",
        "mlp.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.fc2"}.items()],
    ("encoder.stages.{s}.norm", "backbone.norm{s+1}"),
    ("decode_head.linear_c.{i}", "decode_head.linear_c{i+1}.proj"),
    ("decode_head.fuse", "decode_head.linear_fuse.conv"),
    ("decode_head.bn", "decode_head.linear_fuse.bn"),
    ("decode_head.classifier", "decode_head.linear_pred"),
]

MMSEG_SEGFORMER: Rules = [
    ("encoder.stages.{s}.patch_embed.proj", "backbone.layers.{s}.0.projection"),
    ("encoder.stages.{s}.patch_embed.norm", "backbone.layers.{s}.0.norm"),
    *[(_B + o, "backbone.layers.{s}.1.{j}." + t) for o, t in {
        "norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn.attn.in_proj", "attn.proj": "attn.attn.out_proj",
        "attn.sr": "attn.sr", "attn.norm": "attn.norm", "mlp.fc1": "ffn.layers.0", "mlp.dwconv": "ffn.layers.1",
        "mlp.fc2": "ffn.layers.4"}.items()],
    ("encoder.stages.{s}.norm", "backbone.layers.{s}.2"),
    ("decode_head.linear_c.{i}", "decode_head.convs.{i}.conv"),
    ("decode_head.linear_c_bn.{i}", "decode_head.convs.{i}.bn"),
    ("decode_head.fuse", "decode_head.fusion_conv.conv"),
    ("decode_head.bn", "decode_head.fusion_conv.bn"),
    ("decode_head.classifier", "decode_head.conv_seg"),
]

# Parts of published files that our model does not have and never uses.
NVLABS_IGNORED = ("backbone.head.", "decode_head.conv_seg.")  # ImageNet head; BaseDecodeHead's unused conv
MMSEG_IGNORED = ("auxiliary_head.",)

_LINEAR_AS_CONV = re.compile(r"(mlp\.fc[12]|decode_head\.linear_c\.\d+)\.weight$")


def _squeeze_1x1(state: StateDict) -> StateDict:
    """mmseg writes the MixFFN fc layers and head projections as 1x1 convs; we use Linear."""
    return {k: (v.flatten(1) if v.ndim == 4 and _LINEAR_AS_CONV.search(k) else v) for k, v in state.items()}


def _unsqueeze_1x1(state: StateDict) -> StateDict:
    return {k: (v[:, :, None, None] if v.ndim == 2 and _LINEAR_AS_CONV.search(k) else v) for k, v in state.items()}


def _reverse_fuse_blocks(state: StateDict) -> StateDict:
    """mmseg concatenates stage features first-to-last, transformers/NVlabs last-to-first: reorder
    the fuse conv's input-channel blocks (the same permutation both ways)."""
    out = dict(state)
    if "decode_head.fuse.weight" in out:
        w = out["decode_head.fuse.weight"]
        n = sum(1 for k in state if re.fullmatch(r"decode_head\.linear_c\.\d+\.weight", k)) or 4
        out["decode_head.fuse.weight"] = torch.cat(w.chunk(n, dim=1)[::-1], dim=1).contiguous()
    return out


def hf_to_segformer(state: StateDict) -> StateDict:
    """transformers SegformerForSemanticSegmentation (legacy or v5 names) -> ours."""
    return rename(rename(state, HF5_SEGFORMER), HF_SEGFORMER)


def segformer_to_hf(state: StateDict) -> StateDict:
    return rename(state, HF_SEGFORMER, to_ours=False)


def nvlabs_to_segformer(state: StateDict) -> StateDict:
    state = {k: v for k, v in state.items() if not k.startswith(NVLABS_IGNORED)}
    return _split(rename(state, NVLABS_SEGFORMER), "kv", ("k", "v"))


def segformer_to_nvlabs(state: StateDict) -> StateDict:
    return rename(_fuse(state, ("k", "v"), "kv"), NVLABS_SEGFORMER, to_ours=False)


def mmseg_to_segformer(state: StateDict) -> StateDict:
    state = {k.replace("in_proj_weight", "in_proj.weight").replace("in_proj_bias", "in_proj.bias"): v
             for k, v in state.items() if not k.startswith(MMSEG_IGNORED)}
    ours = _split(rename(state, MMSEG_SEGFORMER), "qkv", ("q", "k", "v"))
    return _reverse_fuse_blocks(_squeeze_1x1(ours))


def segformer_to_mmseg(state: StateDict) -> StateDict:
    state = _unsqueeze_1x1(_reverse_fuse_blocks(state))
    theirs = rename(_fuse(state, ("q", "k", "v"), "qkv"), MMSEG_SEGFORMER, to_ours=False)
    return {k.replace("in_proj.weight", "in_proj_weight").replace("in_proj.bias", "in_proj_bias"): v
            for k, v in theirs.items()}


# --- ViT / DeiT ------------------------------------------------------------------------------

def hf_vit_rules(prefix: str) -> Rules:
    """Rules for a transformers ViT/DeiT dir; `prefix` is 'vit' or 'deit'."""
    emb, layer = prefix + ".embeddings.", prefix + ".encoder.layer.{i}."
    return [
        ("cls_token", emb + "cls_token"), ("dist_token", emb + "distillation_token"),
        ("pos_embed", emb + "position_embeddings"), ("patch_embed.proj", emb + "patch_embeddings.projection"),
        *[("blocks.{i}." + o, layer + t) for o, t in {
            "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.q": "attention.attention.query",
            "attn.k": "attention.attention.key", "attn.v": "attention.attention.value",
            "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
            "mlp.fc2": "output.dense"}.items()],
        # transformers >= 5 module names
        *[("blocks.{i}." + o, prefix + ".layers.{i}." + t) for o, t in {
            "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.q": "attention.q_proj",
            "attn.k": "attention.k_proj", "attn.v": "attention.v_proj", "attn.proj": "attention.o_proj",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}.items()],
        ("norm", prefix + ".layernorm"), ("head", "classifier"),
        ("head", "cls_classifier"), ("head_dist", "distillation_classifier"),  # DeiT with teacher
    ]


def hf_to_vit(state: StateDict, prefix: str = "vit") -> StateDict:
    return _fuse(rename(state, hf_vit_rules(prefix)), ("q", "k", "v"), "qkv")


def vit_to_hf(state: StateDict, prefix: str = "vit") -> StateDict:
    """Ours -> transformers legacy names (what save_pretrained writes); first matching rule wins."""
    return rename(_split(state, "qkv", ("q", "k", "v")), hf_vit_rules(prefix), to_ours=False)


# --- Segmenter -------------------------------------------------------------------------------

def segmenter_to_ours(state: StateDict) -> StateDict:
    """rstrudel/segmenter -> ours: the names already agree; the encoder's ImageNet head is dropped."""
    return {k: v for k, v in state.items() if not k.startswith(("encoder.head.", "encoder.head_dist."))}


def ours_to_segmenter(state: StateDict) -> StateDict:
    return dict(state)
