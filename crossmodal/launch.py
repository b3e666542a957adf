"""Entry-point helpers that must run before torch loads (no torch import here).

Under ``torchrun --nproc_per_node=N`` every process runs the whole Hydra entry point. Rank 0 owns the run folder
(Hydra's ``.hydra/`` copy, the log file, the files the run writes); :func:`hydra_rank_overrides` gives the other
ranks no run folder of their own and console-only logging, so a launch leaves one run folder. The entry points
then take rank 0's run folder (``crossmodal.training.distributed.broadcast_object``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import NoReturn

#: Overrides for ranks > 0: the run folder is the current directory (created by nobody), no ``.hydra/`` copy, and
#: Hydra's console-only job logging.
RANK_OVERRIDES = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout")


def torchrun_rank(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` from torchrun's environment; ``(0, 1)`` outside torchrun."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def hydra_rank_overrides(environ: Mapping[str, str] | None = None) -> list[str]:
    """Hydra overrides to append to the command line of a torchrun process of rank > 0 (none otherwise)."""
    rank, world = torchrun_rank(environ)
    return list(RANK_OVERRIDES) if world > 1 and rank > 0 else []


def quiet_launcher_schema_warning() -> None:
    """Silence Hydra's "validated against ConfigStore schema with the same name" warning for this project's
    ``configs/hydra/launcher/submitit_*.yaml`` (they take the plugin's names on purpose, so that
    ``hydra/launcher=submitit_slurm`` gets this project's defaults, validated against the plugin's schema)."""
    warnings.filterwarnings("ignore", message=r"(?s).*hydra/launcher/submitit_\w+' is validated against ConfigStore")


def refuse_multirun_under_torchrun(argv: list[str], environ: Mapping[str, str] | None = None) -> None:
    """``torchrun ... script.py -m ...`` would run a whole sweep in every rank: stop with a clear message (sweeps
    go through Hydra's launchers, one job per point; DDP inside a job through torchrun)."""
    _, world = torchrun_rank(environ)
    if world > 1 and any(a in ("-m", "--multirun") for a in argv[1:]):
        raise SystemExit("error: a Hydra multirun (-m) under torchrun is not supported: run the sweep with "
                         "hydra/launcher=submitit_slurm (one job per point) and torchrun inside a job, or "
                         "torchrun one configuration at a time (docs/scaling.md)")


def prepare_argv(argv: list[str]) -> None:
    """What every Hydra entry point does before Hydra parses ``argv`` (``sys.argv``, changed in place): refuse a
    multirun under torchrun, quiet the launcher schema warning, and give ranks > 0 no run folder."""
    refuse_multirun_under_torchrun(argv)
    quiet_launcher_schema_warning()
    argv += hydra_rank_overrides()


#: Exception classes (by name, so that this module imports nothing heavy) that are the user's to fix: wrong values,
#: missing or damaged files, unwritable outputs. Entry points end on them with one ``error:`` line and exit code 2.
USER_ERRORS = ("ValueError", "FileNotFoundError", "PermissionError", "IsADirectoryError", "NotADirectoryError",
               "InputError", "OutputError", "NoTripletsError", "ConfigKeyError", "ValidationError",
               "InterpolationResolutionError", "InstantiationException", "EmptyDatabaseError")
DEBUG_ENV = "CROSSMODAL_DEBUG"


def is_user_error(exc: BaseException) -> bool:
    return any(cls.__name__ in USER_ERRORS for cls in type(exc).__mro__)


@contextlib.contextmanager
def user_errors(environ: Mapping[str, str] | None = None, run_dir: str | os.PathLike | None = None
                ) -> Iterator[None]:
    """Around an entry point's work: a user error (:data:`USER_ERRORS`) is logged (so the run's log file records
    what ended it) and ends the process with one ``error: ...`` line on stderr and exit code 2, no traceback;
    ``CROSSMODAL_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1``) lets it propagate with its traceback. Any other
    exception is logged with its traceback and propagates. SIGTERM acts as Ctrl-C in the block
    (:func:`preprocessing.processes.sigterm_as_interrupt`: worker processes are stopped on the way out); either
    ends the process with one ``interrupted ...`` line and exit code 130 (SIGINT) or 143 (SIGTERM). With
    ``run_dir`` (the run's folder; written by torchrun rank 0 only), whatever ended the run is also recorded in
    its ``summary.json`` (``finished: false``, ``error``, ``reason``: user_error / interrupted / crash)."""
    from preprocessing.processes import Terminated, sigterm_as_interrupt, terminated

    env = os.environ if environ is None else environ
    debug = env.get(DEBUG_ENV, "0") not in ("", "0") or env.get("HYDRA_FULL_ERROR") == "1"
    log = logging.getLogger("crossmodal")
    try:
        with sigterm_as_interrupt():
            yield
    except Exception as exc:
        if terminated() and not debug:  # a worker killed by the same SIGTERM (pkill -f) failed first: a stop
            _stopped(Terminated(), f" ({type(exc).__name__}: {exc})", run_dir, environ)
        if not is_user_error(exc) or debug:
            log.exception("run failed: %s", type(exc).__name__)
            _record_failure(run_dir, "user_error" if is_user_error(exc) else "crash",
                            f"{type(exc).__name__}: {exc}", environ)
            _flush_logs()
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        log.error("run failed: %s", message)
        _record_failure(run_dir, "user_error", message, environ)
        _flush_logs()
        print(f"error: {message} (traceback: {DEBUG_ENV}=1)", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:
        if debug:
            raise
        _stopped(exc, "", run_dir, environ)


def _stopped(exc: KeyboardInterrupt, detail: str, run_dir, environ) -> NoReturn:
    """End an interrupted run: log and record it, one line on stderr, the shell's exit code."""
    from preprocessing.processes import interrupt_message, quiet_teardown

    quiet_teardown()
    message, code = interrupt_message(exc)
    logging.getLogger("crossmodal").warning("run %s%s", message, detail)
    _record_failure(run_dir, "interrupted", message, environ)
    _flush_logs()
    print(message, file=sys.stderr)
    raise SystemExit(code) from None


def _record_failure(run_dir: str | os.PathLike | None, reason: str, message: str,
                    environ: Mapping[str, str] | None) -> None:
    """``<run_dir>/summary.json`` saying why the run ended (never over a finished run's summary)."""
    if run_dir is None or torchrun_rank(environ)[0] != 0:
        return
    import json
    from pathlib import Path

    from preprocessing.io import atomic_write_json

    path = Path(run_dir) / "summary.json"
    try:
        if path.is_file() and json.loads(path.read_text()).get("finished"):
            return
    except (OSError, ValueError, AttributeError):
        pass
    try:
        atomic_write_json(path, {"finished": False, "reason": reason, "error": message})
    except OSError as exc:  # an unwritable run folder must not hide the error that ended the run
        logging.getLogger("crossmodal").warning("could not record the failure in %s: %s", path, exc)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
