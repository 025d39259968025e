"""The reference an artifact is held to: PyTorch rebuilt from the manifest, or reference.npz.

Torch is imported only inside the functions that need it, so a device without PyTorch (a Jetson)
validates against the bundle's stored outputs with numpy alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from edgemerge.compare import first_merging_slot
from edgemerge.errors import EdgemergeError
from edgemerge.reference import checked_checkpoint  # noqa: F401  (re-exported)
from edgemerge.reference import reference_from_manifest as build_from_manifest  # noqa: F401

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


@contextlib.contextmanager
def record_merge_decisions():
    """Record every merge decision the model makes, in call order, while the block is active.

    Wraps `edgemerge.merge.core.bipartite_match` / `window_match` (the patched blocks call them
    through the module) and appends {"kind", "slot" [B, N] int32, "margin" [B]} per call; `margin`
    is the gap between the last selected and the first rejected score, so a flipped decision can
    be told apart as a near-tie.
    """
    import torch

    from edgemerge.merge import core

    calls: list[dict] = []

    def gap(scores, count: int):
        if count <= 0 or count >= scores.shape[1]:
            return None
        top = torch.sort(scores, dim=1, descending=True).values
        return (top[:, count - 1] - top[:, count]).double().cpu().numpy()

    def record(e: core.MatchEvent) -> None:
        if e.slot is None:
            return
        a = e.args
        if e.kind == "bipartite":
            scores = core.bipartite_node_max(e.metric.float(), a["src"], a["dst"], a["protect"])
        else:
            scores = core.ops.window_scores(e.metric.float(), a["height"], a["width"], a["protect"])
        calls.append({"kind": e.kind, "slot": e.slot.cpu().numpy(), "margin": gap(scores, e.count),
                      "first_merging": first_merging_slot(e.kind, e.count, e.metric.shape[1], a.get("src"))})

    with core.observe(record):
        yield calls


def run_pytorch(model, batches: list[np.ndarray], progress: Callable[[int, int], None] | None = None
                ) -> tuple[list[np.ndarray], list[dict]]:
    """Outputs per batch and the merge decisions per site (slots/margins stacked over batches);
    `progress(i, n)` after each batch."""
    import torch

    outputs, per_batch = [], []
    with torch.no_grad():
        for i, b in enumerate(batches, start=1):
            with record_merge_decisions() as calls:
                outputs.append(model(torch.from_numpy(np.ascontiguousarray(b, np.float32))).numpy())
            per_batch.append(calls)
            if progress is not None:
                progress(i, len(batches))
    sites = []
    for i in range(len(per_batch[0]) if per_batch else 0):
        kind = per_batch[0][i]["kind"]
        margins = [c[i]["margin"] for c in per_batch]
        sites.append({"kind": kind, "slot": np.concatenate([c[i]["slot"] for c in per_batch]),
                      "margin": None if any(m is None for m in margins) else np.concatenate(margins),
                      "first_merging": per_batch[0][i]["first_merging"]})
    return outputs, sites
