"""Fixtures of the CLI tests: a folder nobody can write to, a full disk."""

from __future__ import annotations

import pytest


@pytest.fixture
def unwritable(tmp_path):
    """A folder that refuses new files even for root (sysfs), or a skip when this machine has none."""
    import tempfile
    from pathlib import Path

    sysfs = Path("/sys")
    try:
        with tempfile.TemporaryFile(dir=sysfs):
            pytest.skip("/sys accepts new files here: no unwritable folder to test with")
    except OSError:
        return sysfs


@pytest.fixture
def full_disk(monkeypatch):
    """Every fsync fails with ENOSPC, as a write on a full disk does (the atomic writes all fsync)."""
    import errno
    import os

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
