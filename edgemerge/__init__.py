"""edgemerge: token-merged vision transformers from PyTorch to TensorRT FP16 engines."""

__version__ = "0.1.0"
