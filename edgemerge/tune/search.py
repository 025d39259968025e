"""The search: an Optuna multi-objective study (fidelity drop, GFLOPs) over the plan space.

The store is Optuna's own: SQLite in --out by default (a Ctrl-C, kill -9 or reboot loses at most
the trial that was running, which is marked failed on resume: it ran on this machine under a
process that is gone), or any database URL (--storage postgresql://...) that several machines
share, each running fidelity trials into one study. Results are cached by plan: a plan the study
has already judged is answered from the store, never judged again nor counted twice.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from typing import Any, Callable

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.files import pid_alive
from edgemerge.tune.space import Space, key

DIRECTIONS = ("minimize", "minimize")  # drop, GFLOPs
POPULATION = 16  # NSGA-II's population: the studies are tens of trials


def connect(storage: str):
    """The study store at `storage` (created when new); a URL that cannot be reached, or a driver
    that is not installed, is one line. Called before any work."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress is ours, on stderr
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(storage, heartbeat_interval=10, grace_period=60,
                                              engine_kwargs={"pool_pre_ping": True})
        except (IntegrityError, ProgrammingError):  # another worker is creating the tables this moment
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)
        except (SQLAlchemyError, ImportError, ValueError) as e:
            raise EdgemergeError(f"cannot open the study storage {storage}: {' '.join(str(e).split())[:200]}") from None


def open_study(store, name: str, seed: int, shared: bool = False):
    """The study `name` in `store` (from `connect`), created or resumed. Workers of a shared study
    seed their samplers apart (seed + pid), or they would all propose the same plans in turn."""
    import optuna

    if shared:
        seed = seed + os.getpid()

    # NSGA-II with its options stated, so a version's defaults cannot change a run: a population of
    # 16 (the studies are tens of trials), seeded; constraints through Trial.set_constraint where
    # the installed Optuna has it (Optuna 5 deprecates the sampler's constraints_func).
    sampler = optuna.samplers.NSGAIISampler(population_size=POPULATION, seed=seed, crossover_prob=0.9, swapping_prob=0.5,
                                            **({} if _has_set_constraint() else {"constraints_func": _constraints}))
    study = optuna.create_study(study_name=name, storage=store, directions=list(DIRECTIONS), sampler=sampler,
                                load_if_exists=True)
    _fail_orphans(study, private=not shared)
    return study


def _has_set_constraint() -> bool:
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def _constraints(trial) -> list[float]:
    return [trial.user_attrs.get("constraint", 0.0)]


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fail_orphans(study, private: bool) -> None:
    """Trials left RUNNING by a process of this machine that is gone (kill -9, a reboot): failed,
    so the sampler does not wait for them and they are not counted. A trial killed between its
    creation and its first line has no worker yet: in the study file of one tune folder (`private`)
    nobody else can be running it; in a shared study Optuna's heartbeat fails it once stale."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get("worker", "")
        h, _, pid = who.partition(":")
        if (h == host and pid.isdigit() and not pid_alive(int(pid))) or (private and not who):
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)


def seed_shipped(study, space: Space) -> list[str]:
    """Queue the shipped variants that are points of the space (once per study), so the front
    always places them."""
    done = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False)}
    queued = []
    for name, table in space.shipped.items():
        point = space.point(table)
        if point is None or key(space.table(point)) in done:
            continue
        study.enqueue_trial(point, user_attrs={"shipped": name}, skip_if_exists=True)
        queued.append(name)
    return queued


def neighbours(space: Space, seed: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` points one step from a shipped variant (one parameter moved to the next choice
    up or down), in a seeded random order, none of them shipped. NSGA-II's first generation is
    otherwise uniform over the space, and over Segformer's 17 parameters nearly every uniform point
    merges hard: in a 10-minute tune of b0 on CamVid all 24 such plans cost 1.5-15.8 mIoU points.
    Starting next to the shipped plans, the first generation already lies where a user's limit is."""
    import random

    seeds = [p for n, t in space.shipped.items() if n != "none" and (p := space.point(t)) is not None]
    seen = {key(space.table(p)) for p in seeds}
    out: list[dict[str, Any]] = []
    for p in seeds:
        for name, choices in space.params.items():
            i = choices.index(p[name])
            for j in (i - 1, i + 1):
                if 0 <= j < len(choices):
                    q = {**p, name: choices[j]}
                    k = key(space.table(q))
                    if k not in seen:
                        seen.add(k)
                        out.append(q)
    random.Random(seed).shuffle(out)
    return out[:limit]


def seed_neighbours(study, space: Space, seed: int, limit: int = POPULATION) -> int:
    """Queue `neighbours` (the caller does it once, when the study is new); returns how many."""
    points = neighbours(space, seed, limit)
    for p in points:
        study.enqueue_trial(p, user_attrs={"neighbour": True}, skip_if_exists=True)
    return len(points)


def _join_first_generation(trial) -> None:
    """A queued seed (a shipped variant or a neighbour) joins NSGA-II's generation 0. Optuna's GA
    samplers give a trial its generation in `sample_relative`, which a trial whose every parameter
    is fixed by `enqueue_trial` never reaches (optuna 5.1, samplers/_ga/_base.py,
    `get_trial_generation`): such trials are judged but are nobody's parent, and the first
    generation is uniform random however well the study was seeded (what optunahub's "NSGA-II with
    initial trials" package exists for). Setting the generation the sampler reads puts them in the
    population the next generation's parents are chosen from."""
    sampler = trial.study.sampler
    if not hasattr(sampler, "_get_generation_key"):  # another sampler, or another Optuna: leave it
        return
    if "shipped" in trial.user_attrs or trial.user_attrs.get("neighbour"):
        gen_key = sampler._get_generation_key()
        if gen_key not in trial.study._storage.get_trial(trial._trial_id).system_attrs:
            trial.study._storage.set_trial_system_attr(trial._trial_id, gen_key, 0)


def objective(space: Space, judge: Callable[[dict], dict[str, Any]], max_drop: float | None,
              progress: Callable[[str], None]) -> Callable:
    """The trial function: suggest a point, answer from the cache or judge its plan."""
    from optuna.trial import TrialState

    def run(trial) -> tuple[float, float]:
        trial.set_user_attr("worker", _worker())
        _join_first_generation(trial)
        point = {name: trial.suggest_categorical(name, list(choices)) for name, choices in space.params.items()}
        table = space.table(point)
        k = key(table)
        trial.set_user_attr("key", k)
        trial.set_user_attr("table", json.dumps(table))
        others = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        if any(t.state == TrialState.RUNNING and t.number < trial.number and t.user_attrs.get("key") == k
               for t in others):  # another worker is judging this plan right now
            import optuna

            raise optuna.TrialPruned("judged by another worker")
        done = [t for t in others if t.state == TrialState.COMPLETE and t.user_attrs.get("key") == k
                and "reused_from" not in t.user_attrs]
        if done:  # the plan was judged already: its figures, not a second judgement
            figures = {k2: v for k2, v in done[0].user_attrs.items() if k2.startswith("fig_")}
            trial.set_user_attr("reused_from", done[0].number)
        else:
            try:
                figures = {f"fig_{k2}": v for k2, v in judge(table).items()}
            except EdgemergeError as e:  # a plan the resolution cannot take: pruned, not judged
                import optuna

                trial.set_user_attr("refused", str(e))
                raise optuna.TrialPruned(str(e)) from None
        for k2, v in figures.items():
            trial.set_user_attr(k2, v)
        drop, gflops = figures["fig_drop"], figures["fig_gflops"]
        if max_drop is not None:
            if _has_set_constraint():
                trial.set_constraint("drop", drop - max_drop)
            trial.set_user_attr("constraint", drop - max_drop)
        progress(f"trial {trial.number}: drop {drop:.2f}, {gflops:.2f} GFLOPs"
                 + (" (cached)" if done else ""))
        return drop, gflops

    return run


def completed(study) -> list:
    """The completed trials that judged a plan themselves (cache answers left out): one per plan."""
    from optuna.trial import TrialState

    seen, out = set(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        k = t.user_attrs.get("key")
        if k in seen:
            continue
        seen.add(k)
        out.append(t)
    return out
