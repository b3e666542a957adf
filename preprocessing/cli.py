"""The ``scripts/preprocess_oxford.py`` job, given a composed Hydra config."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig

from preprocessing.errors import InputError, OutputError
from preprocessing.io import record_run

log = logging.getLogger("preprocess")


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> int:
    """Generate the synthetic RobotCar when configured, then preprocess; returns the process exit code."""
    from preprocessing.processes import (
        interrupt_message,
        quiet_teardown,
        sigterm_as_interrupt,
    )

    logging.getLogger().setLevel(cfg.get("log_level", "INFO"))
    t0 = time.perf_counter()
    try:
        with sigterm_as_interrupt():  # SIGTERM stops the workers as Ctrl-C does
            report = _generate_and_preprocess(cfg, run_dir)
    except KeyboardInterrupt as exc:
        quiet_teardown()
        message, code = interrupt_message(exc)
        log.warning("%s", message)
        print(message, file=sys.stderr)
        return code
    except (InputError, OutputError) as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    totals = report.to_json()["totals"]
    print(f"done in {time.perf_counter() - t0:.1f} s: {totals['runs']} runs, {totals['submaps']} submaps, "
          f"{totals['pairs']} paired, {totals['unpaired']} unpaired, {totals['skipped']} skipped inputs")
    print(f"splits: {report.splits}; evaluation: {report.eval_sets}")
    print(f"report: {report.outputs.get('report')}; manifest: {report.outputs.get('manifest')}")
    return 0


def _generate_and_preprocess(cfg: DictConfig, run_dir: str | Path | None):
    from preprocessing.pipeline import preprocess

    if run_dir is not None:
        record_run(run_dir, cfg)
    sources = instantiate(cfg.source.paths)
    if cfg.source.generate:
        from preprocessing.synthetic import generate_synthetic_robotcar

        gen_cfg = instantiate(cfg.synthetic.generator)
        log.info("synthetic RobotCar (%s) in %s", cfg.synthetic.preset, sources.raw_root)
        generate_synthetic_robotcar(sources.raw_root, gen_cfg, workers=cfg.workers, progress=cfg.progress)
    return preprocess(sources, cfg.output_dir, submaps=instantiate(cfg.submaps), pairing=instantiate(cfg.pairing),
                      splits=instantiate(cfg.splits), workers=cfg.workers, drop_unpaired=cfg.drop_unpaired,
                      progress=cfg.progress)


class CheckOutputWritable(Callback):
    """Hydra callback: before Hydra creates the run directory (the sweep directory for ``-m``), make sure it can;
    otherwise stop with one line naming the folder and exit code 2 (Hydra itself would fail with a bare
    traceback). Used by every entry point's config (``hydra.callbacks.check_output``)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # run.dir may read ${hydra:runtime.choices...}; Hydra sets it next
        _check_creatable(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _check_creatable(Path(str(config.hydra.sweep.dir)))


def _check_creatable(folder: Path) -> None:
    from preprocessing.io import output_error

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: {output_error(folder, exc)}", file=sys.stderr)
        sys.exit(2)
