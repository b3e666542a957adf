"""Checkpoints for tests and examples: a student or a teacher with random weights, in the format the trainers
write (``crossmodal.training.checkpoint``), so evaluation and deployment can be exercised without training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STUDENTS = {
    "image": {"_target_": "crossmodal.models.students.ImageStudent", "out_dim": 384, "backbone": "resnet18",
              "layers_up_to": "layer3", "pretrained": None, "gem_p": 3.0},
    "light": {"_target_": "crossmodal.models.students.LightImageStudent", "out_dim": 384,
              "variant": "mobilenet_v3_small", "pretrained": None, "gem_p": 3.0},
}


def _payload(role: str, model, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    import crossmodal
    from crossmodal.training.checkpoint import FORMAT, class_name, fingerprint

    state = model.state_dict()
    return {"format": FORMAT, "role": role, "version": getattr(crossmodal, "__version__", "0"),
            "model_class": class_name(model), "fingerprint": fingerprint(state), "config": dict(config),
            "model": state, "epoch": 0, "best": {}, "history": [], **(extra or {})}


def make_student_checkpoint(path: str | Path, kind: str = "light", image_size: Sequence[int] | None = (24, 32),
                            seed: int = 0, out_dim: int = 384, data_root: str | Path | None = None) -> Path:
    """Write a random-weight student checkpoint (``kind``: ``light`` = MobileNetV3-small, ``image`` = ResNet18
    to layer3) whose ``input.image_size`` is ``image_size`` (H, W)."""
    import torch
    from hydra.utils import instantiate

    from crossmodal.data import IMAGENET_MEAN, IMAGENET_STD
    from crossmodal.training.checkpoint import save_checkpoint

    cfg = dict(STUDENTS[kind], out_dim=out_dim)
    torch.manual_seed(seed)
    model = instantiate(cfg).eval()
    size = None if image_size is None else [int(image_size[0]), int(image_size[1])]
    config = {"student": cfg, "data": {"root": str(data_root) if data_root else None, "image_size": size,
                                       "quantization_size": 0.01}}
    extra = {"input": {"image_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "mode": "RGB"}}
    save_checkpoint(path, _payload("student", model, config, extra))
    return Path(path)


def make_teacher_checkpoint(path: str | Path, teacher: str = "fusion", seed: int = 0,
                            image_size: Sequence[int] | None = None) -> Path:
    """Write a tiny random-weight teacher checkpoint (``crossmodal.training.testing.tiny_overrides``)."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from crossmodal.training.checkpoint import save_checkpoint
    from crossmodal.training.testing import compose_train_teacher, tiny_overrides

    cfg = compose_train_teacher(tiny_overrides(teacher) + ["data_dir=/nonexistent"])
    torch.manual_seed(seed)
    model = instantiate(cfg.teacher).eval()
    config = OmegaConf.to_container(cfg, resolve=True)
    config["data"]["image_size"] = None if image_size is None else list(image_size)
    save_checkpoint(path, _payload("teacher", model, config))
    return Path(path)


def brute_force_recall(db, qs, sets, n_nb=25, metric="euclidean"):
    """``(Recall@1..n_nb, Recall@1%)`` of the PointNetVLAD protocol written independently of
    :mod:`crossmodal.evaluation.protocol`: a per-query loop, float64 numpy distances, a stable sort (the reference
    the faiss evaluation is tested against)."""
    import numpy as np

    recalls, one_pcts = [], []
    for m in range(len(db)):
        for n in range(len(qs)):
            if m == n or len(db[m]) == 0:
                continue
            k1 = max(int(round(len(db[m]) / 100.0)), 1)  # noqa: RUF046 - upstream's expression
            hits, one, evaluated = np.zeros(n_nb), 0, 0
            for key in sorted(sets[n]):
                truth = sets[n][key].get(m, [])
                if not truth:
                    continue
                evaluated += 1
                q = np.asarray(qs[n][key], np.float64)
                x = np.asarray(db[m], np.float64)
                if metric == "euclidean":
                    d = np.sqrt(((x - q) ** 2).sum(1))
                else:
                    d = 1 - (x @ q) / np.linalg.norm(x, axis=1) / np.linalg.norm(q)
                ranked = np.argsort(d, kind="stable")
                for j in range(n_nb):
                    hits[j] += np.isin(ranked[:j + 1], truth).any()
                one += np.isin(ranked[:k1], truth).any()
            if evaluated:
                recalls.append(hits / evaluated * 100)
                one_pcts.append(one / evaluated * 100)
    return np.mean(recalls, axis=0), float(np.mean(one_pcts))
