"""Merge hooks can be swapped in by class; the plain models export with the dynamo exporter."""

import warnings

import pytest
import torch

from edgemerge.models.registry import build_model
from edgemerge.models.segformer import SegformerAttention


class HalfQueries(SegformerAttention):
    """Keep every other query and copy results back; drop the last key with a -inf-free bias."""

    def reduce_queries(self, x, hw):
        N = x.shape[1]
        return x[:, ::2], lambda t: t.repeat_interleave(2, dim=1)[:, :N]

    def reduce_kv(self, kv, hw):
        return kv, torch.zeros(kv.shape[0], 1, 1, kv.shape[1])


def test_segformer_attention_class_swap():
    model = build_model("segformer-b0", num_classes=3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        attn = model.encoder.stages[2].blocks[0].attn
        attn.__class__ = HalfQueries
        attn.stage, attn.block = 2, 0  # patches set attributes like these
        merged = model(x)
    assert merged.shape == plain.shape and not torch.equal(merged, plain)


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", [("segformer-b0", (1, 3, 64, 64)), ("vit-t", (1, 3, 224, 224))])
def test_dynamo_export_matches_onnxruntime(tmp_path, name, shape):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model, x = build_model(name), torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), tmp_path / "m.onnx", dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert abs(out - model(x).numpy()).max() < 1e-4
