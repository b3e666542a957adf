"""Training checkpoints: atomic save, architecture/config checks, resume state.

A checkpoint (``torch.save`` of a dict, written to a temporary file and renamed) holds:
``format``, ``role`` (``teacher`` / ``student``: also the key of the model config in ``config``), ``version`` (``crossmodal.__version__``), ``model_class`` (``module.QualName``), ``fingerprint``
(SHA-256 of the state dict's sorted ``key:shape:dtype`` lines), ``config`` (the resolved run config as a plain
dict), ``epoch`` (epochs completed), ``model`` (state dict), ``optimizer``, ``scheduler``, ``sampler``
(``{"batch_size", "epoch"}``), ``rng`` (torch / numpy / python states), ``metrics`` (this epoch's row),
``best`` (best validation figures so far) and ``history`` (every epoch's log row).

:func:`check_compatible` refuses a checkpoint of another model class or state-dict layout, naming the differing
keys / shapes, and (for resume) a run config that differs outside the run-control keys of :data:`RESUME_IGNORED`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from preprocessing.io import atomic_write_with

FORMAT = "crossmodal-checkpoint/1"
#: Older teacher checkpoints (read as ``role: teacher``).
LEGACY_FORMATS = ("crossmodal-teacher-checkpoint/1",)
#: What a checkpoint holds: ``role`` is also the key of the model's ``_target_`` config in ``config``.
ROLES = ("teacher", "student")

#: Config keys (dotted prefixes) that may change between an interrupted run and its resumption: run control,
#: paths, loader performance settings.
RESUME_IGNORED = ("resume", "trainer.resume", "trainer.max_epochs", "trainer.progress", "trainer.threads",
                  "trainer.device", "trainer.eval_test", "data_dir", "dataset_dir", "output_root", "data.root",
                  "data.num_workers", "data.eval_batch_size", "data.pin_memory", "data.persistent_workers",
                  "trainer.compile", "trainer.compile_backend", "trainer.compile_mode")

#: Options added after checkpoints and reuse hashes existed, with the value at which they change nothing: a key at
#: its neutral value counts as absent, so older checkpoints still resume and older run folders are still reused.
NEUTRAL_DEFAULTS = {"trainer.sync_batchnorm": False, "trainer.precision": "fp32", "data.place_fraction": 1.0,
                    "data.place_cell_m": 100.0}


def drop_neutral(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``flat`` (dotted keys) without the keys at their :data:`NEUTRAL_DEFAULTS` value."""
    return {k: v for k, v in flat.items() if not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])}


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model or the run config; the message names what differs."""


def class_name(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def state_layout(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex, 16 chars) of the sorted ``key:shape:dtype`` lines of a state dict."""
    lines = [f"{k}:{'x'.join(map(str, s))}:{d}" for k, (s, d) in sorted(state_layout(state).items())]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def upgrade_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the key names of ``model``'s current layout: each submodule that renamed its parameters
    since a checkpoint was written offers ``upgrade_state_dict(state, prefix)`` (the image branches: the GeM
    head's ``conv.*`` / ``pool.p`` now live under ``head.``); ``load_state_dict`` applies the same renames."""
    out = dict(state)
    for name, module in model.named_modules():
        upgrade = getattr(module, "upgrade_state_dict", None)
        if callable(upgrade):
            upgrade(out, f"{name}." if name else "")
    return out


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically (temporary file + rename)."""
    atomic_write_with(path, lambda tmp: torch.save(dict(payload), tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    expect_role: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file: any unpickling error
        raise CheckpointMismatchError(f"{path}: cannot read a checkpoint ({type(exc).__name__}: {exc}); it is "
                                      f"damaged or not a crossmodal checkpoint: pass the best.pt (or last.pt) a "
                                      f"training run wrote") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (FORMAT, *LEGACY_FORMATS):
        raise CheckpointMismatchError(f"{path}: not a crossmodal checkpoint (format "
                                      f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}, "
                                      f"expected {FORMAT!r})")
    ckpt.setdefault("role", "teacher")
    if expect_role is not None and ckpt["role"] != expect_role:
        raise CheckpointMismatchError(f"{path}: a {ckpt['role']} checkpoint ({ckpt.get('model_class')}) where a "
                                      f"{expect_role} checkpoint is expected")
    return ckpt


def build_model(ckpt: Mapping[str, Any], load_weights: bool = True) -> nn.Module:
    """The model a checkpoint describes: ``instantiate(config[role])``, with its weights unless told not to."""
    from hydra.utils import instantiate

    role = ckpt.get("role", "teacher")
    cfg = (ckpt.get("config") or {}).get(role)
    if not isinstance(cfg, Mapping) or "_target_" not in cfg:
        raise CheckpointMismatchError(f"checkpoint ({ckpt.get('model_class')}) has no config.{role}._target_ to "
                                      f"build its model from")
    model = instantiate(dict(cfg))
    if load_weights:
        check_compatible(ckpt, model, None, source=f"{role} checkpoint")
        model.load_state_dict(ckpt["model"])
    return model


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: obj}


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any],
                       ignored: Iterable[str] = ()) -> list[str]:
    """``key: old -> new`` lines for the dotted keys whose values differ (keys under ``ignored`` skipped)."""
    ignored = tuple(ignored)
    a, b = drop_neutral(_flatten(old)), drop_neutral(_flatten(new))

    def skip(k: str) -> bool:
        return any(k == p or k.startswith(p + ".") for p in ignored)

    lines = []
    for k in sorted(set(a) | set(b)):
        if skip(k):
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            lines.append(f"{k}: {va!r} -> {vb!r}")
    return lines


def layout_differences(ckpt_state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor],
                       limit: int = 12) -> list[str]:
    a, b = state_layout(ckpt_state), state_layout(model_state)
    missing = sorted(set(b) - set(a))
    unexpected = sorted(set(a) - set(b))
    shapes = sorted(f"{k}: checkpoint {a[k][0]} {a[k][1]} vs model {b[k][0]} {b[k][1]}"
                    for k in set(a) & set(b) if a[k] != b[k])
    lines = []
    for title, items in (("keys missing from the checkpoint", missing), ("keys the model lacks", unexpected),
                         ("shape/dtype mismatches", shapes)):
        if items:
            shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
            lines.append(f"{title} ({len(items)}): {shown}")
    return lines


def check_compatible(ckpt: Mapping[str, Any], model: nn.Module, config: Mapping[str, Any] | None = None,
                     source: str = "checkpoint", ignored: Iterable[str] = RESUME_IGNORED) -> None:
    """Raise :class:`CheckpointMismatchError` when ``ckpt`` was not made by a model like ``model`` (class and
    state-dict layout) or, given ``config``, by a run config that differs outside ``ignored``."""
    problems = []
    if ckpt.get("model_class") != class_name(model):
        problems.append(f"model class: checkpoint {ckpt.get('model_class')} vs model {class_name(model)}")
    state = model.state_dict()
    if ckpt.get("fingerprint") != fingerprint(state) and fingerprint(upgrade_state(model, ckpt["model"])) != \
            fingerprint(state):
        problems.append(f"state-dict fingerprint: checkpoint {ckpt.get('fingerprint')} vs model "
                        f"{fingerprint(state)}")
        problems += ["  " + line for line in layout_differences(upgrade_state(model, ckpt["model"]), state)]
    if config is not None:
        diffs = config_differences(ckpt.get("config", {}), config, ignored)
        if diffs:
            problems.append(f"run config differs in {len(diffs)} key(s) (resume needs the same config):")
            problems += ["  " + d for d in diffs[:30]]
    if problems:
        raise CheckpointMismatchError(f"{source} does not match this run:\n" + "\n".join(problems))
