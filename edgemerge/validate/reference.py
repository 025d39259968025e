"""The reference an artifact is held to: PyTorch rebuilt from the manifest, or reference.npz.

Torch is imported only inside the functions that need it, so a device without PyTorch (a Jetson)
validates against the bundle's stored outputs with numpy alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from edgemerge.contracts.errors import EdgemergeError

REFERENCE_FILE = "reference.npz"


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def load_stored(bundle: Path, manifest: dict) -> dict[str, np.ndarray]:
    path = bundle / manifest.get("reference", {}).get("file", REFERENCE_FILE)
    if not path.is_file():
        raise EdgemergeError(f"{path}: the bundle's stored reference is missing; re-export the bundle")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def stored_outputs(reference: dict[str, np.ndarray], n_batches: int) -> list[np.ndarray]:
    return [reference[f"output_{i}"] for i in range(n_batches)]


def run_pytorch(model, batches: list[np.ndarray], progress: Callable[[int, int], None] | None = None
                ) -> list[np.ndarray]:
    """PyTorch's own outputs per batch (its decisions unforced); `progress(i, n)` after each batch."""
    import torch

    outputs = []
    with torch.no_grad():
        for i, b in enumerate(batches, start=1):
            outputs.append(model(torch.from_numpy(np.ascontiguousarray(b, np.float32))).numpy())
            if progress is not None:
                progress(i, len(batches))
    return outputs
