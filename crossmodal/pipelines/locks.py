"""One job at a time per hash-keyed training folder: concurrent sweep jobs (Hydra's submitit launcher, several
shells) that need the same teacher or the same student alone train it once; the others wait and reuse it.

:func:`folder_lock` takes an exclusive ``flock`` on ``<parent>/.locks/<name>.lock`` for the folder
``<parent>/<name>``. The kernel drops it when
the holder's process ends, however it ends (``SIGKILL``, a SLURM time limit), so a lock is never stale; the file
itself stays (it records the last holder's host, pid and start time, for the waiting message). ``flock`` works on
local file systems and on NFS (Linux emulates it with POSIX byte-range locks; NFSv3 needs ``lockd``). Where the
file system refuses locks, the stage runs unlocked with a warning.

Under torchrun, rank 0 alone holds the lock; every rank polls together (one broadcast per poll), so waiting
never runs into the process group's timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from crossmodal.training import distributed

log = logging.getLogger(__name__)

POLL_ENV = "CROSSMODAL_LOCK_POLL_S"
LOCK_DIR = ".locks"  # beside the locked folders, so that listing them shows folders only


def _try_lock(path: Path):
    """An open handle holding the exclusive lock on ``path``, ``None`` when another process holds it, or
    ``False`` when locking is unavailable here."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - the handle is the lock: it lives until release()
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    except OSError as exc:  # e.g. ENOLCK on a file system without locks
        fh.close()
        log.warning("%s: cannot lock (%s); running this stage without protection against a concurrent job", path,
                    exc)
        return False
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "since": datetime.datetime.now().isoformat(timespec="seconds")}))
    fh.flush()
    return fh


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, poll_s: float | None = None, collective: bool = True
                ) -> Iterator[float]:
    """Hold the lock of ``folder`` (``<parent>/.locks/<name>.lock``) for the ``with`` block, waiting while another job holds it;
    yields the seconds waited. ``what`` names the stage in the waiting message; ``poll_s``: seconds between tries
    (default ``$CROSSMODAL_LOCK_POLL_S`` or 5). ``collective=False``: this process alone locks and waits (code that
    runs on rank 0 only under torchrun)."""
    if poll_s is None:
        poll_s = float(os.environ.get(POLL_ENV, "5"))
    folder = Path(folder)
    path = folder.parent / LOCK_DIR / f"{folder.name}.lock"
    main = distributed.is_main() or not collective
    handle = None
    t0, said = time.monotonic(), False
    while True:
        got = None
        if main:
            handle = _try_lock(path)
            got = handle is not None
        if distributed.broadcast_object(got) if collective else got:
            break
        if main and not said:
            log.info("%s: waiting for %s, which holds %s (another job is training it; this one reuses it after)",
                     what, _holder(path), path)
            said = True
        time.sleep(poll_s)
    waited = time.monotonic() - t0
    if said:
        log.info("%s: lock %s acquired after %.0f s", what, path, waited)
    try:
        yield waited
    finally:
        if handle:
            handle.close()  # releases the flock
