"""Teacher training: per-branch optimiser, teacher loss, multi-stage backprop, validation recall, checkpoints,
and the training loop behind ``scripts/train_teacher.py`` (see ``docs/teacher.md``)."""

from .checkpoint import (
    CheckpointMismatchError,
    build_model,
    check_compatible,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from .losses import LossTerm, TeacherLoss
from .multistage import forward_backward, move_batch, split_batch
from .optim import OptimizerConfig, group_lrs, param_groups
from .trainer import TrainerConfig, model_modalities, train_teacher
from .validation import EvalSets, embed, evaluate, load_eval_sets

__all__ = [
    "CheckpointMismatchError",
    "EvalSets",
    "LossTerm",
    "OptimizerConfig",
    "TeacherLoss",
    "TrainerConfig",
    "build_model",
    "check_compatible",
    "embed",
    "evaluate",
    "fingerprint",
    "forward_backward",
    "group_lrs",
    "load_checkpoint",
    "load_eval_sets",
    "model_modalities",
    "move_batch",
    "param_groups",
    "save_checkpoint",
    "split_batch",
    "train_teacher",
]
