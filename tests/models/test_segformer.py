"""Segformer vs transformers, and the mmseg / NVlabs / transformers-5 key layouts."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from edgemerge.models.registry import build_model
from edgemerge.models.checkpoint import load_checkpoint
from edgemerge.models import convert
from edgemerge.models.registry import get_config

transformers = pytest.importorskip("transformers")

SIZES = {"segformer-b0": ((2, 2, 2, 2), [32, 64, 160, 256], 256), "segformer-b2": ((3, 4, 6, 3), [64, 128, 320, 512], 768)}


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial norms and BN statistics, so a wrong eps or a dropped BN shows up."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
            m.weight.data = 1 + 0.2 * torch.randn(m.weight.shape, generator=g)
            m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=g)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def set_eps(model: torch.nn.Module, eps: float) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = eps


@pytest.fixture(scope="module", params=list(SIZES))
def hf_dir(request, tmp_path_factory):
    name = request.param
    depths, widths, dec = SIZES[name]
    torch.manual_seed(0)
    cfg = transformers.SegformerConfig(depths=list(depths), hidden_sizes=widths, decoder_hidden_size=dec, num_labels=11)
    hf = transformers.SegformerForSemanticSegmentation(cfg).eval()
    randomize(hf)
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = hf(pixel_values=x).logits
    return name, path, hf, x, logits


def test_hf_dir_matches_transformers(hf_dir):
    name, path, _, x, want = hf_dir
    model, info = load_checkpoint(name, path)
    assert info.format == "hf" and info.num_classes == 11 and len(info.sha256) == 64
    with torch.no_grad():
        got = model(x)
    assert got.shape == want.shape == (2, 11, 16, 24)
    assert (got - want).abs().max() <= 1e-4


def test_hf5_internal_names(hf_dir, tmp_path):
    name, path, hf, x, want = hf_dir
    shutil.copy(path / "config.json", tmp_path / "config.json")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
    assert any(".q_proj." in k for k in hf.state_dict())
    model, _ = load_checkpoint(name, tmp_path)
    with torch.no_grad():
        assert (model(x) - want).abs().max() <= 1e-4


@pytest.mark.parametrize("fmt, eps", [("mmseg", (1e-6, 1e-6)), ("nvlabs", (1e-5, 1e-6))])
def test_pth_layouts(hf_dir, tmp_path, fmt, eps):
    name, path, _, x, want = hf_dir
    ours, _ = load_checkpoint(name, path)
    theirs = getattr(convert, f"segformer_to_{fmt}")(ours.state_dict())
    file = tmp_path / f"{fmt}.pth"
    torch.save({"meta": {"x": 1}, "state_dict": theirs} if fmt == "mmseg" else theirs, file)
    model, info = load_checkpoint(name, file)
    assert info.format == fmt
    assert model.encoder.stages[0].patch_embed.norm.eps == eps[0]
    assert model.encoder.stages[0].blocks[0].norm1.eps == eps[1]
    set_eps(model, 1e-5)  # transformers' eps: then the weights alone decide, and must agree
    with torch.no_grad():
        assert (model(x) - want).abs().max() <= 1e-4


def test_mmseg_head_with_stage_norm_round_trip(tmp_path):
    """mmseg's SegformerHead has conv+BN+ReLU per stage and concatenates first-to-last."""
    import dataclasses

    from edgemerge.models.registry import build_from_config

    cfg = get_config("segformer-b0")
    cfg = dataclasses.replace(cfg, num_classes=5, extra={**cfg.extra, "head_stage_norm": True, "head_stage_bias": False,
                                                        "embed_eps": 1e-6, "block_eps": 1e-6})
    torch.manual_seed(0)
    model = build_from_config(cfg)
    randomize(model)
    sd = convert.segformer_to_mmseg(model.state_dict())
    assert sd["decode_head.convs.0.conv.weight"].ndim == 4 and "decode_head.convs.0.bn.running_var" in sd
    assert "backbone.layers.0.1.0.attn.attn.in_proj_weight" in sd
    torch.save({"state_dict": sd}, tmp_path / "m.pth")
    loaded, info = load_checkpoint("segformer-b0", tmp_path / "m.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_mapping_round_trips():
    sd = build_model("segformer-b0", num_classes=3).state_dict()
    for fmt in ("hf", "mmseg", "nvlabs"):
        back = getattr(convert, f"{fmt}_to_segformer")(getattr(convert, f"segformer_to_{fmt}")(sd))
        assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_hook_methods_are_identities():
    attn = build_model("segformer-b0").encoder.stages[0].blocks[0].attn
    x = torch.randn(1, 16, 32)
    q, restore = attn.reduce_queries(x, (4, 4))
    kv, bias = attn.reduce_kv(x, (4, 4))
    assert q is x and restore(x) is x and kv is x and bias is None
    assert attn.num_heads == 1 and attn.sr_ratio == 8


def test_config_json_decides_details(tmp_path, hf_dir):
    name, path, *_ = hf_dir
    shutil.copytree(path, tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["id2label"] = {str(i): f"c{i}" for i in range(11)}
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    model, info = load_checkpoint(name, tmp_path / "c", resolution=(128, 128))
    assert info.num_classes == 11 and model.config.resolution == (128, 128)


# --- the folded decode head (the deployed form) ----------------------------------------------------

@pytest.mark.parametrize("name,res", [("segformer-b0", (96, 160)), ("segformer-b2", (64, 64))])
def test_folded_head_computes_the_same_logits(name, res):
    """Projections, fuse conv and BN folded into one product per stage before upsampling: the
    same logits up to rounding, with the state dict untouched."""
    torch.manual_seed(0)
    model = build_model(name, resolution=res)
    randomize(model)
    keys = set(model.state_dict())
    x = torch.randn(2, 3, *res)
    with torch.no_grad():
        want = model(x)
        assert model.fold_decoder()
        got = model(x)
    assert set(model.state_dict()) == keys  # checkpoints are written and read as before
    assert (got - want).abs().max() <= 1e-5 * (want.max() - want.min())


def test_fold_is_refused_with_stage_norm_and_changes_nothing():
    """mmseg's per-stage BN + ReLU is not linear: nothing to fold."""
    import dataclasses

    from edgemerge.models.registry import build_from_config

    cfg = get_config("segformer-b0")
    model = build_from_config(dataclasses.replace(cfg, extra={**cfg.extra, "head_stage_norm": True}))
    randomize(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        assert not model.fold_decoder()
        assert torch.equal(model(x), want)


def test_folded_head_removes_the_fuse_conv_flops():
    """b0 at 384x512: the fuse conv over 4 x 256 channels at 1/4 resolution is 6.4 GFLOPs; the
    folded head upsamples stages 3-4 with MatMuls, which count (0.29 GFLOPs): net more than 5.5."""
    from edgemerge.merge.flops import count_gflops

    with torch.device("meta"):
        plain = build_model("segformer-b0", resolution=(384, 512))
        folded = build_model("segformer-b0", resolution=(384, 512))
    folded.fold_decoder()
    assert count_gflops(plain, (384, 512)) - count_gflops(folded, (384, 512)) > 5.5


def test_training_mode_uses_the_unfolded_head():
    """BN folds only with its running statistics: in training the head runs as built."""
    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=(64, 64))
    model.fold_decoder()
    model.train()
    x = torch.randn(2, 3, 64, 64)
    model.decode_head.folded_weight_0.fill_(float("nan"))  # would poison a folded forward
    assert torch.isfinite(model(x)).all()


def _other_weights(seed: int) -> dict:
    torch.manual_seed(seed)
    other = build_model("segformer-b0", resolution=(64, 64))
    randomize(other)
    return other.state_dict()


@pytest.mark.parametrize("where", ["model", "head"])
def test_weights_loaded_after_fold_are_the_ones_run(where):
    """load_state_dict after fold(), on the model or on the head itself: the folded head runs the
    loaded weights (it is folded again), as an unfolded model with those weights does."""
    state = _other_weights(1)
    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=(64, 64))
    randomize(model)
    assert model.fold_decoder()
    if where == "model":
        model.load_state_dict(state)
    else:
        model.decode_head.load_state_dict({k[len("decode_head."):]: v for k, v in state.items()
                                           if k.startswith("decode_head.")})
        model.encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    unfolded = build_model("segformer-b0", resolution=(64, 64))
    unfolded.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = unfolded.eval()(x), model.eval()(x)
    assert model.decode_head.folded
    assert (got - want).abs().max() <= 1e-5 * (want.max() - want.min())


def test_training_after_fold_is_run_after_eval():
    """Weights changed in training mode (an optimizer step, BN statistics updated): back in eval
    the folded head runs them, not the weights it was folded from."""
    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=(64, 64))
    randomize(model)
    model.fold_decoder()
    model.train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)  # BN running statistics move
        for p in model.decode_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    unfolded = build_model("segformer-b0", resolution=(64, 64))
    unfolded.load_state_dict(model.state_dict())
    with torch.no_grad():
        want, got = unfolded.eval()(x), model(x)
    assert (got - want).abs().max() <= 1e-5 * (want.max() - want.min())


def test_eval_without_training_keeps_the_fold():
    """model.eval() on a folded model that never trained since does not fold again (an fp16 copy
    keeps the buffers folded in fp32, as exported)."""
    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=(64, 64))
    model.fold_decoder()
    marker = model.decode_head.folded_weight_0
    model.eval()
    assert model.decode_head.folded_weight_0 is marker
    model.train().eval()  # folded again, once
    marker = model.decode_head.folded_weight_0
    model.eval()
    assert model.decode_head.folded_weight_0 is marker


def test_convolutions_meet_channels_last_tokens():
    """Tokens [B, H*W, C] reach every convolution as Reshape to [B, H, W, C] + Transpose(0, 3, 1, 2)
    and leave as Transpose(0, 2, 3, 1): ONNX Runtime's CPU provider folds that pair into its NCHWc
    reorders, where the transpose(1, 2) + reshape spelling costs a full Transpose of the 4C-wide
    MixFFN activations each way (b0 384x512, one thread: 5.7% of the unmerged model,
    benchmarks/README.md). Same values either way (test_hf_dir_matches_transformers)."""
    from edgemerge.export.exporter import torch_to_onnx

    model = build_model("segformer-b0", num_classes=3).eval()
    graph = torch_to_onnx(model, torch.randn(1, 3, 64, 64), opset=18).graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def perm(node):
        return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)

    convs = [n for n in graph.node if n.op_type == "Conv"]
    fed = [producer.get(n.input[0]) for n in convs]
    from_tokens = [p for p in fed if p is not None and p.op_type == "Transpose"]
    # the block convolutions (2 sr + 1 dwconv per block, sr only where sr_ratio > 1) all come from tokens
    assert len(from_tokens) >= 8 + 6 and all(perm(p) == [0, 3, 1, 2] for p in from_tokens)
    leaving = [c for n in convs for c in consumers.get(n.output[0], []) if c.op_type == "Transpose"]
    assert leaving and all(perm(c) == [0, 2, 3, 1] for c in leaving)


@pytest.mark.parametrize("src, dst", [((12, 16), (96, 128)), ((24, 32), (96, 128)), ((7, 5), (25, 19)),
                                      ((63, 63), (125, 125)), ((1, 3), (4, 12)), ((5, 4), (5, 8))])
def test_upsample_matmuls_equal_interpolate(src, dst):
    """The head's MatMul upsampling is PyTorch's bilinear align_corners=False, also at ratios that
    are not integers (odd input sizes) and at the clamped edges; the Resize path is F.interpolate."""
    from edgemerge.models.segformer import interpolation_matrix, upsample_bilinear

    y = torch.randn(2, 3, *src)
    ref = F.interpolate(y, size=dst, mode="bilinear", align_corners=False)
    mm = interpolation_matrix(src[0], dst[0]) @ y @ interpolation_matrix(src[1], dst[1]).T
    # fp32 rounding of the source index and of the products: < 1e-5 on N(0, 1) values seen (63 ->
    # 125); a wrong tap or weight (align_corners=True, no clamp at 0, the edge) is off by > 1e-2
    torch.testing.assert_close(mm, ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(upsample_bilinear(y, dst), ref, rtol=0, atol=2e-5)


def test_upsample_takes_matmuls_only_where_they_are_less_work(monkeypatch):
    from edgemerge.models import segformer

    resized = []
    real = F.interpolate
    monkeypatch.setattr(segformer.F, "interpolate", lambda y, **kw: resized.append(tuple(y.shape[-2:])) or real(y, **kw))
    for src in ((12, 16), (24, 32), (48, 64)):  # b0 at 384x512: 14, 32, 80 multiply-adds per pixel
        segformer.upsample_bilinear(torch.randn(1, 2, *src), (96, 128))
    segformer.upsample_bilinear(torch.randn(1, 2, 128, 128), (256, 256))  # b0 1024x1024 stage 2: 192
    assert resized == [(128, 128)]
