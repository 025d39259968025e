"""Segmenter: output shapes, Segmenter-layout round trip, unmerge by TokenState.source."""

import pytest
import torch

from edgemerge.models.registry import build_model
from edgemerge.models.checkpoint import load_checkpoint
from edgemerge.models.convert import ours_to_segmenter

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("decoder", ["linear", "mask"])
def test_output_shape(decoder):
    model = build_model("segmenter-vit-t", num_classes=5, resolution=(64, 96), decoder=decoder)
    with torch.no_grad():
        assert model(X).shape == (2, 5, 64, 96)


@pytest.mark.parametrize("decoder", ["linear", "mask"])
def test_segmenter_layout_round_trip(tmp_path, decoder):
    model = build_model("segmenter-vit-t", num_classes=6, resolution=(64, 96), decoder=decoder)
    sd = ours_to_segmenter(model.state_dict())
    sd["encoder.head.weight"], sd["encoder.head.bias"] = torch.zeros(1000, 192), torch.zeros(1000)
    torch.save({"model": sd, "epoch": 3}, tmp_path / "checkpoint.pth")
    loaded, info = load_checkpoint("segmenter-vit-t", tmp_path / "checkpoint.pth", resolution=(64, 96))
    assert info.format == "segmenter" and info.num_classes == 6
    assert loaded.config.extra["decoder"] == decoder
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def _with_permuting_block(model, perm):
    """Make block 3 reorder the patch tokens and record it in state.source, like a merge would."""
    block = model.encoder.blocks[3]
    inverse = torch.argsort(perm)

    def reduce_tokens(x, state, keys, normed):
        order = torch.cat([torch.zeros(1, dtype=torch.long), perm + 1])  # CLS stays at index 0
        source = torch.cat([torch.zeros(1, dtype=torch.long), inverse + 1]).expand(x.shape[0], -1)
        return x[:, order], type(state)(size=state.size, source=source)

    block.reduce_tokens = reduce_tokens


@pytest.mark.parametrize("decoder", ["linear", "mask"])
def test_unmerge_by_source(decoder):
    model = build_model("segmenter-vit-t", num_classes=5, resolution=(64, 96), decoder=decoder)
    with torch.no_grad():
        plain = model(X)
        n = (64 // 16) * (96 // 16)
        _with_permuting_block(model, torch.arange(n))  # identity source
        assert torch.allclose(model(X), plain, atol=1e-5)
        _with_permuting_block(model, torch.randperm(n, generator=torch.Generator().manual_seed(0)))
        assert torch.allclose(model(X), plain, atol=1e-4)


def test_merged_tokens_unmerge_to_copies():
    """With 2 of 4 patch tokens merged into one, both original patches get that token's scores."""
    model = build_model("segmenter-vit-t", num_classes=3, resolution=(32, 32), decoder="linear")
    block = model.encoder.blocks[-1]

    def reduce_tokens(x, state, keys, normed):  # tokens: CLS, p0, p1, p2, p3 -> CLS, (p0+p1)/2, p2, p3
        merged = torch.cat([x[:, :1], (x[:, 1:2] + x[:, 2:3]) / 2, x[:, 3:]], dim=1)
        source = torch.tensor([[0, 1, 1, 2, 3]]).expand(x.shape[0], -1)
        return merged, type(state)(source=source)

    block.reduce_tokens = reduce_tokens
    tokens, state = model.encoder.forward_features(torch.randn(1, 3, 32, 32))
    assert tokens.shape[1] == 4 and state.source.shape == (1, 5)
    out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 3, 32, 32)
