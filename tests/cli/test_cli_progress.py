"""Long commands report progress on stderr when it is not a terminal (plain lines, no file:line
suffix), and Ctrl-C in the middle of one exits 130 with one line and no file left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli, tree
from edgemerge.contracts.images import synthetic_images

REPO = Path(__file__).resolve().parents[2]


def _images(folder: Path, n: int) -> Path:
    folder.mkdir()
    im = synthetic_images(1, 64, 64, seed=3)[0]
    Image.fromarray((im.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / "img000.png")
    for i in range(1, n):
        shutil.copy(folder / "img000.png", folder / f"img{i:03d}.png")
    return folder


def test_calibrate_progress_lines_without_a_terminal(tmp_path):
    images = _images(tmp_path / "images", 20)
    res = run_cli("calibrate", "-m", "segmenter-vit-t", "-i", images, "-r", "64x64", "-o", tmp_path / "cal.json")
    assert res.exit_code == 0, res.output
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("edgemerge: calibrating")]
    # the first, every tenth (2 images of 20), the last: 1, 2, 4, ..., 20
    assert progress == [f"edgemerge: calibrating: image {i}/20" for i in [1, *range(2, 21, 2)]]
    assert not any(".py:" in ln for ln in res.stderr.splitlines())


@pytest.mark.slow
def test_ctrl_c_during_calibrate_exits_130(tmp_path):
    images = _images(tmp_path / "images", 400)
    out = tmp_path / "out" / "cal.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "edgemerge.cli", "calibrate", "-m", "segmenter-vit-t",
                             "-i", str(images), "-r", "256x256", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            # a runner started in the background (`cmd &`) hands its children SIGINT
                            # ignored, and Python then installs no KeyboardInterrupt handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stderr.readline()  # the calibration is under way
        assert first.startswith("edgemerge: calibrating: image 1/400"), first
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [ln for ln in rest.splitlines() if not ln.startswith("edgemerge: calibrating")]
    assert proc.returncode == 130, rest
    assert lines == ["edgemerge: interrupted"], rest
    assert tree(tmp_path) == [p for p in tree(tmp_path) if p.startswith("images")]  # no out/, no temp file


def test_progress_on_a_terminal_is_rich_without_file_line(capsys, monkeypatch):
    """On a terminal: rich's live status and a logged line per step, none with rich's file:line
    suffix (`export.py:42`); otherwise the plain `edgemerge: ...` lines above."""
    import re

    from rich.console import Console

    from edgemerge.cli import progress_reporter

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    with progress_reporter("calibrating") as report:
        report("calibrating: image 1/2")
        report("calibrating: image 2/2")
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\]8;[^\x1b]*\x1b\\", "", capsys.readouterr().err)  # no ANSI, no links
    assert "calibrating: image 1/2" in err and "calibrating: image 2/2" in err
    assert "edgemerge: calibrating" not in err  # the live display, not the plain lines
    assert not re.search(r"\w+\.py:\d+", err), err
