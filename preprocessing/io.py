"""Atomic file writes: write to a temporary name in the destination folder, then rename.

A crash, a full disk or a kill leaves either the old file or the new one, never half a file. Errors from the
operating system are turned into :class:`~preprocessing.errors.OutputError` naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from preprocessing.errors import OutputError

_HINTS = {
    errno.ENOSPC: "the disk is full: free space or choose another output folder, then re-run (finished work is kept)",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another output folder, then re-run",
    errno.EACCES: "the folder is not writable: fix its permissions or choose another output folder",
    errno.EROFS: "the file system is read-only: choose a writable output folder",
    errno.EPERM: "permission denied: fix the permissions or choose another output folder",
}


def output_error(path: str | Path, exc: OSError) -> OutputError:
    hint = _HINTS.get(exc.errno, "check that the output folder exists and is writable")
    return OutputError(f"cannot write {path}: {exc.strerror or exc}; {hint}")


def _temporary_name(path: Path) -> Path:
    """``.<name>.<pid>-<thread>.tmp`` beside ``path``: unique per writer without ``mkstemp``'s cost, and matched by
    :func:`clean_stale_temporaries`."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on failure removed."""
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise output_error(path, exc) from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a failed write's temporary file; a failure to remove it (a read-only file system, where it was never
    created) must not hide the error that ended the write."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and rename the result into place (for writers that need a file name)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def clean_stale_temporaries(folder: str | Path) -> int:
    """Remove ``.*.tmp`` leftovers of a killed run below ``folder``; returns how many were removed."""
    n = 0
    for p in Path(folder).rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def record_run(run_dir: str | Path, cfg) -> None:
    """Write a run's resolved config (``config.yaml``) and command line (``command.txt``) into ``run_dir``."""
    import shlex
    import sys

    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(run_dir / "command.txt", shlex.join([sys.executable] + sys.argv) + "\n")
