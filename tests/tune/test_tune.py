"""edgemerge tune: the space is the plan schema's, the study resumes after kill -9 without counting
a plan twice, two workers share one PostgreSQL study, targets nobody meets end with exit 1 and the
outputs, bad input is one line before any work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgemerge.merge.plan import plan_from_table
from edgemerge.models.registry import get_config
from edgemerge.tune.space import OFF, build

CLI = [sys.executable, "-m", "edgemerge.cli", "tune"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    return folder


def tune(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, **kw)


@pytest.mark.parametrize("model", ["segformer-b0", "deit-t", "segmenter-vit-t"])
def test_shipped_variants_are_points_of_the_space(model):
    """The space comes from the plan dataclass: every shipped variant without a learned metric is a
    point whose table gives the very plan the variant gives (the seeds of the search)."""
    space = build(get_config(model))
    seeds = {n: space.point(t) for n, t in space.shipped.items() if n != "none" and "metric" not in t}
    assert seeds and all(p is not None for p in seeds.values()), [n for n, p in seeds.items() if p is None]
    for name, point in seeds.items():
        assert plan_from_table(model, space.table(point)) == plan_from_table(model, space.shipped[name])


def test_site_choices_follow_the_schema_and_the_op():
    """Grid and ratio values come from GridSite's field metadata; a g x g cell has one anchor, so at
    most 1 - 1/g^2 of its tokens can merge: 2x2@0.8 is no choice, 4x4@0.9 is."""
    choices = build(get_config("segformer-b0")).params["kv.1"]
    assert OFF in choices and "2x2@0.7" in choices and "4x4@0.9" in choices and "2x2@0.8" not in choices
    assert "2x2@0.6" in choices  # hq's shipped value joins the searched ones
    assert build(get_config("segformer-b0"), learned_metric=True).params["metric"] == ("tokens", "learned")
    assert "metric" not in build(get_config("segformer-b0")).params  # nothing learned to choose


@pytest.mark.slow
def test_tune_writes_its_outputs_and_a_missed_target_exits_1(tmp_path, images):
    out = tmp_path / "out"
    common = ["-m", "vit-t", "-i", str(images), "-r", "64x64", "--trials", "5", "--timed", "2", "--iters", "5",
              "--budget", "3", "-o", str(out)]
    proc = tune(*common, "--max-drop", "100")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "tune.json").read_text())
    judged = record["trials"]
    assert len({json.dumps(r["table"], sort_keys=True) for r in judged}) == len(judged) <= 5
    assert all(r["drop_lo"] <= r["drop"] <= r["drop_hi"] for r in judged)
    assert any(r["on_front"] for r in judged) and (out / "front.png").stat().st_size > 0
    chosen = record["chosen"]
    assert record["met"] and (chosen["name"] == "no merging" or chosen["retimed_speedup"] > 0)
    exported = subprocess.run([sys.executable, "-m", "edgemerge.cli", "export", "--plan", str(out / "plan.toml"),
                               "-r", "64x64", "-o", str(tmp_path / "b")], capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["plan_file"]["tune"]["met"] is True
    # the same study, a target no plan meets: one line, exit 1, and still every output (the best found)
    for f in ("plan.toml", "tune.json", "front.png"):
        (out / f).unlink()
    proc = tune(*common, "--min-speedup", "19")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("edgemerge: error: target not met")
    assert all((out / f).is_file() for f in ("plan.toml", "tune.json", "front.png"))
    assert json.loads((out / "tune.json").read_text())["met"] is False


def _states(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as c:
        return dict(c.execute("select state, count(*) from trials group by state").fetchall())


@pytest.mark.slow
def test_resume_after_kill_9_loses_one_trial_at_most_and_counts_no_plan_twice(tmp_path, images):
    out = tmp_path / "out"
    args = ["-m", "segmenter-vit-t", "-i", str(images), "-r", "64x64", "--search-only", "--trials", "10",
            "--budget", "5", "-o", str(out)]
    first = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "tune.db"
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.02)
        try:
            if _states(db).get("COMPLETE", 0) >= 3:
                break
        except sqlite3.Error:
            continue
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = _states(db)
    assert 3 <= killed_at.get("COMPLETE", 0) < 10
    proc = tune(*args)
    assert proc.returncode == 0, proc.stderr
    after = _states(db)
    assert after.get("RUNNING", 0) == 0  # the killed process's trial was failed on resume, not left running
    assert after.get("FAIL", 0) == killed_at.get("RUNNING", 0)
    with sqlite3.connect(db) as c:
        keys = [k for (k,) in c.execute(
            "select a.value_json from trial_user_attributes a join trials t on a.trial_id = t.trial_id "
            "where a.key = 'key' and t.state = 'COMPLETE' and t.trial_id not in "
            "(select trial_id from trial_user_attributes where key = 'reused_from')")]
    assert len(keys) == 10 and len(set(keys)) == 10  # ten plans judged, none twice, across the kill


@pytest.mark.parametrize("args,words", [
    (["-m", "no-such-model", "--max-drop", "1"], "unknown model"),
    (["-m", "vit-t", "--max-drop", "1", "--min-speedup", "1.2"], "give one target"),
    (["-m", "vit-t", "--max-drop", "-1"], "--max-drop -1.0"),
    (["-m", "vit-t", "--min-speedup", "50"], "--min-speedup 50.0"),
    (["-m", "vit-t", "--max-drop", "1", "--storage", "postgresql+psycopg2://nobody@127.0.0.1:9/none"],
     "cannot open the study storage"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, images, args, words):
    proc = tune(*args, "-i", str(images), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_no_images_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = tune("-m", "vit-t", "--max-drop", "1", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no images" in proc.stderr
    assert not (tmp_path / "out").exists()


# ---- a real PostgreSQL server, two workers on one study --------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL server (Debian's package) on a free port, as the postgres user."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = shutil.which("initdb") or (found[-1] if found else None)
    if initdb is None or shutil.which("runuser") is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("needs PostgreSQL's initdb/pg_ctl (Debian package postgresql) and runuser")
    import tempfile

    bin_dir = Path(initdb).resolve().parent  # Debian's /usr/lib/postgresql/N/bin, createdb beside it
    data = Path(tempfile.mkdtemp(prefix="edgemerge-pg-", dir="/tmp"))  # pytest's tmp is root's alone (0700)
    shutil.chown(data, "postgres")
    port = _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    run = dict(check=True, capture_output=True, cwd="/tmp")  # the postgres user cannot enter root's folders
    subprocess.run([*as_pg, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], **run)
    subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], **run)
    try:
        subprocess.run([*as_pg, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "tune"], **run)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/tune"
    finally:
        subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, cwd="/tmp")
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path, images, postgres):
    import optuna

    args = ["-m", "segmenter-vit-t", "-i", str(images), "-r", "64x64", "--search-only", "--trials", "12",
            "--budget", "5", "--storage", postgres]
    workers = [subprocess.Popen([*CLI, *args, "-o", str(tmp_path / f"w{i}")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [r[1][-500:] for r in results]
    [summary] = optuna.study.get_all_study_summaries(postgres)
    study = optuna.load_study(study_name=summary.study_name, storage=postgres)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    judged = [t for t in done if "reused_from" not in t.user_attrs]
    workers_seen = {t.user_attrs["worker"] for t in done}
    assert len(workers_seen) == 2  # both machines' trials are in the one study
    # each worker stops once the study holds 12 judged plans: the other may finish the trial it had begun
    assert 12 <= len(judged) <= 13
    keys = [t.user_attrs["key"] for t in judged]
    assert len(set(keys)) >= len(keys) - 1  # two workers may judge one plan at the same moment, at most once


def test_the_first_generation_starts_next_to_the_shipped_variants():
    """The queued neighbours are each one parameter, one choice away from a shipped variant, never
    a shipped plan, never twice, as many as the population, in an order the seed fixes."""
    from edgemerge.tune.search import POPULATION, neighbours
    from edgemerge.tune.space import key

    space = build(get_config("segformer-b0"))
    seeds = [p for n, t in space.shipped.items() if n != "none" and (p := space.point(t)) is not None]
    near = neighbours(space, seed=0, limit=POPULATION)
    assert len(near) == POPULATION
    keys = [key(space.table(q)) for q in near]
    assert len(set(keys)) == len(keys) and not set(keys) & {key(space.table(p)) for p in seeds}

    def steps(p, q):
        return sum(abs(space.params[n].index(p[n]) - space.params[n].index(q[n])) for n in space.params)

    assert all(min(steps(p, q) for p in seeds) == 1 for q in near)
    assert near == neighbours(space, seed=0, limit=POPULATION) != neighbours(space, seed=1, limit=POPULATION)


def test_queued_seeds_are_nsga2s_first_generation():
    """Optuna gives a trial whose parameters are all queued no generation, so it would be nobody's
    parent: the seeds are put in generation 0, and the trials after them are children (generation
    1), not a second uniform random generation."""
    import optuna

    from edgemerge.tune import search

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = build(get_config("segformer-b0"))
    study = search.open_study(optuna.storages.InMemoryStorage(), "seeds", 0)
    seeds = len(search.seed_shipped(study, space)) + search.seed_neighbours(study, space, 0)
    assert seeds >= search.POPULATION

    def judge(table: dict) -> dict:  # stand-in figures: the sampler's bookkeeping is under test
        return {"drop": len(json.dumps(table)) / 100, "gflops": 1.0}

    study.optimize(search.objective(space, judge, 0.5, lambda s: None), n_trials=seeds + 4)
    gen = [t.system_attrs.get(study.sampler._get_generation_key()) for t in study.trials]
    assert gen[:seeds] == [0] * seeds and gen[seeds:] == [1] * 4


def test_the_feasible_shipped_variants_are_timed_before_the_front():
    """GFLOPs do not rank latency, so a shipped variant dominated in (drop, GFLOPs) by the search's
    plans is still timed; infeasible ones are not; the rest of the room goes to the front."""
    from edgemerge.tune.api import TuneOptions, _timing_pool

    def row(trial, drop, gflops, shipped=None):
        return {"trial": trial, "drop": drop, "gflops": gflops, "shipped": shipped, "table": {"x": trial}}

    rows = [row(0, 0.37, 4.45, "n2d"), row(1, 0.25, 4.41, "fast-pa"), row(2, 0.9, 3.0, "xfast"),
            *(row(10 + i, 0.1 + 0.01 * i, 4.4 - 0.01 * i) for i in range(6))]  # a front dominating n2d
    pool = _timing_pool(rows, TuneOptions(model="segformer-b0", images=".", max_drop=0.5, timed=4))
    assert [r["trial"] for r in pool[:2]] == [1, 0]  # shipped and feasible, by GFLOPs; xfast is over the limit
    assert len(pool) == 4 and all(not r["shipped"] for r in pool[2:])
