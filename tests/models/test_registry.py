"""Registry: names, configs, every model builds with real parameter counts."""

import pytest
import torch

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.models.registry import build_model, count_params, get_config, list_models

NAMES = [f"segformer-b{i}" for i in range(6)] + ["vit-t", "vit-s", "vit-b", "vit-l", "deit-t", "deit-s", "deit-b"] + [
    f"segmenter-vit-{s}" for s in "tsbl"]

# Published sizes (millions): Segformer paper (ADE20K heads, 150 classes), timm ViT/DeiT (1000 classes).
PUBLISHED = {"segformer-b0": 3.8, "segformer-b1": 13.7, "segformer-b2": 27.5, "segformer-b3": 47.3,
             "segformer-b4": 64.1, "segformer-b5": 84.7, "vit-t": 5.7, "vit-s": 22.1, "vit-b": 86.6,
             "vit-l": 304.3, "deit-t": 5.7, "deit-s": 22.1, "deit-b": 86.6}


def test_list_models_has_every_name():
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_real_param_count(name):
    with torch.device("meta"):  # no memory, no init: the counts are still exact
        model = build_model(name)
    n = count_params(model)
    assert n > 0
    if name in PUBLISHED:
        assert abs(n / 1e6 - PUBLISHED[name]) / PUBLISHED[name] < 0.03, (name, n)
    assert not model.training and model.config.name == name


def test_small_models_run():
    with torch.no_grad():
        assert build_model("segformer-b0", num_classes=4)(torch.randn(1, 3, 64, 64)).shape == (1, 4, 16, 16)
        assert build_model("vit-t", num_classes=3)(torch.randn(1, 3, 224, 224)).shape == (1, 3)


def test_configs():
    b5 = get_config("segformer-b5")
    assert b5.depths == (3, 6, 40, 3) and b5.widths == (64, 128, 320, 512) and b5.heads == (1, 2, 5, 8)
    assert b5.num_classes == 150 and b5.resolution == (512, 512) and b5.patch_size == 4
    assert b5.extra["decoder_width"] == 768 and get_config("segformer-b1").extra["decoder_width"] == 256
    assert get_config("vit-s").mean == (0.5, 0.5, 0.5) and get_config("deit-s").mean == (0.485, 0.456, 0.406)
    assert get_config("segmenter-vit-b").extra["decoder"] == "mask"


def test_unknown_model_is_one_line():
    with pytest.raises(EdgemergeError, match="unknown model 'x'; known: segformer-b0") as e:
        get_config("x")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(resolution=(100, 100)), dict(decoder="mask")])
def test_bad_overrides(kwargs):
    with pytest.raises(EdgemergeError):
        build_model("segformer-b0", **kwargs)
