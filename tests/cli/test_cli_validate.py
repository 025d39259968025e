"""`edgemerge validate` refuses bad output folders and limits before any work, in one line (exit 2),
leaves nothing behind on a full disk, and exits 130 on Ctrl-C."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")

from cli_helpers import one_line_error, run_cli, tree  # noqa: E402

from edgemerge.export.bundle import ExportOptions, export_bundle  # noqa: E402
from edgemerge.validate import reference  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b0"
    export_bundle(ExportOptions(model="segformer-b0", variant="fast", resolution=(128, 128), out=str(out)))
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test when validation gets as far as rebuilding the model: refusals come first."""
    def started(*a, **k):
        raise AssertionError("the work started before the input was refused")

    monkeypatch.setattr(reference, "build_from_manifest", started)


def test_out_is_an_existing_file(bundle, tmp_path, no_work):
    f = tmp_path / "report"
    f.write_text("keep")
    msg = one_line_error(run_cli("validate", bundle, "--out", f))
    assert "not a directory" in msg and str(f) in msg
    assert f.read_text() == "keep"


def test_out_below_a_file(bundle, tmp_path, no_work):
    (tmp_path / "afile").write_text("x")
    msg = one_line_error(run_cli("validate", bundle, "--out", tmp_path / "afile" / "rep"))
    assert "afile is not a directory" in msg


def test_out_unwritable(bundle, unwritable, no_work):
    msg = one_line_error(run_cli("validate", bundle, "--out", unwritable / "edgemerge-report"))
    assert "not writable" in msg and "Permission denied" in msg


@pytest.mark.parametrize("args, words", [
    (["--min-agreement", "2"], "--min-agreement"), (["--min-agreement", "-0.1"], "--min-agreement"),
    (["--rtol", "-1"], "--rtol"), (["--atol", "-1"], "--atol"), (["--atol", "nan"], "--atol"),
])
def test_limits_refused_before_work(bundle, tmp_path, no_work, args, words):
    msg = one_line_error(run_cli("validate", bundle, "--out", tmp_path / "rep", *args))
    assert words in msg
    assert not (tmp_path / "rep").exists()


def test_full_disk_leaves_nothing(bundle, tmp_path, full_disk):
    out = tmp_path / "reports" / "rep"
    msg = one_line_error(run_cli("validate", bundle, "-n", "1", "--out", out))
    assert "No space left on device" in msg and "report" in msg
    assert tree(tmp_path) == []  # neither the folders it made nor a temp file


def test_ctrl_c_exits_130(bundle, tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(reference, "build_from_manifest", interrupted)
    res = run_cli("validate", bundle, "--out", tmp_path / "rep")
    assert res.exit_code == 130 and res.stderr.strip().splitlines() == ["edgemerge: interrupted"], res.output
    assert "Traceback" not in res.output and tree(tmp_path) == []
