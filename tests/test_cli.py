"""The CLI skeleton: help, version, the zoo listing, one-line errors for bad checkpoints."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from edgemerge import __version__
from edgemerge.cli import main
from edgemerge.models.registry import list_models


def test_help_lists_commands():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ("models", "plan", "export", "build", "validate", "bench", "show", "calibrate"):
        assert cmd in res.output


def test_version():
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_models_json_lists_every_name():
    res = CliRunner().invoke(main, ["models", "--json"])
    assert res.exit_code == 0
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == list_models()
    for r in rows:
        assert {"name", "family", "params", "resolution"} <= set(r)
        assert r["params"] > 0 and len(r["resolution"]) == 2
    b5 = next(r for r in rows if r["name"] == "segformer-b5")
    assert 80e6 < b5["params"] < 90e6  # published 84.7M


def _one_line_error(args, code=2):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == code, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("edgemerge: error:")]
    assert len(errors) == 1
    return errors[0]


def test_truncated_checkpoint(tmp_path):
    from edgemerge.models.registry import build_model

    path = tmp_path / "b0.pth"
    torch.save(build_model("segformer-b0").state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _one_line_error(["export", "-m", "segformer-b0", "-c", str(path), "-o", str(tmp_path / "out")])
    assert "not a readable checkpoint" in msg and not (tmp_path / "out").exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(256)) * 64)
    msg = _one_line_error(["export", "-m", "segformer-b0", "-c", str(path), "-o", str(tmp_path / "out")])
    assert "not a readable checkpoint" in msg


def test_class_count_mismatch(tmp_path):
    from edgemerge.models.registry import build_model

    path = tmp_path / "b0.pth"
    torch.save(build_model("segformer-b0", num_classes=19).state_dict(), path)
    msg = _one_line_error(["export", "-m", "segformer-b0", "-c", str(path), "--num-classes", "150",
                           "-o", str(tmp_path / "out")])
    assert "19" in msg and "150" in msg


def test_every_command_module_registers_its_command():
    """The CLI imports each module in COMMAND_MODULES without swallowing an import error, and each
    registers the command of its name (a renamed module must not silently drop a command)."""
    from edgemerge.cli import COMMAND_MODULES, main

    assert {m.replace("_", "-") for m in COMMAND_MODULES} <= set(main.commands)

