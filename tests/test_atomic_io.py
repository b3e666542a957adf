"""Atomic writes (preprocessing/io.py): the file appears whole or not at all, and a failure names the file, the
real cause and the fix even where the temporary file cannot be removed (read-only output, issue 13)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from preprocessing.errors import OutputError
from preprocessing.io import atomic_write_text, atomic_write_with


def test_success_leaves_only_the_file(tmp_path):
    atomic_write_text(tmp_path / "a" / "x.txt", "hello")
    assert (tmp_path / "a" / "x.txt").read_text() == "hello"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.txt"]


def test_failed_write_removes_the_temporary_and_keeps_the_old_file(tmp_path):
    (tmp_path / "x.txt").write_text("old")

    def writer(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"x.txt: No space left on device; the disk is full"):
        atomic_write_with(tmp_path / "x.txt", writer)
    assert (tmp_path / "x.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_read_only_output_names_the_real_error(tmp_path, monkeypatch):
    """On a read-only file system both the write and the removal of the temporary fail: the message must be the
    write's (read-only, choose a writable folder), not the cleanup's."""

    def writer(tmp: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))

    def unlink(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(OutputError, match=r"cannot write .*db.npz: Read-only file system; the file system is "
                                          r"read-only: choose a writable output folder"):
        atomic_write_with(tmp_path / "db.npz", writer)

    def interrupted(tmp: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # not replaced by the cleanup's OSError either
        atomic_write_with(tmp_path / "db.npz", interrupted)
