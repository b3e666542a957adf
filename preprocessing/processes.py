"""Child processes that end with their parent: a worker pool that an interrupt stops at once, and SIGTERM handled
like Ctrl-C.

:func:`worker_pool` is a ``spawn`` :class:`~concurrent.futures.ProcessPoolExecutor` whose workers ignore SIGINT
(a Ctrl-C reaches the whole process group: the parent decides, so that no worker dies holding a queue lock, which
once hung a job on shutdown) and whose parent, when the ``with`` block ends on an exception or an interrupt,
cancels the queued jobs and terminates, joins and if need be kills the workers instead of waiting for them.

:func:`sigterm_as_interrupt` makes SIGTERM raise :class:`Terminated` (a :class:`KeyboardInterrupt`) in the main
thread, so that a ``kill`` or a scheduler's stop runs the same clean-up as Ctrl-C: ``finally`` blocks, pools,
DataLoader workers (Python's default SIGTERM action ends the process at once and leaves them orphaned).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator

#: Seconds a terminated worker gets to exit before it is killed.
JOIN_TIMEOUT_S = 5.0
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # blocked while workers start (_start_workers)


class Terminated(KeyboardInterrupt):
    """SIGTERM received (see :func:`sigterm_as_interrupt`)."""


def interrupt_message(exc: KeyboardInterrupt) -> tuple[str, int]:
    """``(line, exit code)`` for an interrupt: the signal's name and the shell's code for it (130 / 143)."""
    signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
    return (f"interrupted by {signal.Signals(signum).name}; finished work is kept, re-run the same command to "
            f"resume"), 128 + int(signum)


def quiet_teardown() -> None:
    """Once an interrupt arrived: objects the signal left half-built (a DataLoader iterator, a multiprocessing
    finaliser caught in ``__init__``) fail in their ``__del__`` when collected, and helper threads (the file
    descriptor sharer of DataLoader workers) fail when the workers they talk to are stopped; Python prints each
    with a traceback around the one-line message. Those reports go to the debug log instead
    (``sys.unraisablehook``, ``threading.excepthook``, ``sys.excepthook``, which multiprocessing's threads call);
    the process is ending anyway."""
    log = logging.getLogger("crossmodal")

    def unraisable(report) -> None:
        log.debug("ignored while stopping: %s in %r", report.exc_type.__name__, report.object)

    def thread_error(args) -> None:
        log.debug("ignored while stopping: %s in thread %s", args.exc_type.__name__, args.thread)

    def error(exc_type, exc, tb) -> None:
        log.debug("ignored while stopping: %s: %s", exc_type.__name__, exc)

    sys.unraisablehook, threading.excepthook, sys.excepthook = unraisable, thread_error, error


_RECEIVED: list[int] = []  # SIGTERMs received under sigterm_as_interrupt (the current block)


def terminated() -> bool:
    """Whether SIGTERM arrived in the current :func:`sigterm_as_interrupt` block. ``kill`` or ``pkill -f`` can hit
    the worker processes too, and a worker's death may surface first as another error: it is still a stop."""
    return bool(_RECEIVED)


def _raise_terminated(signum, frame) -> None:
    _RECEIVED.append(int(signum))
    quiet_teardown()
    raise Terminated(f"received signal {signal.Signals(signum).name}")


def _raise_interrupt(signum, frame) -> None:
    quiet_teardown()
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread, and either signal first makes the
    teardown quiet (:func:`quiet_teardown`); handlers restored after. Outside the main thread it does nothing
    (Python allows signal handlers there only). A SIGINT ignored by the launcher stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _RECEIVED.clear()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


def _worker_start(initializer: Callable | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked since the start (_start_workers)
    if initializer is not None:
        initializer(*initargs)


def _nothing() -> None:
    return None


def _start_workers(pool: cf.ProcessPoolExecutor, workers: int) -> None:
    """Start all ``workers`` now with SIGINT and SIGTERM blocked in this thread while they start: a signal that
    arrives meanwhile is delivered (not lost) once every worker is registered with the pool, so that stopping the
    pool reaches them all; the started processes inherit the blocked mask, so a Ctrl-C while a worker is still
    importing prints no traceback (its initializer then ignores SIGINT and unblocks both)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        for _ in range(workers):  # each submit starts one process while none is idle
            pool.submit(_nothing)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stop_workers(pool: cf.ProcessPoolExecutor, join_timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """Cancel ``pool``'s queued jobs and end its worker processes now (SIGTERM, then SIGKILL after
    ``join_timeout_s``), without waiting for running jobs."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API stops running jobs
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(join_timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join(join_timeout_s)


@contextlib.contextmanager
def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()
                ) -> Iterator[cf.ProcessPoolExecutor]:
    """A ``spawn`` process pool of ``workers`` processes for the ``with`` block (see the module doc): a normal
    exit waits for the jobs; an exception or an interrupt stops every worker before it propagates."""
    import multiprocessing

    pool = cf.ProcessPoolExecutor(max_workers=int(workers), mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_worker_start, initargs=(initializer, tuple(initargs)))
    try:
        _start_workers(pool, int(workers))
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)

