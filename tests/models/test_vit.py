"""ViT / DeiT vs transformers, timm layout, position-embedding resize."""

import pytest
import torch

from edgemerge.models.tokens import TokenState
from edgemerge.models.registry import build_model
from edgemerge.models.checkpoint import load_checkpoint

transformers = pytest.importorskip("transformers")

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def hf_config(cls):
    return cls(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
               image_size=224, patch_size=16, num_labels=10)


@pytest.mark.parametrize("name, cfg_cls, model_cls", [
    ("vit-t", "ViTConfig", "ViTForImageClassification"),
    ("deit-t", "DeiTConfig", "DeiTForImageClassification"),
    ("deit-t", "DeiTConfig", "DeiTForImageClassificationWithTeacher"),
])
def test_hf_dir_matches_transformers(tmp_path, name, cfg_cls, model_cls):
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(hf_config(getattr(transformers, cfg_cls))).eval()
    with torch.no_grad():  # HF inits LayerNorm to 1/0 and tokens to 0: make them matter
        for n, p in hf.named_parameters():
            if "layernorm" in n or "token" in n or "position" in n:
                p.add_(0.2 * torch.randn_like(p))
        want = hf(pixel_values=X).logits
    hf.save_pretrained(tmp_path)
    model, info = load_checkpoint(name, tmp_path)
    assert info.format == "hf" and info.num_classes == 10
    assert model.blocks[0].norm1.eps == hf.config.layer_norm_eps
    with torch.no_grad():
        got = model(X)
    assert (got - want).abs().max() <= 1e-4


def test_timm_layout_round_trip(tmp_path):
    model = build_model("vit-t", num_classes=7)
    torch.save({"model": model.state_dict()}, tmp_path / "timm.pth")
    loaded, info = load_checkpoint("vit-t", tmp_path / "timm.pth")
    assert info.format == "timm" and info.num_classes == 7
    with torch.no_grad():
        assert torch.equal(loaded(X[:1]), model(X[:1]))


def test_pos_embed_resized_at_load(tmp_path):
    model = build_model("deit-t", num_classes=4)
    torch.save(model.state_dict(), tmp_path / "d.pth")
    loaded, _ = load_checkpoint("deit-t", tmp_path / "d.pth", resolution=(160, 128))
    assert loaded.pos_embed.shape == (1, 1 + 10 * 8, 192)
    assert torch.equal(loaded.pos_embed[:, 0], model.pos_embed[:, 0])
    assert loaded(torch.randn(1, 3, 160, 128)).shape == (1, 4)


def test_forward_features_and_hooks():
    model = build_model("vit-t")
    assert model.num_prefix_tokens == 1
    tokens, state = model.forward_features(X[:1])
    assert tokens.shape == (1, 197, 192) and state.source is None and state.size is None
    out, keys = model.blocks[0].attn(torch.randn(1, 197, 192))
    assert out.shape == (1, 197, 192) and keys.shape == (1, 197, 64)


def test_token_state_attn_bias():
    size = torch.tensor([[[1.0], [2.0], [4.0]]])
    assert TokenState(size=size).attn_bias() is None
    bias = TokenState(size=size, proportional=True).attn_bias()
    assert bias.shape == (1, 1, 1, 3) and torch.allclose(bias.flatten(), size.flatten().log())
