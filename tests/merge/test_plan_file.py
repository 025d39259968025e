"""A user's plan file (`export --plan`, tune's plan.toml): export_configs' schema with one variant,
sites per group of stages, refused with the file, the key and what is allowed."""

import json
import subprocess
import sys

import pytest

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.merge.plan import GridSite, SegformerPlan, get_plan, plan_from_table, read_plan_file

PER_STAGE = """model = "segformer-b0"
[variants.mine]
kv = [{ ratio = 0.6, grid = [2, 2], stages = [1] }, { ratio = 0.9, grid = [4, 4], stages = [2] }]
q = { ratio = 0.8, grid = [4, 4], stages = [3, 4] }
[tune]
target = "max-drop 0.5"
"""


def test_sites_per_group_of_stages(tmp_path):
    (tmp_path / "p.toml").write_text(PER_STAGE)
    model, name, table, extra = read_plan_file(tmp_path / "p.toml")
    plan = plan_from_table(model, table)
    assert (model, name, extra) == ("segformer-b0", "mine", {"tune": {"target": "max-drop 0.5"}})
    assert plan == SegformerPlan(kv={1: GridSite(0.6, 2, 2), 2: GridSite(0.9, 4, 4)},
                                 q={3: GridSite(0.8, 4, 4), 4: GridSite(0.8, 4, 4)})
    # a shipped variant's table gives the shipped plan: one parser for both
    hq = {"kv": {"ratio": 0.6, "grid": [2, 2], "stages": [1, 2]}, "q": {"ratio": 0.8, "grid": [4, 4], "stages": [3, 4]}}
    assert plan_from_table("segformer-b0", hq) == get_plan("segformer-b0", "hq")
    assert plan_from_table("segformer-b0", {}) == get_plan("segformer-b0", "none")


@pytest.mark.parametrize("text,match", [
    (PER_STAGE.replace('model = "segformer-b0"\n', ""), "missing key 'model'"),
    (PER_STAGE.replace("stages = [2] }]", "stages = [1] }]"), r"kv\[1\].stages: stage 1 has a site already"),
    (PER_STAGE.replace("ratio = 0.9", "ration = 0.9"), r"variants.mine.kv\[1\]: unknown key 'ration' \(did you mean 'ratio'"),
    (PER_STAGE.replace("ratio = 0.9", "ratio = 1.5"), r"variants.mine.kv\[1\].ratio = 1.5: allowed: a number >= 0 and < 1"),
    (PER_STAGE + "[variants.other]\n", "holds 2 variants"),
    (PER_STAGE.replace("kv = [", "kv = [3, "), "must be a table"),
    ("model = \"segformer-b0\"\n[variants.x\n", "TOML syntax error"),
])
def test_bad_plan_files_name_the_key(tmp_path, text, match):
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(EdgemergeError, match=match) as e:
        read_plan_file(tmp_path / "p.toml")
    assert str(tmp_path / "p.toml") in str(e.value)


def test_plan_file_for_another_model_is_refused(tmp_path):
    (tmp_path / "p.toml").write_text(PER_STAGE)
    with pytest.raises(EdgemergeError, match="is for segformer-b0, not deit-t"):
        read_plan_file(tmp_path / "p.toml", "deit-t")


@pytest.mark.slow
def test_export_plan_round_trip(tmp_path):
    """export --plan writes the table into the manifest and model.onnx's stamp; validate rebuilds the
    reference from it (the file may be gone) and passes; an edited table is refused."""
    plan = tmp_path / "p.toml"
    plan.write_text(PER_STAGE)
    cli = [sys.executable, "-m", "edgemerge.cli"]
    out = tmp_path / "b"
    proc = subprocess.run(cli + ["export", "--plan", str(plan), "-r", "128x128", "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variant"] == "mine" and manifest["plan_file"]["table"]["kv"][1]["ratio"] == 0.9
    assert [s["kv_kept"] for s in manifest["plan"]["stages"][:2]] == [7, 2]  # 16 - int(16 * 0.6), 16 - int(16 * 0.9)
    plan.unlink()
    proc = subprocess.run(cli + ["validate", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    manifest["plan_file"]["table"]["kv"][1]["ratio"] = 0.5
    (out / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run(cli + ["validate", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "plan_table" in proc.stderr, proc.stderr
    proc = subprocess.run(cli + ["export", "--plan", str(tmp_path / "p.toml"), "-v", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_two_sites_matching_on_one_tensor_self_check(tmp_path):
    """Stage 4 has no spatial reduction: its queries and keys/values sites match on the same tensor,
    which the graph exposes once. The self-check must pair every site with its own decision (found
    by tune's search: it used to fail with an IndexError)."""
    plan = tmp_path / "p.toml"
    plan.write_text('model = "segformer-b0"\n[variants.shared]\n'
                    'kv = { ratio = 0.7, grid = [2, 2], stages = [4] }\nq = { ratio = 0.5, grid = [2, 2], stages = [4] }\n')
    proc = subprocess.run([sys.executable, "-m", "edgemerge.cli", "export", "--plan", str(plan), "-r", "128x128",
                           "-o", str(tmp_path / "b")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-800:]
    decisions = json.loads((tmp_path / "b" / "manifest.json").read_text())["self_check"]["merge_decisions"]
    assert decisions["sites"] == 4 and decisions["same_destination_worst"] == 1.0
