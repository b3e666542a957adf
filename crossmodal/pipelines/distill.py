"""``scripts/distill.py``: from a dataset to a distilled image-only student and its evaluation report.

Stages (each logged, each with progress bars, each reusing finished work):

1. **dataset**: ``dataset_dir`` must hold a preprocessed dataset (``manifest.parquet``); when it does not and
   ``dataset.synthetic`` names a synthetic preset, the synthetic RobotCar is generated and preprocessed there first
   (``scripts/preprocess_oxford.py synthetic=<preset>``).
2. **teacher**: ``teacher_training.checkpoint`` is used as it is; otherwise ``configs/train_teacher.yaml`` is
   composed with ``teacher=<choice>``, the dataset and ``teacher_training.overrides``, and trained in
   ``teacher_training.dir/<teacher>-<config hash>/``. A finished teacher of the same config is reused; an
   interrupted one is resumed. So a sweep over ``distill=`` and ``seed=`` trains its teacher once.
3. **cache**: the teacher's outputs on the training rows (:mod:`crossmodal.training.teacher_cache`), reused while
   valid (or ``cache.file`` as it is).
4. **student, distilled**: :func:`~crossmodal.training.student.train_student` in
   ``student_training.dir/<student>-<distill>-seed<seed>-<config hash>/`` (the hash covers the student, data,
   optimiser, trainer, objective, dataset, view selection and the teacher cache's key): a finished one is reused,
   an interrupted one resumed, so re-running a killed command continues where it stopped. Its files are linked
   (or copied) into ``<run dir>/student/``, the per-invocation folder with the logs and reports.
5. **student alone** (``student_alone.enabled``): the same student with the task loss only, in
   ``student_alone.dir/<student>-<config hash>/``, shared by every ``distill=`` choice of the same student, data,
   optimiser, trainer and seed (with ``distill=none`` the distilled student *is* the student alone).
6. **evaluation**: every model on the test (evaluation) sets, students from images only, report in
   ``<run dir>/evaluation/`` (:func:`crossmodal.evaluation.evaluate_checkpoints`) and a summary of the run
   (``summary.json``, ``report.md``) in the run folder.

Model selection always uses the validation split; the test sets are only evaluated.

Concurrent jobs (a sweep through the submitit launcher, several shells) share stages 1, 2, 4 and 5 through a lock
per folder (:mod:`crossmodal.pipelines.locks`): one job generates the dataset or trains the teacher / student, the
others wait for it and reuse the result.

Under torchrun every stage runs on every rank (training and cache embedding in parallel); rank 0 alone
preprocesses, decides what to reuse, writes files and evaluates, the others wait at barriers.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from crossmodal.config import to_plain
from crossmodal.pipelines.locks import folder_lock
from crossmodal.training import distributed
from crossmodal.training.checkpoint import RESUME_IGNORED, drop_neutral
from preprocessing.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    record_run,
)

log = logging.getLogger("distill")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: Keys that do not change what a run computes (left out of the reuse hashes).
RUN_CONTROL = ("resume", "trainer.resume", "trainer.max_epochs", "trainer.progress", "trainer.threads",
               "trainer.device", "trainer.eval_test", "data_dir", "output_root", "log_level", "data.num_workers",
               "data.eval_batch_size", "data.pin_memory", "data.persistent_workers", "trainer.compile",
               "trainer.compile_backend", "trainer.compile_mode")
#: Sections of configs/distill.yaml that decide the distilled student (with the teacher cache's key).
STUDENT_KEYS = ("student", "data", "optimizer", "trainer", "distill", "dataset_dir")


def compose_config(name: str, overrides: Sequence[str] = ()) -> Any:
    """``configs/<name>.yaml`` composed with ``overrides`` (inside a running Hydra app or not)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=list(overrides))
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def config_hash(config: Mapping[str, Any], ignored: Sequence[str] = RUN_CONTROL) -> str:
    """SHA-256 of the config without the run-control keys (what decides the result)."""
    def strip(obj: Any, prefix: str) -> Any:
        if isinstance(obj, Mapping):
            kept = drop_neutral({f"{prefix}{k}": v for k, v in obj.items()})
            return {k: strip(v, f"{prefix}{k}.") for k, v in sorted(obj.items())
                    if f"{prefix}{k}" not in ignored and f"{prefix}{k}" in kept}
        return obj

    return hashlib.sha256(json.dumps(strip(config, ""), sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
def ensure_dataset(cfg: Any) -> Path:
    """The preprocessed dataset folder, generated and preprocessed first when it is an absent synthetic one."""

    root = Path(str(cfg.dataset_dir))
    if distributed.world_size() > 1:  # rank 0 prepares the dataset, the others wait for it
        error = None
        if distributed.is_main():
            try:
                _ensure_dataset(cfg, root)
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                error = f"{type(exc).__name__}: {exc}"
        error = distributed.broadcast_object(error)
        if error:
            raise RuntimeError(f"rank 0 could not prepare the dataset: {error}")
        return root
    return _ensure_dataset(cfg, root)


def _ensure_dataset(cfg: Any, root: Path) -> Path:
    from preprocessing.manifest import MANIFEST_NAME

    if (root / MANIFEST_NAME).is_file():
        return root
    preset = cfg.dataset.get("synthetic")
    if not preset:
        raise FileNotFoundError(f"{root}: no {MANIFEST_NAME}; preprocess the dataset first "
                                f"(python scripts/preprocess_oxford.py source=oxford ...), or point dataset_dir at "
                                f"a preprocessed folder")
    with folder_lock(root, "stage 1/6 dataset", collective=False):  # rank 0 alone under torchrun
        if (root / MANIFEST_NAME).is_file():  # another job made it while this one waited
            return root
        return _generate_dataset(cfg, root, preset)


def _generate_dataset(cfg: Any, root: Path, preset: str) -> Path:
    from preprocessing.cli import run as preprocess_run
    from preprocessing.manifest import MANIFEST_NAME

    log.info("stage 1/6 dataset: %s has no %s: generating and preprocessing the synthetic RobotCar (%s)", root,
             MANIFEST_NAME, preset)
    pcfg = compose_config("preprocess", [f"synthetic={preset}", f"data_dir={root.parent}",
                                         f"source.output_dir={root}", f"source.paths.raw_root={root / 'raw'}",
                                         f"progress={bool(cfg.trainer.progress)}".lower()])
    code = preprocess_run(pcfg, run_dir=root / "logs" / "preprocess" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    if code or not (root / MANIFEST_NAME).is_file():
        raise RuntimeError(f"preprocessing {root} failed (exit code {code}); see the log above")
    return root


def check_config(cfg: Any, teacher_choice: str | None) -> None:
    """Build every configured object that reads no data (the student's and the teacher stage's data modules,
    trainers, objective and the student) so that a wrong value stops the run before any stage starts (and
    before any folder of a stage is made)."""
    from hydra.utils import instantiate

    instantiate(cfg.data, _convert_="all")
    instantiate(cfg.trainer, _convert_="all")
    instantiate(cfg.distill.objective)
    instantiate(cfg.student)
    if not cfg.teacher_training.get("checkpoint") and not cfg.cache.get("file"):
        tcfg = teacher_config(cfg, Path(str(cfg.dataset_dir)), teacher_choice or "fusion")
        instantiate(tcfg.data, _convert_="all")
        instantiate(tcfg.trainer, _convert_="all")


def teacher_config(cfg: Any, dataset_dir: Path, teacher_choice: str) -> Any:
    overrides = [f"teacher={teacher_choice}", f"dataset_dir={dataset_dir}", f"output_root={cfg.output_root}",
                 f"trainer.progress={bool(cfg.trainer.progress)}".lower(), *cfg.teacher_training.overrides]
    if cfg.data.get("validate_clouds"):  # one switch for every stage (the teacher, its cache, the evaluation)
        overrides.append("data.validate_clouds=true")
    tcfg = compose_config("train_teacher", overrides)
    from omegaconf import OmegaConf

    # the teacher the distill config describes wins over the group default (e.g. teacher.* overrides)
    tcfg.teacher = OmegaConf.create(to_plain(cfg.teacher))
    return tcfg


def _stage_state(run_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """What a hash-keyed training folder holds, decided by rank 0 (the same answer on every rank):
    ``("finished", summary)``, ``("interrupted", None)`` (a ``last.pt`` to resume) or ``("new", None)``."""
    state: tuple[str, dict[str, Any] | None] | None = None
    if distributed.is_main():
        summary_file = run_dir / "summary.json"
        if summary_file.is_file() and (run_dir / "best.pt").is_file():
            try:
                summary = json.loads(summary_file.read_text())
            except ValueError:
                summary = {}
            if summary.get("finished"):
                state = ("finished", summary)
        if state is None:
            state = ("interrupted", None) if (run_dir / "last.pt").is_file() else ("new", None)
    return distributed.broadcast_object(state)


CHECKPOINTS = ("last.pt", "best.pt")


@contextlib.contextmanager
def _stage_folder(folder: Path, cfg: Any) -> Iterator[None]:
    """Record ``cfg`` in the hash-keyed ``folder`` for the stage run in the block; when the stage fails or is
    interrupted before its first checkpoint, remove the folder it created (nothing in it to resume), so that
    failed runs leave no folders holding only ``config.yaml`` and ``command.txt``."""
    existed = folder.exists()
    _record(folder, cfg)
    try:
        yield
    except BaseException:
        if distributed.is_main() and not existed and not any((folder / n).exists() for n in CHECKPOINTS):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s: the stage ended before its first checkpoint", folder)
        raise


def _record(run_dir: Path, cfg: Any) -> None:
    if distributed.is_main():
        record_run(run_dir, cfg)


def ensure_teacher(cfg: Any, dataset_dir: Path, teacher_choice: str) -> tuple[Path | None, dict[str, Any] | None]:
    """The teacher checkpoint to distil from (trained, reused or given) and its training summary if any."""
    given = cfg.teacher_training.get("checkpoint")
    if given:
        path = Path(str(given))
        path = path / "best.pt" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"teacher_training.checkpoint={given}: no checkpoint at {path}")
        summary_file = path.parent / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        log.info("stage 2/6 teacher: using %s", path)
        return path, summary
    if cfg.cache.get("file"):
        log.info("stage 2/6 teacher: none needed (cache.file=%s)", cfg.cache.file)
        return None, None
    from omegaconf import OmegaConf, open_dict

    from crossmodal.training import train_teacher

    tcfg = teacher_config(cfg, dataset_dir, teacher_choice)
    key = config_hash(to_plain(tcfg))[:12]
    run_dir = Path(str(cfg.teacher_training.dir)) / f"{teacher_choice}-{key}"
    with folder_lock(run_dir, "stage 2/6 teacher"):
        state, summary = _stage_state(run_dir)
        if state == "finished":
            log.info("stage 2/6 teacher: reusing %s (best val R@1 %.2f)", run_dir, summary["best"]["val_r1"])
            return run_dir / "best.pt", summary
        with open_dict(tcfg):
            tcfg.resume = False  # the folder is the run: continue its own last.pt, never a sibling's
        if state == "interrupted":
            log.info("stage 2/6 teacher: resuming the interrupted teacher in %s", run_dir)
            tcfg.trainer.resume = str(run_dir / "last.pt")
        else:
            log.info("stage 2/6 teacher: training %s in %s", teacher_choice, run_dir)
        OmegaConf.resolve(tcfg)
        with _stage_folder(run_dir, tcfg):
            summary = train_teacher(tcfg, run_dir, name=teacher_choice)
    if not summary.get("finished"):
        raise RuntimeError(f"teacher training in {run_dir} stopped before its last epoch; re-run to resume it")
    return run_dir / "best.pt", summary


def ensure_cache(cfg: Any, teacher_ckpt: Path | None, dataset_dir: Path):
    from hydra.utils import instantiate

    from crossmodal.training.teacher_cache import load_or_build_cache, read_cache

    objective = instantiate(cfg.distill.objective)
    if not objective.cache_outputs:
        log.info("stage 3/6 cache: not needed (distill=%s reads no teacher outputs)", cfg.distill.name)
        return None
    if cfg.cache.get("file"):
        cache = read_cache(str(cfg.cache.file))
        log.info("stage 3/6 cache: %s as given (%d rows, %d view(s))", cfg.cache.file, len(cache.sample_ids),
                 cache.views)
        return cache
    if teacher_ckpt is None:  # pragma: no cover - ensure_teacher returns one unless cache.file is set
        raise ValueError("no teacher checkpoint and no cache.file")
    outputs = cfg.cache.get("outputs")
    cache, path, built = load_or_build_cache(
        teacher_ckpt, dataset_dir, str(cfg.cache.dir), views=int(cfg.cache.views),
        outputs=None if outputs is None else list(outputs), require=list(cfg.data.require),
        device=cfg.trainer.device, batch_size=int(cfg.cache.batch_size), num_workers=int(cfg.data.num_workers),
        rebuild=bool(cfg.cache.rebuild), progress=bool(cfg.trainer.progress))
    log.info("stage 3/6 cache: %s %s", "built" if built else "reused", path)
    return cache


def _outside(cfg: Any, keys: Sequence[str]) -> tuple[str, ...]:
    """Config keys that may differ when a hash-keyed student folder is resumed: run control and every top-level
    section outside ``keys`` (the hash already pins those)."""
    return tuple(RESUME_IGNORED) + tuple(k for k in cfg if k not in keys)


def _link_results(src: Path, dst: Path) -> None:
    """``src``'s checkpoints, CSV and summary into ``dst`` (hard links, copies across file systems)."""
    import os

    for name in ("best.pt", "last.pt", "metrics.csv", "summary.json"):
        if not (src / name).is_file():
            continue
        with atomic_path(dst / name) as tmp:
            try:
                os.link(src / name, tmp)
            except OSError:
                shutil.copyfile(src / name, tmp)


def ensure_student(cfg: Any, student_choice: str, cache, run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The distilled student, trained (or reused / resumed) in its hash-keyed folder and linked into
    ``<run_dir>/student``; returns that ``best.pt`` and the training summary."""
    from omegaconf import OmegaConf

    from crossmodal.training.student import train_student

    relevant = {k: to_plain(cfg[k]) for k in STUDENT_KEYS}
    relevant["cache"] = {"select": str(cfg.cache.select), "key": None if cache is None else cache.meta.get("key")}
    key = config_hash(relevant)[:12]
    train_dir = Path(str(cfg.student_training.dir)) / f"{student_choice}-{cfg.distill.name}-seed{cfg.seed}-{key}"
    with folder_lock(train_dir, f"stage 4/6 student (distill={cfg.distill.name})"):
        state, summary = _stage_state(train_dir)
        if state == "finished":
            log.info("stage 4/6 student (distill=%s): reusing %s (best val R@1 %.2f)", cfg.distill.name, train_dir,
                     summary["best"]["val_r1"])
        else:
            scfg = copy.deepcopy(cfg)
            OmegaConf.set_struct(scfg, False)
            scfg.resume = False
            if state == "interrupted":
                scfg.trainer.resume = str(train_dir / "last.pt")
                log.info("stage 4/6 student (distill=%s): resuming the interrupted student in %s",
                         cfg.distill.name, train_dir)
            else:
                log.info("stage 4/6 student (distill=%s): training in %s", cfg.distill.name, train_dir)
            with _stage_folder(train_dir, scfg):
                summary = train_student(scfg, train_dir, cache, name=f"{student_choice} ({cfg.distill.name})",
                                        resume_ignored=_outside(cfg, STUDENT_KEYS))
    if distributed.is_main():
        _link_results(train_dir, run_dir / "student")
    distributed.barrier()
    return run_dir / "student" / "best.pt", summary


def ensure_student_alone(cfg: Any, student_choice: str) -> tuple[Path, dict[str, Any]]:
    """The student trained alone for this student/data/optimiser/trainer/seed (reused across distill choices)."""
    from omegaconf import OmegaConf

    from crossmodal.training.student import train_student

    acfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(acfg, False)
    acfg.distill = OmegaConf.create({"name": "none", "objective": to_plain(cfg.student_alone.objective)})
    acfg.resume = False
    relevant = {k: to_plain(acfg[k]) for k in STUDENT_KEYS}
    key = config_hash(relevant)[:12]
    run_dir = Path(str(cfg.student_alone.dir)) / f"{student_choice}-seed{cfg.seed}-{key}"
    with folder_lock(run_dir, "stage 5/6 student alone"):
        state, summary = _stage_state(run_dir)
        if state == "finished":
            log.info("stage 5/6 student alone: reusing %s (best val R@1 %.2f)", run_dir, summary["best"]["val_r1"])
            return run_dir / "best.pt", summary
        if state == "interrupted":
            acfg.trainer.resume = str(run_dir / "last.pt")
            log.info("stage 5/6 student alone: resuming %s", run_dir)
        else:
            log.info("stage 5/6 student alone: training in %s", run_dir)
        with _stage_folder(run_dir, acfg):
            summary = train_student(acfg, run_dir, None, name=f"{student_choice} alone",
                                    resume_ignored=_outside(acfg, STUDENT_KEYS))
    return run_dir / "best.pt", summary


def _row(label: str, summary: Mapping[str, Any] | None) -> dict[str, Any]:
    if not summary:
        return {"model": label}
    test = summary.get("test_best_checkpoint") or {}
    best = summary.get("best") or {}
    return {"model": label, "val_r1": best.get("val_r1"), "best_epoch": best.get("epoch"),
            "test_r1": test.get("r1"), "test_r1p": test.get("r1p"), "parameters": summary.get("parameters"),
            "run_dir": summary.get("run_dir")}


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def verdict(distilled: Mapping[str, Any] | None, alone: Mapping[str, Any] | None,
            teacher: Mapping[str, Any] | None = None) -> str | None:
    """The one-line answer of a run: what distillation changed on test R@1 (and how much of the gap to the teacher
    it closed); ``None`` without both students' test figures."""
    d, a = (distilled or {}).get("test_r1"), (alone or {}).get("test_r1")
    if d is None or a is None:
        return None
    line = f"distillation changed test R@1 by {d - a:+.2f} (student alone {a:.2f} → distilled {d:.2f})"
    t = (teacher or {}).get("test_r1")
    if t is not None and t - a > 0:
        line += f"; it closed {100.0 * (d - a) / (t - a):.0f} % of the gap to the teacher ({t:.2f})"
    return line


def baseline_rows(evaluation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Run-report rows of the training-free descriptors the evaluation measured on the same test sets."""
    base = ((evaluation or {}).get("baselines") or {}).get("descriptors") or {}
    return [{"model": f"{name} (training-free, {b['modality']})", "test_r1": b["r1"], "test_r1p": b["r1p"],
             "parameters": 0} for name, b in base.items()]


def write_run_report(run_dir: Path, cfg: Any, rows: list[dict[str, Any]], extra: Mapping[str, Any]) -> None:
    lines = [f"# Distillation run: distill={cfg.distill.name}, seed={cfg.seed}", ""]
    if extra.get("verdict"):
        lines += [f"**Verdict: {extra['verdict']}.**", ""]
    lines += [(f"Dataset `{cfg.dataset_dir}`; selection on validation Recall@1, figures on the test (evaluation) "
               f"sets."), "", "| model | val R@1 (best) | epoch | test R@1 | test R@1% | parameters |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in [*rows, *extra.get("baseline_rows", [])]:
        lines.append(f"| {r['model']} | {_fmt(r.get('val_r1'))} | {_fmt(r.get('best_epoch'))} | "
                     f"{_fmt(r.get('test_r1'))} | {_fmt(r.get('test_r1p'))} | {_fmt(r.get('parameters'))} |")
    lines += ["", "Run folders:", ""] + [f"- {r['model']}: `{r.get('run_dir')}`" for r in rows if r.get("run_dir")]
    if extra.get("evaluation_report"):
        lines += ["", f"Full evaluation report (per-query results, plots, latency): `{extra['evaluation_report']}`"]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")


def run_distillation(cfg: Any, run_dir: str | Path, teacher_choice: str = "fusion",
                     student_choice: str = "image") -> dict[str, Any]:
    """All stages (module doc) for a composed ``configs/distill.yaml``; returns the run summary (every rank under
    torchrun; rank 0 writes it)."""
    run_dir = Path(run_dir)
    main = distributed.is_main()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trainer.get("deterministic", False):
        import torch

        torch.set_num_threads(1)  # every stage (cache, evaluation), not only the training loops
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def mark(stage: str, since: float) -> float:
        now = time.perf_counter()
        timings[stage] = now - since
        return now

    t = t0
    check_config(cfg, teacher_choice)
    dataset_dir = ensure_dataset(cfg)
    t = mark("dataset", t)
    teacher_ckpt, teacher_summary = ensure_teacher(cfg, dataset_dir, teacher_choice)
    t = mark("teacher", t)
    cache = ensure_cache(cfg, teacher_ckpt, dataset_dir)
    t = mark("cache", t)
    is_alone = cfg.distill.name == "none"
    student_ckpt, student_summary = ensure_student(cfg, student_choice, cache, run_dir)
    t = mark("student", t)
    alone_ckpt = alone_summary = None
    if cfg.student_alone.enabled and not is_alone:
        alone_ckpt, alone_summary = ensure_student_alone(cfg, student_choice)
    t = mark("student_alone", t)

    models: dict[str, Path] = {}
    if teacher_ckpt is not None and cfg.evaluation.teacher:
        models["teacher"] = teacher_ckpt
    models["student_distilled" if not is_alone else "student_alone"] = student_ckpt
    if alone_ckpt is not None:
        models["student_alone"] = alone_ckpt
    evaluation = None
    if cfg.evaluation.report and main:  # rank 0 evaluates, the others wait below
        from crossmodal.evaluation import evaluate_checkpoints

        log.info("stage 6/6 evaluation: %s on the test sets", ", ".join(models))
        evaluation = evaluate_checkpoints(
            models, dataset_dir, run_dir / "evaluation", device=cfg.trainer.device, metric=cfg.evaluation.metric,
            index=cfg.evaluation.index, batch_size=int(cfg.data.eval_batch_size),
            num_workers=int(cfg.data.num_workers), latency=bool(cfg.evaluation.latency),
            plots=bool(cfg.evaluation.plots), progress=bool(cfg.trainer.progress),
            validate_clouds=bool(cfg.data.get("validate_clouds", False)))
    elif not cfg.evaluation.report:
        log.info("stage 6/6 evaluation: full report off (evaluation.report=false); test figures in the summaries")
    distributed.barrier()
    t = mark("evaluation", t)

    rows = []
    if cfg.evaluation.teacher:
        rows.append(_row(f"teacher ({teacher_choice})", teacher_summary))
    rows.append(_row(f"student {student_choice}, distill={cfg.distill.name}", student_summary))
    if alone_summary is not None:
        rows.append(_row(f"student {student_choice} alone", alone_summary))
    line = None if is_alone else verdict(rows[-2], rows[-1] if alone_summary is not None else None,
                                          rows[0] if cfg.evaluation.teacher else None)
    summary = {"distill": str(cfg.distill.name), "seed": int(cfg.seed), "dataset_dir": str(dataset_dir),
               "teacher_checkpoint": None if teacher_ckpt is None else str(teacher_ckpt),
               "cache": None if cache is None else cache.meta.get("key"), "rows": rows,
               "models": {k: str(v) for k, v in models.items()},
               "evaluation_report": None if evaluation is None else str(run_dir / "evaluation" / "report.md"),
               "verdict": line, "baseline_rows": baseline_rows(evaluation),
               "timings_s": timings, "wall_time_s": time.perf_counter() - t0,
               "world_size": distributed.world_size()}
    if not main:
        return summary
    atomic_write_json(run_dir / "summary.json", summary)
    write_run_report(run_dir, cfg, rows, summary)
    for r in [*rows, *summary["baseline_rows"]]:
        log.info("%s: val R@1 %s, test R@1 %s, R@1%% %s", r["model"], _fmt(r.get("val_r1")), _fmt(r.get("test_r1")),
                 _fmt(r.get("test_r1p")))
    if line:
        log.info("verdict: %s", line)
    log.info("done in %.1f s (%s); report %s", summary["wall_time_s"],
             ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), run_dir / "report.md")
    return summary
