"""The built-in family adapters (edgemerge.merge.family): Segformer, ViT/DeiT, Segmenter; importing
this package registers them. A new family is a module like these, registered where it is defined."""

from edgemerge.merge.families import segformer, segmenter, vit  # noqa: F401  (each registers its adapter)
