"""Load published checkpoints into zoo models; the format is detected, never asked for.

Accepted (local files only):
  * Hugging Face model dirs (config.json + model.safetensors | pytorch_model.bin):
    SegformerForSemanticSegmentation, ViTForImageClassification, DeiTForImageClassification(+WithTeacher)
  * mmsegmentation MiT/Segformer `.pth`, NVlabs SegFormer `.pth`
  * timm ViT/DeiT state dicts (`.pth`/`.safetensors`, possibly under `model`)
  * DTEM (movinghoon/DTEM) `.pth.tar`: a DDP timm ViT under `state_dict` whose `attn.qkv` holds
    `qkv_layer` [3C, C], `metric_layer` [F, C] and their fused copy [3C+F, C]
  * rstrudel/segmenter `.pth` (under `model`, keys `encoder.*`, `decoder.*`)
  * our own state dicts (`model.state_dict()` saved with torch.save)

The checkpoint decides the class count and format-specific numerics (LayerNorm eps, head
variant); `name` decides the architecture and a checkpoint of another one is refused with the
fields or keys that disagree. Every failure is an EdgemergeError with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from edgemerge.contracts.errors import EdgemergeError, reraise_out_of_memory
from edgemerge.contracts.files import sha256_file
from edgemerge.models import convert
from edgemerge.models.registry import ModelConfig, build_from_config, configure
from edgemerge.models.vit import resize_pos_embed

StateDict = dict[str, Tensor]

# Per-format LayerNorm eps of the Segformer encoder: (patch-embed/sr norms, block/stage norms).
SEGFORMER_EPS = {"hf": (1e-5, 1e-5), "nvlabs": (1e-5, 1e-6), "mmseg": (1e-6, 1e-6)}


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    format: str  # 'hf' | 'mmseg' | 'nvlabs' | 'timm' | 'dtem' | 'segmenter' | 'edgemerge'
    sha256: str
    num_classes: int
    # tensors a merge method reads but the architecture does not have (DTEM's metric projections)
    merge_state: dict[str, Tensor] = dataclasses.field(default_factory=dict, repr=False, compare=False)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


EXTRA_KEY = "edgemerge_config_extra"  # beside `state_dict` in files edgemerge writes (train-metric)


def _read_weights(path: Path) -> StateDict:
    """Tensors of a .safetensors / .pth / .bin file, unwrapped from training-state containers."""
    return _read_weights_and_extra(path)[0]


def check_checkpoint_path(path: str | Path) -> Path:
    """The checkpoint path exists and is a directory (Hugging Face) or a regular file (a FIFO or a
    device such as /dev/zero would block or never end the read) whose first bytes are safetensors',
    a zip's or a pickle's. Reads 16 bytes at most."""
    from edgemerge.contracts.images import require_regular_file

    path = require_regular_file(path, "checkpoint", allow_dir=True)
    if not path.is_dir():
        try:
            fmt = sniff_format(path)
        except OSError as e:
            raise EdgemergeError(f"cannot read checkpoint {path}: {e.strerror}") from None
        if fmt == "unknown":
            raise EdgemergeError(f"not a readable checkpoint: {path} is neither a safetensors file nor a torch.save "
                                 "file (zip or pickle)")
    return path


def sniff_format(path: Path) -> str:
    """'safetensors', 'zip' (torch.save since 1.6), 'pickle' (older torch.save) or 'unknown', from the
    first bytes: the file's suffix says nothing reliable (a safetensors file renamed .pth, ...)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= path.stat().st_size - 8:
            return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:  # pickle protocol 2..5
        return "pickle"
    return "unknown"


def _pickled_object_hint(e: Exception) -> str | None:
    """A one-line hint when weights_only loading met a pickled class (a whole model saved with
    torch.save(model)): the class it names, and what to save instead."""
    text = str(e)
    if "Weights only load failed" not in text and "Unsupported global" not in text:
        return None
    m = re.search(r"GLOBAL ([\w.]+)", text)
    what = f" ({m.group(1)})" if m else ""
    return (f"holds pickled Python objects{what}, not just tensors: a whole model saved with torch.save(model)? "
            "edgemerge does not unpickle code; save `model.state_dict()` instead "
            "(torch.save(model.state_dict(), path))")


def _read_weights_and_extra(path: Path) -> tuple[StateDict, dict[str, Any]]:
    """The tensors, and the model-config details edgemerge saved with them (eps, head variant, ...):
    our own layout has no format to infer them from, so a file we write carries them.

    The format is sniffed from the content, not the suffix."""
    check_checkpoint_path(path)  # a regular file of a known format
    kind = sniff_format(path)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            with open(path, "rb") as f:  # a file object: torch.load decides nothing by the name either
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickles we refuse, ...
        reraise_out_of_memory(e)
        hint = _pickled_object_hint(e)
        if hint:
            raise EdgemergeError(f"not a readable checkpoint: {path} {hint}") from None
        raise EdgemergeError(_one_line(f"not a readable checkpoint: {path} ({type(e).__name__}: {e})"[:300]))
    extra = obj.get(EXTRA_KEY) if isinstance(obj, dict) and isinstance(obj.get(EXTRA_KEY), dict) else {}
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if isinstance(obj, nn.Module):  # cannot happen with weights_only, but say it plainly if it does
        raise EdgemergeError(f"not a readable checkpoint: {path} holds a whole {type(obj).__name__} model: save "
                             "`model.state_dict()` instead")
    if not isinstance(obj, dict):
        raise EdgemergeError(f"not a readable checkpoint: {path} holds a {type(obj).__name__}, not a state dict")
    state = {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise EdgemergeError(f"not a readable checkpoint: {path} holds no tensors")
    return state, extra


def save_checkpoint(model: nn.Module, path: str | Path, extra_tensors: dict[str, Tensor] | None = None) -> None:
    """Save `model` (and e.g. learned merge metrics) so that `load_checkpoint` rebuilds it exactly,
    the format-specific numerics (LayerNorm eps, head variant) included. Written atomically, mode
    0644, by the package's one atomic writer."""
    from edgemerge.contracts.files import atomic_write_bytes

    state = dict(model.state_dict())
    state.update(extra_tensors or {})
    atomic_write_bytes(path, lambda f: torch.save({"state_dict": state, EXTRA_KEY: dict(model.config.extra)}, f))


def _read_hf_dir(path: Path) -> tuple[StateDict, dict[str, Any], Path]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise EdgemergeError(f"{path} is a directory but not a Hugging Face model dir (no config.json)")
    try:
        hf_cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise EdgemergeError(_one_line(f"not a readable checkpoint: {cfg_file} ({e})"))
    for fname in ("model.safetensors", "pytorch_model.bin"):
        if (path / fname).exists():
            return _read_weights(path / fname), hf_cfg, path / fname
    raise EdgemergeError(f"Hugging Face dir {path} has no model.safetensors or pytorch_model.bin")


def _detect(state: StateDict) -> tuple[str, str]:
    """(format, family) of a single-file state dict."""
    keys = state.keys()
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("backbone.layers."):
        return "mmseg", "segformer"
    if has("backbone.patch_embed1.") or has("backbone.block1."):
        return "nvlabs", "segformer"
    if has("encoder.stages."):
        return "edgemerge", "segformer"
    if has("segformer."):
        return "hf", "segformer"
    if has("encoder.") and has("decoder."):
        return "segmenter", "segmenter"
    if any(DTEM_QKV.match(k) for k in keys) or any(
            re.match(r"blocks\.\d+\.attn\.qkv\.weight$", k) and state[k].ndim == 2
            and state[k].shape[0] > 3 * state[k].shape[1] for k in keys):
        return "dtem", "vit"
    if "cls_token" in keys or has("patch_embed.proj.") or has("blocks."):
        return "timm", "vit"
    for prefix in ("vit", "deit"):
        if has(prefix + "."):
            return "hf", prefix
    first = ", ".join(list(keys)[:3])
    raise EdgemergeError(f"unrecognised checkpoint layout (first keys: {first})")


def _same_family(a: str, b: str) -> bool:
    vit_like = {"vit", "deit"}
    return a == b or (a in vit_like and b in vit_like)


def _mismatch(field: str, theirs: Any, name: str, ours: Any) -> EdgemergeError:
    fmt = lambda v: "[" + ",".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
    return EdgemergeError(f"checkpoint {field} {fmt(theirs)} != {name}'s {fmt(ours)}")


def _check(field: str, theirs: Any, ours: Any, name: str) -> None:
    if theirs is None:
        return
    t = list(theirs) if isinstance(theirs, (list, tuple)) else theirs
    o = list(ours) if isinstance(ours, (list, tuple)) else ours
    if t != o:
        raise _mismatch(field, t, name, o)


# --- per-family conversion: returns (our state dict, class count, config.extra overrides) -------

def _segformer(state: StateDict, fmt: str, hf_cfg: dict | None, cfg: ModelConfig) -> tuple[StateDict, int, dict]:
    to_ours = {"hf": convert.hf_to_segformer, "mmseg": convert.mmseg_to_segformer,
               "nvlabs": convert.nvlabs_to_segformer, "edgemerge": dict}[fmt]
    ours = to_ours(state)
    if hf_cfg is not None:
        for field, mine in (("depths", cfg.depths), ("hidden_sizes", cfg.widths),
                            ("num_attention_heads", cfg.heads), ("sr_ratios", cfg.extra["sr_ratios"])):
            _check(field, hf_cfg.get(field), mine, cfg.name)
        _check("mlp_ratios", hf_cfg.get("mlp_ratios"), [cfg.extra["mlp_ratio"]] * 4, cfg.name)
    # what the weights themselves say (also catches a b0 .pth offered as b2)
    depths = [len({m.group(1) for k in ours if (m := re.match(rf"encoder\.stages\.{s}\.blocks\.(\d+)\.", k))})
              for s in range(4)]
    widths = [ours[f"encoder.stages.{s}.patch_embed.proj.weight"].shape[0]
              for s in range(4) if f"encoder.stages.{s}.patch_embed.proj.weight" in ours]
    if len(widths) == 4:
        _check("hidden sizes", widths, cfg.widths, cfg.name)
    if any(depths):
        _check("depths", depths, cfg.depths, cfg.name)
    extra: dict[str, Any] = {}
    if fmt in SEGFORMER_EPS:
        extra["embed_eps"], extra["block_eps"] = SEGFORMER_EPS[fmt]
    extra["head_stage_norm"] = "decode_head.linear_c_bn.0.weight" in ours
    extra["head_stage_bias"] = "decode_head.linear_c.0.bias" in ours
    if "decode_head.fuse.weight" in ours:
        extra["decoder_width"] = ours["decode_head.fuse.weight"].shape[0]
    classes = ours["decode_head.classifier.weight"].shape[0] if "decode_head.classifier.weight" in ours else None
    return ours, _classes(classes, hf_cfg), extra


def _vit(state: StateDict, fmt: str, hf_cfg: dict | None, cfg: ModelConfig) -> tuple[StateDict, int, dict]:
    extra: dict[str, Any] = {}
    if fmt == "hf":
        prefix = "deit" if any(k.startswith("deit.") for k in state) else "vit"
        ours = convert.hf_to_vit(state, prefix)
        assert hf_cfg is not None
        for field, mine in (("hidden_size", cfg.widths[0]), ("num_hidden_layers", cfg.depths[0]),
                            ("num_attention_heads", cfg.heads[0]), ("patch_size", cfg.patch_size),
                            ("intermediate_size", int(cfg.widths[0] * cfg.extra["mlp_ratio"]))):
            _check(field, hf_cfg.get(field), mine, cfg.name)
        if hf_cfg.get("hidden_act", "gelu") != "gelu":
            raise EdgemergeError(f"checkpoint hidden_act {hf_cfg['hidden_act']!r} != {cfg.name}'s 'gelu'")
        extra["eps"] = float(hf_cfg.get("layer_norm_eps", 1e-12))
        extra["qkv_bias"] = bool(hf_cfg.get("qkv_bias", True))
    else:
        ours = _from_dtem(state, cfg) if fmt == "dtem" else dict(state)
    _vit_dims(ours, "", cfg)
    extra["distilled"] = "dist_token" in ours
    extra["dist_head"] = "head_dist.weight" in ours
    classes = ours["head.weight"].shape[0] if "head.weight" in ours else None
    return ours, _classes(classes, hf_cfg), extra


# DTEM's attn.qkv: qkv_layer.* (the original [3C, C]), metric_layer.* ([F, C]) and their fused
# copy attn.qkv.* ([3C+F, C], refreshed from the two by DTEM whenever the model enters eval mode)
DTEM_QKV = re.compile(r"blocks\.(\d+)\.attn\.qkv\.(qkv_layer|metric_layer)\.(weight|bias)$")


def _from_dtem(state: StateDict, cfg: ModelConfig) -> StateDict:
    """DTEM's keys -> ours: qkv_layer -> attn.qkv, metric_layer -> dtem_metric (MERGE_KEY).

    The two parts are what DTEM trains and what its eval() copies into the fused weight, so they
    win when the copy is stale; a file with only the fused weight is split after the 3C rows.
    """
    C = cfg.widths[0]
    ours: StateDict = {}
    stale: list[str] = []
    for key, value in state.items():
        if m := DTEM_QKV.match(key):
            i, part, kind = m.groups()
            name = f"blocks.{i}.attn.qkv.{kind}" if part == "qkv_layer" else f"blocks.{i}{MERGE_KEY}{kind}"
            ours[name] = value
        elif not re.match(r"blocks\.\d+\.attn\.qkv\.(weight|bias)$", key):
            ours[key] = value
    for key, fused in state.items():
        m = re.match(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if not m:
            continue
        i, kind = m.groups()
        qkv_key, metric_key = f"blocks.{i}.attn.qkv.{kind}", f"blocks.{i}{MERGE_KEY}{kind}"
        if qkv_key not in ours:  # only the fused copy: split it after the 3C rows of q, k, v
            ours[qkv_key] = fused[: 3 * C]
            if fused.shape[0] > 3 * C:
                ours[metric_key] = fused[3 * C:]
            continue
        split = torch.cat([ours[qkv_key], ours[metric_key]]) if metric_key in ours else ours[qkv_key]
        if split.shape != fused.shape or not torch.allclose(split.float(), fused.float(), rtol=1e-5, atol=1e-6):
            stale.append(f"blocks.{i}.attn.qkv.{kind}")
    if stale:  # saved in training mode: DTEM's own eval() would overwrite the copy from the parts
        warnings.warn(f"DTEM checkpoint: fused {', '.join(stale[:2])}{' ...' if len(stale) > 2 else ''} differ(s) "
                      f"from qkv_layer + metric_layer (saved in training mode?); using the parts, as DTEM's eval does")
    return ours


def _vit_dims(ours: StateDict, prefix: str, cfg: ModelConfig) -> None:
    depth = len({m.group(1) for k in ours if (m := re.match(rf"{re.escape(prefix)}blocks\.(\d+)\.", k))})
    if depth:
        _check("depth", depth, cfg.depths[0], cfg.name)
    if prefix + "patch_embed.proj.weight" in ours:
        w = ours[prefix + "patch_embed.proj.weight"]
        _check("width", w.shape[0], cfg.widths[0], cfg.name)
        _check("patch size", w.shape[-1], cfg.patch_size, cfg.name)


def _segmenter(state: StateDict, fmt: str, hf_cfg: dict | None, cfg: ModelConfig) -> tuple[StateDict, int, dict]:
    ours = convert.segmenter_to_ours(state)
    _vit_dims(ours, "encoder.", cfg)
    kind = "mask" if "decoder.cls_emb" in ours else "linear" if "decoder.head.weight" in ours else None
    classes = (ours["decoder.cls_emb"].shape[1] if kind == "mask"
               else ours["decoder.head.weight"].shape[0] if kind == "linear" else None)
    extra: dict[str, Any] = {"distilled": "encoder.dist_token" in ours}
    if kind:
        extra["decoder"] = kind
        if kind == "mask":
            extra["decoder_layers"] = len({m.group(1) for k in ours
                                           if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))})
    return ours, _classes(classes, None), extra


def _classes(from_weights: int | None, hf_cfg: dict | None) -> int:
    if from_weights is not None:
        return int(from_weights)
    if hf_cfg is not None:
        if "id2label" in hf_cfg:
            return len(hf_cfg["id2label"])
        if "num_labels" in hf_cfg:
            return int(hf_cfg["num_labels"])
    raise EdgemergeError("checkpoint has no classifier weights, so its class count is unknown")


MIN_CLASSES = 2


def check_num_classes(n: int, what: str) -> None:
    """A segmentation or classification head needs two classes at least: with one every argmax is
    0 (nothing to compare), with none there is no output at all."""
    if n < MIN_CLASSES:
        raise EdgemergeError(f"{what} {n} class{'es' if n != 1 else ''}: a segmentation or classification head "
                             f"needs at least {MIN_CLASSES}")


_CONVERTERS = {"segformer": _segformer, "vit": _vit, "deit": _vit, "segmenter": _segmenter}


def register_converter(family: str, convert: Callable[[StateDict, str, dict | None, ModelConfig],
                                                      tuple[StateDict, int, dict]]) -> None:
    """How a new family's checkpoints become ours: (state, format, HF config, our config) ->
    (state dict, class count, extra config); docs/extending.md."""
    _CONVERTERS[family] = convert


MERGE_KEY = ".dtem_metric."  # DTEM: blocks.{i}.dtem_metric.weight/bias


def _fit(model: nn.Module, state: StateDict, name: str) -> StateDict:
    """Strict load with one-line reasons; resizes position embeddings to the model's grid.

    Returns the merge-method tensors (DTEM metric projections) set aside from `state`.
    """
    merge_state = {k: state.pop(k) for k in [k for k in state if MERGE_KEY in k]}
    for key, t in merge_state.items():
        if not t.is_floating_point():
            raise EdgemergeError(f"checkpoint tensor {key} is {str(t.dtype).removeprefix('torch.')}: edgemerge needs "
                                 "float weights")
        if not bool(torch.isfinite(t).all()):
            raise EdgemergeError(f"checkpoint tensor {key} holds NaN or Inf values: the weights are broken")
    want = model.state_dict()
    for key in [k for k in want if k.endswith("pos_embed") and k in state]:
        if state[key].shape != want[key].shape:
            p = model.encoder.num_prefix_tokens if key.startswith("encoder.") else model.num_prefix_tokens
            grid = (model.encoder if key.startswith("encoder.") else model).grid_size
            state[key] = resize_pos_embed(state[key], grid, p)
    for key in want:  # older BatchNorm checkpoints lack the counter; it changes nothing in eval
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = want[key]
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}"
                         + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""))
        raise EdgemergeError(f"checkpoint does not fit {name}: " + "; ".join(parts))
    for key, value in want.items():
        if state[key].shape != value.shape:
            raise EdgemergeError(f"checkpoint does not fit {name}: {key} has shape {list(state[key].shape)}, "
                                 f"the model needs {list(value.shape)}")
    for key, value in want.items():
        got = state[key]
        if value.is_floating_point() and not got.is_floating_point():
            raise EdgemergeError(f"checkpoint does not fit {name}: {key} is {str(got.dtype).removeprefix('torch.')}, "
                                 f"the model's parameter is {str(value.dtype).removeprefix('torch.')} (a quantized "
                                 "checkpoint? edgemerge needs float weights)")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            what = "NaN" if bool(torch.isnan(got).any()) else "Inf"
            raise EdgemergeError(f"checkpoint tensor {key} holds {what} values: the weights are broken "
                                 "(a diverged training run?)")
    model.load_state_dict(state, strict=True)
    return merge_state


def load_checkpoint(name: str, path: str | Path, *, num_classes: int | None = None,
                    resolution: tuple[int, int] | None = None,
                    decoder: str | None = None) -> tuple[nn.Module, CheckpointInfo]:
    """Build zoo model `name` with the checkpoint's weights (and class count), in eval mode."""
    cfg = configure(name, resolution=resolution, decoder=decoder)
    path = check_checkpoint_path(path)
    if num_classes is not None:
        check_num_classes(num_classes, "num_classes asks for")
    hf_cfg: dict | None = None
    saved_extra: dict[str, Any] = {}
    if path.is_dir():
        state, hf_cfg, weights_file = _read_hf_dir(path)
        fmt, family = "hf", str(hf_cfg.get("model_type", ""))
        if family not in _CONVERTERS:
            arch = ",".join(hf_cfg.get("architectures") or [family or "?"])
            raise EdgemergeError(f"unsupported Hugging Face architecture {arch} in {path}")
    else:
        (state, saved_extra), weights_file = _read_weights_and_extra(path), path
        fmt, family = _detect(state)
    if not _same_family(family, cfg.family):
        raise EdgemergeError(f"{path} holds a {family} checkpoint ({fmt} layout), not a {name} one")
    ours, classes, extra = _CONVERTERS[cfg.family](state, fmt, hf_cfg, cfg)
    if decoder is not None and extra.get("decoder", decoder) != decoder:
        raise EdgemergeError(f"checkpoint has a {extra['decoder']} decoder, but decoder={decoder!r} was asked")
    check_num_classes(classes, f"the head of checkpoint {path} has")
    if num_classes is not None and num_classes != classes:
        raise EdgemergeError(f"checkpoint has {classes} classes, but num_classes={num_classes} was asked")
    cfg = dataclasses.replace(cfg, num_classes=classes, extra={**cfg.extra, **extra, **saved_extra})
    model = build_from_config(cfg)
    merge_state = _fit(model, ours, name)
    info = CheckpointInfo(path=path, format=fmt, sha256=sha256_file(weights_file), num_classes=classes,
                          merge_state=merge_state)
    return model.eval(), info
