"""`edgemerge train-metric`: learn the merge metric of a plan's sites with the backbone frozen.

Default loss without labels: distillation, KL(unmerged model's class scores || merged model's)
on the same image; with `labels` (segmentation: label maps named like the images) plus the
merged model's cross-entropy against them (values >= the class count are ignored). The merged
model merges softly (edgemerge.merge.soft), so the loss has a gradient with respect to the
metric. The metric starts as the projection that reproduces today's (the keys for ViT, the
identity for Segformer++), so step 0 is the published behaviour and training moves from it.
Recipe from DTEM's train.py: AdamW lr 1e-4, weight decay 1e-4 on weights only, gradient clip 5,
cosine to 1e-6. The run is seeded (the batch of step s depends only on seed and s) and resumable
(`train_state.pth` in --out); the result is `checkpoint.pth` (the input's weights, the metric
tensors and the model details the input's format implied, such as LayerNorm eps; read by
`export --checkpoint` and `validate`) and `train_record.json`.

The run is judged on images it does not train on: `eval_images` (a folder; a file whose content
equals a training image's is refused), or else a seeded split of `images` (`holdout` of them,
at least one, never trained on). The KL to the unmerged model on those images, soft (the relaxed
forward that is trained) and hard (the deployed model: hard merging on the metric), before and
after training, goes into the record with the names of the files that trained and judged.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.files import atomic_write_bytes
from edgemerge.merge.family import SoftModel

MIN_LR = 1e-6
MAX_LR = 1.0  # AdamW on a projection: beyond this every step overshoots
# At most this many optimizer steps in one run (DTEM trains for tens of thousands): a number beyond it
# (`--epochs 1000000000000`) is a typo, refused up front instead of running silently for days.
MAX_STEPS = 1_000_000
CLIP = 5.0
HOLDOUT = 0.2
STATE_FILE, CHECKPOINT_FILE, RECORD_FILE = "train_state.pth", "checkpoint.pth", "train_record.json"


@dataclass(frozen=True)
class TrainOptions:
    model: str
    variant: str
    checkpoint: str
    images: str
    out: str
    labels: str | None = None  # segmentation label maps (same file names): adds the task loss
    eval_images: str | None = None  # judge on this folder; default: a seeded `holdout` split of `images`
    holdout: float = HOLDOUT  # fraction of `images` held out for judging when no eval_images
    steps: int | None = None  # optimizer steps; default: epochs over the images
    epochs: int = 1
    batch: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    resolution: tuple[int, int] | None = None
    seed: int = 0
    save_every: int = 50
    top_k: int = 3
    tau_score: float = 0.1  # ViT (DTEM): score and pick temperatures
    tau_pick: float = 0.1
    tau_grid: float = 0.01  # Segformer++: gate and destination temperature (cosine units)
    ascend: bool = False  # a control, not a recipe: climb the loss instead (AdamW maximize)


def _soft_model(model, plan, merge_state: dict[str, Tensor], opts: TrainOptions) -> SoftModel:
    """The family's soft forward for `plan` (its adapter says which metrics train and how)."""
    from edgemerge.merge.family import family_for

    family = family_for(model.config.family)
    if family.soft is None:
        raise EdgemergeError(f"{model.config.name}: its family has no trainable merge metric")
    return family.soft(model, plan, merge_state, opts)


def distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(softmax(teacher) || softmax(student)) per image (per pixel for dense logits [B, K, H, W])."""
    s, t = F.log_softmax(student.float(), dim=1), F.log_softmax(teacher.float(), dim=1)
    kl = F.kl_div(s, t, log_target=True, reduction="none").sum(1)
    return kl.mean()


def _save(obj: Any, path: Path) -> None:
    """torch.save through the one atomic writer (fsynced, 0644, nothing left on failure)."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def default_variant(model: str) -> str:
    """`--variant`'s default for `model`: its family's learned-metric variant (the adapter's)."""
    from edgemerge.merge.family import family_for
    from edgemerge.models.registry import get_config

    variant = family_for(get_config(model).family).train_variant
    if variant is None:
        raise EdgemergeError(f"{model}: its family has no learned merge metric to train")
    return variant


def check_numbers(opts: TrainOptions) -> None:
    """The numeric options, refused with one line before anything is read."""
    if opts.batch < 1 or (opts.steps is not None and opts.steps < 1) or opts.epochs < 1:
        raise EdgemergeError("--batch, --steps and --epochs must be >= 1")
    if not (math.isfinite(opts.lr) and 0 < opts.lr <= MAX_LR):
        raise EdgemergeError(f"--lr {opts.lr}: the learning rate must be a number > 0 and <= {MAX_LR:g} "
                             "(DTEM's is 1e-4)")
    if opts.steps is not None and opts.steps > MAX_STEPS:
        raise EdgemergeError(f"--steps {opts.steps}: at most {MAX_STEPS} steps in one run")
    if opts.epochs > MAX_STEPS:
        raise EdgemergeError(f"--epochs {opts.epochs}: at most {MAX_STEPS} steps in one run")


def total_steps(opts: TrainOptions, n_images: int) -> int:
    """The run's optimizer steps (--steps, or --epochs over the training images), at most MAX_STEPS."""
    total = opts.steps if opts.steps is not None else opts.epochs * math.ceil(n_images / opts.batch)
    if total > MAX_STEPS:
        raise EdgemergeError(f"--epochs {opts.epochs} over {n_images} training images in batches of {opts.batch} "
                             f"is {total} steps; at most {MAX_STEPS} in one run")
    return total


def label_files(files: list[Path], labels: str | Path, family: str, name: str) -> list[Path]:
    """The label map of every training image (same file name), checked as validate checks them
    (edgemerge.contracts.labels: lossless, of the image's size) before any work."""
    from edgemerge.contracts.labels import check_label_files, check_label_sizes

    from edgemerge.merge.family import family_for

    if family_for(family).task != "segment":
        raise EdgemergeError(f"--labels takes per-pixel label maps, for segmentation models; {name} is a "
                             f"{family} classifier (train it with distillation only)")
    if not Path(labels).is_dir():
        raise EdgemergeError(f"label folder not found: {labels}")
    missing = [f.name for f in files if not (Path(labels) / f.name).is_file()]
    if missing:
        raise EdgemergeError(f"--labels {labels} has no label map for {missing[0]}"
                             + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    out = [Path(labels) / f.name for f in files]
    check_label_files(out)
    check_label_sizes(files, out)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Split:
    """Which files train the metric and which judge it, and how they were chosen."""

    train: list[Path]
    judge: list[Path]
    source: str  # "eval-images" or "holdout"


def split_images(opts: TrainOptions) -> Split:
    """The training and judging files: `eval_images` if given, else a seeded holdout split of `images`."""
    from edgemerge.contracts.images import list_images

    files = list_images(opts.images)
    if opts.eval_images is not None:
        judge = list_images(opts.eval_images)
        seen = {_sha256(f): f for f in files}
        shared = [(f, seen[h]) for f in judge if (h := _sha256(f)) in seen]
        if shared:
            f, g = shared[0]
            raise EdgemergeError(f"--eval-images {opts.eval_images}: {f.name} is the same image as training image "
                                 f"{g} ({len(shared)} shared); judge on images the metric does not train on")
        return Split(files, judge, "eval-images")
    if not 0 < opts.holdout < 1:
        raise EdgemergeError(f"--holdout must be between 0 and 1 (exclusive), got {opts.holdout}")
    if len(files) < 2:
        raise EdgemergeError(f"{opts.images} has {len(files)} image: a held-out split needs at least 2 "
                             f"(or give --eval-images)")
    n_judge = min(max(1, round(len(files) * opts.holdout)), len(files) - 1)
    perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(opts.seed)).tolist()
    judged = set(perm[:n_judge])
    return Split([f for i, f in enumerate(files) if i not in judged], [f for i, f in enumerate(files) if i in judged],
                 "holdout")


def _load_images(files: list[Path], cfg, labels: list[Path] | None,
                 num_classes: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Images [N, 3, H, W] normalised, and label maps [N, H, W] (nearest-resized) when asked, their
    class ids checked against the model's classes (ids K..254 refused, as validate does)."""
    import numpy as np

    from edgemerge.contracts.images import load_image, normalize
    from edgemerge.contracts.labels import check_label_values

    H, W = cfg.resolution
    maps = None
    if labels is not None:  # before the images: a bad label map is refused first
        arr = np.stack([load_image(f, H, W, labels=True) for f in labels])
        check_label_values(arr, labels, num_classes)
        maps = torch.from_numpy(arr)
    images = torch.stack([torch.from_numpy(normalize(load_image(f, H, W)[None], cfg.mean, cfg.std)[0]) for f in files])
    return images, maps


def task_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of dense logits [B, K, h, w] upsampled to the labels [B, H, W]; >= K ignored."""
    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    target = torch.where(labels < logits.shape[1], labels, torch.full_like(labels, -100))
    return F.cross_entropy(up, target, ignore_index=-100)


def _lr_at(step: int, total: int, lr: float) -> float:
    """Cosine from lr to MIN_LR over `total` steps (DTEM's schedule without warm-up)."""
    return MIN_LR + (lr - MIN_LR) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def _batch_of(step: int, n_images: int, batch: int, seed: int) -> Tensor:
    """Image indices of step `step`: a seeded permutation per epoch, so a resumed run sees the same."""
    first = step * batch
    idx = []
    while len(idx) < batch:
        epoch, pos = divmod(first + len(idx), n_images)
        perm = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        idx.append(int(perm[pos]))
    return torch.tensor(idx)


def _hard_kl(model, plan, metric_tensors: dict[str, Tensor], images: Tensor, teacher: Tensor) -> float:
    """What inference does: hard merging on the current metric, KL to the unmerged model."""
    from edgemerge.merge.patch import apply_merging, remove_merging

    apply_merging(model, plan, dtem_state=metric_tensors)
    try:
        with torch.no_grad():
            return float(distillation_loss(model(images), teacher))
    finally:
        remove_merging(model)


def _options_key(opts: TrainOptions, sha: str) -> dict[str, Any]:
    d = asdict(opts)
    d.pop("out")
    d.pop("save_every")
    d["checkpoint_sha256"] = sha
    d["resolution"] = list(d["resolution"]) if d["resolution"] else None
    return d


def train_metric(opts: TrainOptions, progress: Callable[[int, int, float], None] | None = None,
                 note: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Train every merge site's metric of `opts.variant`; returns the training record (also written).

    Every option, the images and the label maps are checked before the model is loaded;
    `note(msg)` is told whether the run starts or resumes, `progress(step, total, loss)` each step."""
    from edgemerge.models.checkpoint import save_checkpoint

    run = _prepare(opts)
    _resume_or_start(run, note)
    stats = _train(run, progress)
    after = _evaluate(run)
    save_checkpoint(run.model, run.out / CHECKPOINT_FILE, run.soft_model.state())
    record = _record(run, stats, after)
    atomic_write_bytes(run.out / RECORD_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return record


@dataclass
class _Run:
    """One training run: what it trains, on which images, and where it stands."""

    opts: TrainOptions
    plan: Any
    split: Split
    total: int
    model: nn.Module
    info: Any
    images: Tensor
    label_maps: Tensor | None
    judge: Tensor
    soft_model: SoftModel
    optimizer: torch.optim.Optimizer
    out: Path
    key: dict[str, Any]
    teacher: Tensor
    judge_teacher: list[Tensor]
    start: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    before: dict[str, float] | None = None

    def batches(self, x: Tensor) -> list[Tensor]:
        return [x[i: i + self.opts.batch] for i in range(0, len(x), self.opts.batch)]

    def save(self, step: int) -> None:
        _save({"options": self.key, "step": step, "metrics": self.soft_model.params.state_dict(),
               "optimizer": self.optimizer.state_dict(), "losses": self.losses, "seconds": self.seconds,
               "before": self.before}, self.out / STATE_FILE)


def _prepare(opts: TrainOptions) -> _Run:
    """Options, images and labels checked, then the model, its soft forward, the optimizer and the
    unmerged model's outputs (the teacher) made once."""
    from edgemerge.contracts.images import check_images
    from edgemerge.merge.patch import learned_metric_keys
    from edgemerge.merge.plan import get_plan
    from edgemerge.models.checkpoint import load_checkpoint
    from edgemerge.models.registry import get_config

    plan = get_plan(opts.model, opts.variant)
    if not learned_metric_keys(opts.model, plan):
        raise EdgemergeError(f"train-metric trains a learned merge metric; {opts.model}'s variant {opts.variant!r} "
                             f"has none (ViT/DeiT: --variant dtem; Segformer: a *-lm variant; Segmenter: algm-lm)")
    check_numbers(opts)
    split = split_images(opts)
    total = total_steps(opts, len(split.train))
    cfg = get_config(opts.model)
    labels = None if opts.labels is None else label_files(split.train, opts.labels, cfg.family, opts.model)
    check_images([*split.train, *split.judge])  # every image decodes and is large enough, before any work
    torch.manual_seed(opts.seed)
    model, info = load_checkpoint(opts.model, opts.checkpoint, resolution=opts.resolution)
    model.requires_grad_(False)
    images, label_maps = _load_images(split.train, model.config, labels, info.num_classes or model.config.num_classes)
    judge, _ = _load_images(split.judge, model.config, None)
    soft_model = _soft_model(model, plan, info.merge_state, opts)
    decay = [p for p in soft_model.params.parameters() if p.ndim > 1]
    no_decay = [p for p in soft_model.params.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=opts.lr, weight_decay=opts.weight_decay, maximize=opts.ascend)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(opts, plan, split, total, model, info, images, label_maps, judge, soft_model, optimizer, out,
               _options_key(opts, info.sha256), torch.empty(0), [])
    with torch.no_grad():
        run.teacher = torch.cat([model(x) for x in run.batches(images)])
        run.judge_teacher = [model(x) for x in run.batches(judge)]
    return run


def _resume_or_start(run: _Run, note: Callable[[str], None]) -> None:
    """Pick up the state a stopped run saved in --out (same options only), or judge the starting
    metric and save step 0."""
    out, total = run.out, run.total
    if (out / STATE_FILE).is_file():
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
        if state["options"] != json.loads(json.dumps(run.key)):
            raise EdgemergeError(f"{out} holds a run with other options ({out / STATE_FILE}); "
                                 f"use another --out, or delete it to start over")
        run.soft_model.params.load_state_dict(state["metrics"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.start, run.losses, run.seconds = int(state["step"]), list(state["losses"]), float(state["seconds"])
        run.before = state["before"]
        note(f"resuming the run in {out} at step {run.start} of {total} ({STATE_FILE})" if run.start < total else
             f"the run in {out} had finished its {total} steps ({STATE_FILE}): judging and writing it again")
        return
    note(f"starting a new run in {out}: {total} steps")
    run.before = _evaluate(run)
    run.save(0)


def _evaluate(run: _Run) -> dict[str, float]:
    """Mean KL to the unmerged model over the judging images: soft (trained) and hard (deployed)."""
    n, soft, hard = len(run.judge), 0.0, 0.0
    state = run.soft_model.state()
    for x, t in zip(run.batches(run.judge), run.judge_teacher):
        with torch.no_grad():
            soft += float(distillation_loss(run.soft_model.forward(x, None), t)) * len(x) / n
        hard += _hard_kl(run.model, run.plan, state, x, t) * len(x) / n
    return {"soft_kl": soft, "hard_kl": hard}


def _train(run: _Run, progress: Callable[[int, int, float], None] | None):
    """The optimizer steps from where the run stands; state saved every --save-every steps.
    Returns the last step's SoftStats (what the relaxation moved)."""
    from edgemerge.merge.soft import SoftStats

    opts, total = run.opts, run.total
    stats = SoftStats()
    for step in range(run.start, total):
        t0 = time.perf_counter()
        for group in run.optimizer.param_groups:
            group["lr"] = _lr_at(step, total, opts.lr)
        idx = _batch_of(step, len(run.images), opts.batch, opts.seed)
        stats = SoftStats()
        student = run.soft_model.forward(run.images[idx], stats)
        loss = distillation_loss(student, run.teacher[idx])
        if run.label_maps is not None:
            loss = loss + task_loss(student, run.label_maps[idx])
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(run.soft_model.params.parameters(), CLIP)
        run.optimizer.step()
        run.losses.append(round(loss.item(), 6))
        run.seconds += time.perf_counter() - t0
        if progress is not None:
            progress(step + 1, total, run.losses[-1])
        if (step + 1) % opts.save_every == 0 or step + 1 == total:
            run.save(step + 1)
    return stats


def _record(run: _Run, stats, after: dict[str, float]) -> dict[str, Any]:
    """The training record (train_record.json): what trained on what, and what was judged on which files."""
    from edgemerge.merge.plan import plan_dict

    opts, split, losses = run.opts, run.split, run.losses
    return {"model": opts.model, "variant": opts.variant, "plan": plan_dict(run.plan),
            "options": run.key, "checkpoint_in": str(opts.checkpoint), "checkpoint_format": run.info.format,
            "train_images": len(run.images), "resolution": list(run.model.config.resolution), "steps": run.total,
            "train_files": [str(f) for f in split.train],
            "eval_source": (f"--eval-images {opts.eval_images}" if split.source == "eval-images" else
                            f"held-out split of --images: {len(split.judge)} of "
                            f"{len(split.train) + len(split.judge)} (holdout {opts.holdout}, seed {opts.seed}), "
                            f"never trained on"),
            "eval_files": [str(f) for f in split.judge],
            "loss": "distillation: KL(unmerged || soft-merged) of the class scores (per pixel for segmentation)"
                    + (" + cross-entropy against --labels" if opts.labels else ""),
            "labels": str(opts.labels) if opts.labels else None,
            "optimizer": {"name": "AdamW", "lr": opts.lr, "min_lr": MIN_LR, "schedule": "cosine",
                          "weight_decay": opts.weight_decay, "weight_decay_on": "weights only", "clip": CLIP},
            "relaxation": {"top_k": opts.top_k, "tau_score": opts.tau_score, "tau_pick": opts.tau_pick,
                           "tau_grid": opts.tau_grid},
            "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
            "losses": losses, "eval_images": len(run.judge),
            "eval_kl": "mean KL(unmerged || merged) per pixel (per image for classifiers) on the eval files; "
                       "soft: the relaxed forward that trains, hard: the deployed model (hard merging)",
            "eval_before": run.before, "eval_after": after,
            "picked_mass_last_step": [{"r": r, "mass": round(m, 4)} for r, m in zip(stats.counts, stats.mass)],
            "train_seconds": round(run.seconds, 1), "torch": torch.__version__, "seed": opts.seed,
            "checkpoint": CHECKPOINT_FILE}
