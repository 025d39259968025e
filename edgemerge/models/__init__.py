"""The model zoo: Segformer B0-B5, ViT/DeiT, Segmenter, with checkpoint loading.

    model = build_model("segformer-b0")                       # random weights, eval mode
    model, info = load_checkpoint("segformer-b5", "ckpt_dir") # HF dir, mmseg/NVlabs/timm/Segmenter .pth
"""

from edgemerge.models.registry import ModelConfig, build_model, count_params, deployed_form, get_config, list_models
from edgemerge.models.tokens import TokenState
from edgemerge.models.checkpoint import CheckpointInfo, load_checkpoint

__all__ = [
    "CheckpointInfo", "ModelConfig", "TokenState", "load_checkpoint", "build_model", "count_params", "deployed_form",
    "get_config", "list_models",
]
