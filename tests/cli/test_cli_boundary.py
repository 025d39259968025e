"""The CLI boundary: usage errors, OSErrors and Ctrl-C end as one line with their exit code."""

from __future__ import annotations

import errno
import os

import pytest

from cli_helpers import one_line_error, run_cli, tree
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.files import check_output_dir, check_output_file, write_files


def test_negative_seed_is_refused(tmp_path):
    msg = one_line_error(run_cli("export", "-m", "segformer-b0", "--seed", "-1", "-o", tmp_path / "b"))
    assert "--seed" in msg and "export --help" in msg
    assert tree(tmp_path) == []


def test_negative_seed_refused_by_the_library(tmp_path):
    from edgemerge.contracts.manifest import ExportOptions
    from edgemerge.export.bundle import export_bundle

    with pytest.raises(EdgemergeError, match="seed must be >= 0"):
        export_bundle(ExportOptions(model="segformer-b0", variant="fast", seed=-1, out=str(tmp_path / "b")))


def test_unknown_command_is_one_line():
    assert "No such command" in one_line_error(run_cli("exprt"))


def test_os_error_is_one_line(monkeypatch):
    import edgemerge.merge.flops as flops

    def lost(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/x/y.json")

    monkeypatch.setattr(flops, "gflops", lost)
    msg = one_line_error(run_cli("plan", "-m", "segformer-b0", "-v", "fast"))
    assert msg == "edgemerge: error: cannot write /x/y.json: Permission denied"


def test_ctrl_c_exits_130_not_1(monkeypatch):
    import edgemerge.merge.flops as flops

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(flops, "gflops", interrupted)
    res = run_cli("plan", "-m", "segformer-b0", "-v", "fast")
    assert res.exit_code == 130, res.output
    assert res.stderr.splitlines() == ["edgemerge: interrupted"] and "Traceback" not in res.output


def test_output_checks_create_nothing(tmp_path):
    check_output_file(tmp_path / "a" / "b" / "c.json")
    check_output_dir(tmp_path / "d" / "e")
    assert tree(tmp_path) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(EdgemergeError, match="is a directory"):
        check_output_file(tmp_path)
    with pytest.raises(EdgemergeError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "f")


def test_write_files_is_all_or_nothing(tmp_path, monkeypatch):
    (tmp_path / "old.json").write_text("old")
    calls = []
    real = os.fsync

    def second_fails(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", second_fails)
    with pytest.raises(OSError) as e:
        write_files([(tmp_path / "old.json", b"new"), (tmp_path / "sub" / "b.png", b"png")])
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "sub" / "b.png")
    assert tree(tmp_path) == ["old.json"] and (tmp_path / "old.json").read_text() == "old"
