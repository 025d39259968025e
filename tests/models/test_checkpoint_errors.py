"""Bad checkpoints give one-line EdgemergeErrors that name the problem."""

import os

import pytest
import torch

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.models.registry import build_model
from edgemerge.models.checkpoint import load_checkpoint
from edgemerge.models.convert import segformer_to_nvlabs

transformers = pytest.importorskip("transformers")


def error(name, path, **kw) -> str:
    with pytest.raises(EdgemergeError) as e:
        load_checkpoint(name, path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def b0_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("b0") / "b0.pth"
    torch.save(segformer_to_nvlabs(build_model("segformer-b0", num_classes=19).state_dict()), path)
    return path


def test_missing_file(tmp_path):
    assert "not found" in error("segformer-b0", tmp_path / "nope.pth")


def test_truncated_file(tmp_path, b0_pth):
    data = b0_pth.read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    assert "not a readable checkpoint" in error("segformer-b0", tmp_path / "half.pth")


def test_random_bytes(tmp_path):
    (tmp_path / "r.pth").write_bytes(os.urandom(4096))
    assert "not a readable checkpoint" in error("segformer-b0", tmp_path / "r.pth")


def test_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "l.pth")
    assert "not a readable checkpoint" in error("segformer-b0", tmp_path / "l.pth")


def test_b0_pth_for_b2_names_field(b0_pth):
    msg = error("segformer-b2", b0_pth)
    assert "hidden sizes [32,64,160,256] != segformer-b2's [64,128,320,512]" in msg


def test_b0_hf_dir_for_b2_names_field(tmp_path):
    transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=3)).save_pretrained(tmp_path)
    assert "depths [2,2,2,2] != segformer-b2's [3,4,6,3]" in error("segformer-b2", tmp_path)


def test_other_architecture(tmp_path, b0_pth):
    assert "segformer checkpoint" in error("vit-t", b0_pth)
    torch.save(build_model("vit-t").state_dict(), tmp_path / "v.pth")
    assert "vit checkpoint" in error("segformer-b0", tmp_path / "v.pth")


def test_missing_and_unexpected_keys(tmp_path, b0_pth):
    sd = torch.load(b0_pth, weights_only=True)
    sd.pop("backbone.block1.0.attn.q.weight")
    sd["backbone.block1.0.attn.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    msg = error("segformer-b0", tmp_path / "bad.pth")
    assert "missing encoder.stages.0.blocks.0.attn.q.weight" in msg and "unexpected" in msg


def test_class_count(b0_pth):
    model, info = load_checkpoint("segformer-b0", b0_pth)  # the checkpoint decides: 19
    assert info.num_classes == 19 and model.decode_head.classifier.out_channels == 19
    load_checkpoint("segformer-b0", b0_pth, num_classes=19)
    assert "19 classes, but num_classes=150" in error("segformer-b0", b0_pth, num_classes=150)


def test_dir_without_config(tmp_path):
    assert "no config.json" in error("segformer-b0", tmp_path)
