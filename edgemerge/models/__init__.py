"""The model zoo: Segformer B0-B5, ViT/DeiT, Segmenter; configs in a timm-style registry,
one builder per family, and checkpoint loading with format detection and key conversion.

    model = build_model("segformer-b0")                       # random weights, eval mode
    model, info = load_checkpoint("segformer-b5", "ckpt_dir") # HF dir, mmseg/NVlabs/timm/Segmenter .pth

The modules expose merge hooks (`reduce_tokens`, `reduce_kv`, `reduce_queries`) that do nothing
until `edgemerge.merge` patches them. Imports torch and contracts only.
"""
