"""Validate an exported artifact (ONNX file or TensorRT engine) against the PyTorch model.

Importable without torch and TensorRT: the reference falls back to the bundle's reference.npz,
and TensorRT is imported only to run an engine.
"""

from edgemerge.validate.api import failure_message, validate_artifact
from edgemerge.validate.metrics import THRESHOLDS, thresholds_for

__all__ = ["THRESHOLDS", "failure_message", "thresholds_for", "validate_artifact"]
