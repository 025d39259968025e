"""`edgemerge tune`, the steps: check everything, judge plans cheaply (PyTorch fidelity, GFLOPs)
in an Optuna study, time the front on the backend against the unmerged model, choose, re-time the
choice in a fresh process, write plan.toml, tune.json and front.png."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgemerge.contracts.errors import EdgemergeError

MAX_TIMED = 12
BACKENDS = ("onnxruntime", "tensorrt")


@dataclass
class TuneOptions:
    model: str
    images: str
    labels: str | None = None
    checkpoint: str | None = None
    resolution: tuple[int, int] | None = None
    max_drop: float | None = None
    min_speedup: float | None = None
    backend: str = "onnxruntime"
    threads: int | None = 1
    budget: float = 25.0  # minutes, search and timing together
    trials: int = 60
    out: str = "tune"
    storage: str | None = None
    search_only: bool = False  # a worker of a shared study: fidelity trials, no timing
    seed: int = 0
    iters: int = 20  # timed iterations per round (bench's --iters)
    timed: int = MAX_TIMED  # plans of the front exported and timed
    extra: dict[str, Any] = field(default_factory=dict)


def check(opts: TuneOptions) -> None:
    """The request, refused with one line before any work."""
    from edgemerge.models.registry import get_config

    get_config(opts.model)  # unknown model
    if (opts.max_drop is None) == (opts.min_speedup is None) and not opts.search_only:
        raise EdgemergeError("give one target: --max-drop D (fidelity cost at most D) or --min-speedup X")
    if opts.max_drop is not None and not (math.isfinite(opts.max_drop) and 0 <= opts.max_drop <= 100):
        raise EdgemergeError(f"--max-drop {opts.max_drop}: a drop in [0, 100] (mIoU points, or % of pixels changed)")
    if opts.min_speedup is not None and not (math.isfinite(opts.min_speedup) and 0 < opts.min_speedup <= 20):
        raise EdgemergeError(f"--min-speedup {opts.min_speedup}: a ratio in (0, 20] over the unmerged model")
    if opts.backend not in BACKENDS:
        raise EdgemergeError(f"unknown backend {opts.backend!r}; known: {', '.join(BACKENDS)}")
    if not opts.budget > 0 or opts.trials < 1 or opts.timed < 1 or opts.iters < 1:
        raise EdgemergeError("--budget (minutes) must be > 0, and --trials, --timed and --iters >= 1")
    if opts.threads is not None and opts.threads < 1:
        raise EdgemergeError(f"--threads must be >= 1, got {opts.threads}")
    if opts.checkpoint is not None:
        from edgemerge.models.checkpoint import check_checkpoint_path

        check_checkpoint_path(opts.checkpoint)
    if opts.backend == "tensorrt" and not opts.search_only:
        from edgemerge.trt.lib import require_tensorrt

        require_tensorrt()


def run_tune(opts: TuneOptions, progress: Callable[[str], None] = lambda s: None,
             note: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Tune; returns the tune.json record (`met` says whether the target was met)."""
    from edgemerge.contracts.files import check_output_dir
    from edgemerge.models.registry import get_config
    from edgemerge.tune import search, space as space_mod
    from edgemerge.tune.fidelity import Fidelity, load_images

    t0 = time.time()
    check(opts)
    out = check_output_dir(opts.out, "tune folder")
    store = search.connect(opts.storage) if opts.storage else None  # unreachable: one line, before the work
    cfg = get_config(opts.model)
    resolution = tuple(opts.resolution or cfg.resolution)
    x, y, files, label_files = load_images(opts.images, opts.labels, resolution, cfg.mean, cfg.std, progress)
    out.mkdir(parents=True, exist_ok=True)
    storage = opts.storage or f"sqlite:///{(out / 'tune.db').resolve()}"
    store = store or search.connect(storage)
    image_hash = hashlib.sha256("".join(_sha(f) for f in files).encode()).hexdigest()
    model, ck_sha, learned = _model(opts, resolution, note)
    name = f"{opts.model}-{resolution[0]}x{resolution[1]}-{image_hash[:10]}-{(ck_sha or 'random')[:10]}" \
           f"-{'labels' if y is not None else 'agreement'}"
    study = search.open_study(store, name, opts.seed, shared=opts.storage is not None)
    space = space_mod.build(model.config, learned_metric=learned)
    fid = Fidelity(model, x, y, model.config.num_classes, seed=opts.seed, label_files=label_files)
    judge = _judge(opts.model, model.config, resolution, fid)
    fresh = not study.get_trials(deepcopy=False)
    queued = search.seed_shipped(study, space)
    near = search.seed_neighbours(study, space, opts.seed) if fresh else 0
    progress(f"search: {len(space.params)} parameters, {len(queued)} shipped variants and {near} plans next to "
             f"them queued, study {name}")
    _optimize(study, space, judge, opts, progress, deadline=t0 + opts.budget * 60 * (1.0 if opts.search_only else 0.6))
    rows = _rows(search.completed(study), space)
    record: dict[str, Any] = {"format": 1, "model": opts.model, "resolution": list(resolution), "study": name,
                              "storage": storage if opts.storage is None else "given (--storage)",
                              "images": {"folder": str(Path(opts.images).resolve()), "count": len(files),
                                         "sha256": image_hash, "labels": opts.labels},
                              "checkpoint": opts.checkpoint, "checkpoint_sha256": ck_sha,
                              "target": {"max_drop": opts.max_drop, "min_speedup": opts.min_speedup},
                              "drop_kind": rows[0]["drop_kind"] if rows else None, "backend": opts.backend,
                              "threads": opts.threads, "options": asdict(opts), "versions": _versions()}
    if opts.search_only:
        record.update(trials=rows, met=None)
        return record
    _time_front(rows, opts, out, resolution, progress, deadline=t0 + opts.budget * 60)
    chosen, met, why = _choose(rows, opts)
    if chosen is not None and chosen.get("bundle"):
        from edgemerge.tune.measure import retime_fresh

        progress("re-timing the chosen plan in a fresh process")
        chosen["retimed_speedup"] = retime_fresh(Path(chosen["bundle"]), Path(rows[0]["baseline"]), opts.backend,
                                                 opts.threads, opts.iters * 2)
    record.update(trials=rows, chosen=chosen, met=met, verdict=why, seconds=round(time.time() - t0, 1))
    _write(out, opts, record, chosen)
    return record


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    from importlib import metadata

    from edgemerge import __version__

    out = {"edgemerge": __version__}
    for pkg in ("torch", "onnxruntime", "optuna"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _model(opts: TuneOptions, resolution, note: Callable[[str], None]):
    """(model, checkpoint sha256 or None, whether it carries a learned metric), deployed form, fp32."""
    import torch

    from edgemerge.models.checkpoint import load_checkpoint
    from edgemerge.models.registry import build_model, deployed_form

    if opts.checkpoint is None:
        note(f"no --checkpoint given: tuning {opts.model} with RANDOM weights (seed {opts.seed}); the figures "
             "mean nothing for a real model, the pipeline is what is exercised")
        torch.manual_seed(opts.seed)
        model, sha, learned = build_model(opts.model, resolution=resolution), None, False
    else:
        model, info = load_checkpoint(opts.model, opts.checkpoint, resolution=resolution)
        sha, learned = info.sha256, bool(info.merge_state)
    return deployed_form(model).eval(), sha, learned


def _judge(model_name: str, cfg, resolution, fid) -> Callable[[dict], dict[str, Any]]:
    from edgemerge.merge.counts import resolve
    from edgemerge.merge.flops import gflops
    from edgemerge.merge.plan import plan_from_table

    def judge(table: dict) -> dict[str, Any]:
        plan = plan_from_table(model_name, table)
        resolve(cfg, plan, resolution)  # a plan this resolution cannot take: EdgemergeError, the trial fails
        try:
            figures = fid.evaluate(plan)
        except ValueError as e:  # a count the op refuses (more sources than a site has)
            raise EdgemergeError(str(e)) from None
        figures["gflops"] = gflops(cfg, "tuned", resolution, plan=plan)["merged"]
        return figures

    return judge


def _optimize(study, space, judge, opts: TuneOptions, progress, deadline: float) -> None:
    from edgemerge.tune import search

    left = opts.trials - len(search.completed(study))
    if left <= 0:
        progress(f"the study holds {opts.trials} judged plans already: no new trials")
        return
    # n_trials bounds the cache answers and pruned plans too; _stop_at ends at `trials` judged plans
    study.optimize(search.objective(space, judge, opts.max_drop, progress), n_trials=left * 4,
                   timeout=max(1.0, deadline - time.time()), callbacks=[_stop_at(opts.trials)],
                   catch=(EdgemergeError,))


def _stop_at(n: int) -> Callable:
    """Stop once the study holds `n` judged plans (cache answers do not count)."""
    def callback(study, trial) -> None:
        from edgemerge.tune import search

        if len(search.completed(study)) >= n:
            study.stop()
    return callback


def _rows(trials: list, space) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        if "table" not in t.user_attrs:  # not a trial of edgemerge tune's
            continue
        fig = {k[4:]: v for k, v in t.user_attrs.items() if k.startswith("fig_")}
        rows.append({"trial": t.number, "name": t.user_attrs.get("shipped") or f"t{t.number}",
                     "shipped": t.user_attrs.get("shipped"), "table": json.loads(t.user_attrs["table"]), **fig})
    front = _pareto(rows)
    for r in rows:
        r["on_front"] = r["trial"] in front
    return rows


def _pareto(rows: list[dict]) -> set[int]:
    """Trials no other trial beats on both drop and GFLOPs."""
    out = set()
    for r in rows:
        if not any((o["drop"] <= r["drop"] and o["gflops"] <= r["gflops"]) and
                   (o["drop"] < r["drop"] or o["gflops"] < r["gflops"]) for o in rows):
            out.add(r["trial"])
    return out


def _time_front(rows: list[dict], opts: TuneOptions, out: Path, resolution, progress, deadline: float) -> None:
    """Export and time at most MAX_TIMED plans of the front (spread over GFLOPs; feasible ones only
    under --max-drop) against the unmerged model; no merging counts as speed-up 1."""
    from edgemerge.tune.measure import Timer

    pool = _timing_pool(rows, opts)
    timer = Timer(opts.model, resolution, opts.checkpoint, opts.backend, opts.threads, out, iters=opts.iters,
                  progress=progress)
    baseline = timer.bundle("none", None)
    for r in rows:
        r["baseline"] = str(baseline)
    for i, r in enumerate(pool):
        left = deadline - time.time()
        if left <= 0:
            progress(f"time budget spent: {len(pool) - i} front plan(s) not timed")
            break
        timer.cap_seconds = max(10.0, left / (len(pool) - i) - 20)
        r["bundle"] = str(timer.bundle(r["name"], r["table"]))
        r.update(timer.speedup(Path(r["bundle"]), baseline))
        progress(f"timed {r['name']}: speed-up {r['speedup']:.3f} ({r['speedup_lo']:.3f}..{r['speedup_hi']:.3f}), "
                 f"drop {r['drop']:.2f}")


def _timing_pool(rows: list[dict], opts: TuneOptions) -> list[dict]:
    """The plans to time, at most `opts.timed`: the feasible shipped variants first, then the front,
    the next front, ... (non-dominated sorting in drop and GFLOPs), spread over the GFLOPs. The
    shipped ones always, because GFLOPs do not rank latency: on b0 384x512 ORT CPU n2d, dominated in
    (drop, GFLOPs) by fast-pa, ran 1.13x where fast-pa ran 1.08x, and a search that filled the front
    with its own plans left n2d untimed and chose fast-pa."""
    feasible = [r for r in rows if r["table"] and (opts.max_drop is None or r["drop"] <= opts.max_drop)]
    shipped = sorted((r for r in feasible if r.get("shipped")), key=lambda r: r["gflops"])[:opts.timed]
    rest = [r for r in feasible if not r.get("shipped")]
    front: list[dict] = []
    while rest and len(front) < opts.timed - len(shipped):  # the front, then the next front, ...
        layer = _pareto(rest)
        front += [r for r in rest if r["trial"] in layer]
        rest = [r for r in rest if r["trial"] not in layer]
    front.sort(key=lambda r: r["gflops"])
    room = opts.timed - len(shipped)
    if len(front) > room:  # spread over the GFLOPs
        step = (len(front) - 1) / max(room - 1, 1)
        front = [front[round(i * step)] for i in range(room)] if room > 0 else []
    return shipped + front


def _choose(rows: list[dict], opts: TuneOptions) -> tuple[dict | None, bool, str]:
    """The plan that meets the target: the fastest under --max-drop, the most faithful at
    --min-speedup (on the rounds' median). No merging (speed-up 1, drop 0) is a candidate."""
    timed = [r for r in rows if r.get("speedup") is not None]
    none = {"name": "no merging", "table": {}, "drop": 0.0, "drop_lo": 0.0, "drop_hi": 0.0, "speedup": 1.0,
            "speedup_lo": 1.0, "speedup_hi": 1.0, "gflops": None}
    if opts.max_drop is not None:
        ok = [r for r in timed if r["drop"] <= opts.max_drop and r["speedup"] > 1.0]
        if not ok:
            return none, True, (f"no merging: no plan within a drop of {opts.max_drop} ran faster than the "
                                "unmerged model here")
        best = max(ok, key=lambda r: r["speedup"])
        best["chosen"] = True
        return best, True, f"fastest plan within a drop of {opts.max_drop}"
    ok = [r for r in timed if r["speedup"] >= opts.min_speedup]
    if not ok:
        best = max(timed, key=lambda r: r["speedup"], default=none)
        best["chosen"] = True
        return best, False, (f"no plan reached a speed-up of {opts.min_speedup} (best measured "
                             f"{best['speedup']:.3f}); plan.toml holds the fastest found")
    best = min(ok, key=lambda r: r["drop"])
    best["chosen"] = True
    return best, True, f"least drop at a speed-up of at least {opts.min_speedup}"


def _write(out: Path, opts: TuneOptions, record: dict[str, Any], chosen: dict | None) -> None:
    from edgemerge.contracts.files import write_files
    from edgemerge.tune.report import front_png, plan_toml

    files = [(out / "tune.json", (json.dumps(record, indent=1, default=str) + "\n").encode()),
             (out / "front.png", front_png(record["trials"], record["target"], record["drop_kind"] or "drop"))]
    if chosen is not None:
        tune = {"target": f"max-drop {opts.max_drop}" if opts.max_drop is not None else f"min-speedup {opts.min_speedup}",
                "met": record["met"], "verdict": record["verdict"], "backend": opts.backend, "threads": opts.threads,
                "resolution": record["resolution"], "images_sha256": record["images"]["sha256"],
                "drop": chosen["drop"], "drop_interval": [chosen["drop_lo"], chosen["drop_hi"]],
                "drop_kind": record["drop_kind"], "speedup": chosen.get("speedup"),
                "speedup_interval": [chosen.get("speedup_lo"), chosen.get("speedup_hi")],
                "retimed_speedup": chosen.get("retimed_speedup"), "gflops": chosen.get("gflops"),
                "versions": record["versions"]}
        files.append((out / "plan.toml", plan_toml(opts.model, "tuned", chosen["table"], tune).encode()))
    write_files(files)
