"""Runners for `edgemerge bench`, all in polygraphy's runner shape (activate / infer / deactivate).

ONNX Runtime and TensorRT use polygraphy's own `OnnxrtRunner` / `TrtRunner`; the PyTorch
reference gets a `TorchRunner` written the same way. Each `*RunnerFrom*` function is a loader:
it returns an inactive runner, so the timing loop owns activation and can measure memory around it.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict

import numpy as np

from edgemerge.bench.artifact import Artifact
from edgemerge.contracts.errors import EdgemergeError, reraise_out_of_memory


def ort_session_options(threads: int | None = None):
    """Sequential execution on all cores: the settings a latency benchmark on a CPU wants."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class SessionFromPath:
    """Polygraphy-style loader: an ONNX Runtime session for a model file (CPU, or CUDA when asked)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        self.path, self.device, self.threads = str(path), device, threads

    def __call__(self):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EdgemergeError("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                                     "(install onnxruntime-gpu) ")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            return ort.InferenceSession(self.path, ort_session_options(self.threads), providers=providers)
        except Exception as e:  # onnxruntime raises its own types
            reraise_out_of_memory(e)
            raise EdgemergeError(f"{self.path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None


def OnnxrtRunnerFromArtifact(artifact: Artifact, device: str = "cpu", threads: int | None = None):
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from edgemerge.contracts.progress import quiet_polygraphy

    quiet_polygraphy()
    if artifact.kind != "onnx":
        raise EdgemergeError(f"{artifact.path}: the onnxruntime backend needs model.onnx, not an engine")
    return OnnxrtRunner(SessionFromPath(artifact.path, device, threads), name=artifact.label)


def TrtRunnerFromArtifact(artifact: Artifact, plugins: list[str] | None = None, load_engine=None):
    """TensorRT through polygraphy; `load_engine(path, plugins=...)` is edgemerge.trt's (handed over
    by the caller), which refuses with one line an engine whose record does not fit here."""
    from edgemerge.trt.lib import require_tensorrt

    if artifact.kind != "plan":
        raise EdgemergeError(f"{artifact.path}: the trt backend needs a built engine (model.plan); "
                             "build one with `edgemerge build` or build_on_device.sh")
    require_tensorrt()
    from polygraphy.backend.trt import TrtRunner

    from edgemerge.contracts.progress import quiet_polygraphy

    if load_engine is None:
        raise EdgemergeError("the trt backend needs a TensorRT engine loader (edgemerge.trt.load_engine)")

    quiet_polygraphy()

    return TrtRunner(lambda: load_engine(artifact.path, plugins=plugins), name=artifact.label)


def _polygraphy_base():
    from polygraphy.backend.base import BaseRunner

    return BaseRunner


class TorchRunner(_polygraphy_base()):
    """The merged PyTorch model (SDPA attention) as a polygraphy runner; CPU or CUDA.

    On CUDA it runs at the bundle's precision (fp16 bundles in half); on CPU always fp32.
    `inference_time` includes the host->device copy of the input, as TrtRunner's does.
    """

    def __init__(self, artifact: Artifact, device: str = "cpu", variant: str | None = None):
        super().__init__(name=f"torch:{artifact.label}")
        self.artifact, self.device, self.variant = artifact, device, variant
        self.model = None
        import torch  # noqa: F401  (imported here, so that import costs stay out of the memory figure)

        import edgemerge.merge.reference  # noqa: F401
        import edgemerge.merge  # noqa: F401
        import edgemerge.models  # noqa: F401

    def activate_impl(self):
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise EdgemergeError("--device cuda: torch sees no CUDA GPU here")
        if self.device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        from edgemerge.merge.reference import reference_from_manifest  # checks the checkpoint's sha256

        model = reference_from_manifest(self.artifact.manifest, self.variant).to(self.device)
        self.dtype = torch.float16 if (self.device == "cuda" and self.artifact.manifest.get("precision") == "fp16") \
            else torch.float32
        self.model = model.to(self.dtype).eval()

    def get_input_metadata_impl(self):
        from polygraphy.common import TensorMetadata

        name, shape, dtype = self.artifact.input_spec()
        return TensorMetadata().add(name, np.dtype(dtype), shape)

    def infer_impl(self, feed_dict):
        import torch

        x = next(iter(feed_dict.values()))
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype))
            if self.device == "cuda":
                torch.cuda.synchronize()
        self.inference_time = time.perf_counter() - start
        return OrderedDict(logits=out.float().cpu().numpy())

    def deactivate_impl(self):
        self.model = None
