"""Teacher embedding cache: the frozen teacher runs once over the training split, the student step never does.

DistilVPR caches its teacher's descriptors of the training set so that the student step needs only images.
:func:`load_or_build_cache` does the same, better:

- **views**: the clean view (evaluation transform) plus ``views`` augmented views (the training augmentation of
  the teacher's own data settings, draw ``v`` = augmentation epoch ``AUG_EPOCH_BASE + v``); upstream caches one
  augmented view. Which view a student step sees is :meth:`TeacherCache.lookup`'s ``select``: ``clean`` (view 0),
  ``random`` (one view per sample and epoch, from ``(seed, epoch, sample_id)``) or ``mean``.
- **every output** of the teacher is stored (fusion: ``descriptor`` 384-d, ``cloud`` 128-d, ``image`` 256-d), so
  multi-teacher teaching can use the branches as extra teachers without running anything again.
- **keyed** by a SHA-256 of the teacher checkpoint file, the manifest file, the rows, the teacher's data settings
  (quantisation, image size, augmentation) and the view settings. The file is
  ``<cache dir>/teacher-<key[:16]>.safetensors`` and also records the key, the teacher's config and fingerprint;
  a file whose recorded key differs (stale, or a collision) or that cannot be read is rebuilt, with the reason
  logged. Written atomically (temporary file + rename).
- **parallel** under torchrun: every rank embeds a contiguous share of the rows, the shares are gathered, rank 0
  writes the one file (the others wait at a barrier); every rank returns the whole cache.

The teacher is built from its checkpoint (:func:`~crossmodal.training.checkpoint.build_model`) and embeds with
the data settings it was trained with (its checkpoint's ``data`` config: quantisation, image size), on the rows of
the dataset being distilled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import crossmodal
from preprocessing.io import atomic_path

from . import distributed
from .checkpoint import build_model, load_checkpoint
from .multistage import move_batch

log = logging.getLogger(__name__)

CACHE_FORMAT = "crossmodal-teacher-cache/1"
SELECTS = ("clean", "random", "mean")
#: Augmentation epochs used for the cached views (far from any training epoch's draws).
AUG_EPOCH_BASE = 1_000_000
#: Teacher data settings that change its embeddings (and so the cache key).
KEY_DATA_FIELDS = ("quantization_size", "image_size", "image_augment", "cloud_augment", "seed")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class TeacherCache:
    """Cached teacher outputs: ``tensors[output]`` is ``[V, N, D]`` float32 (view 0 clean), rows in the order of
    ``sample_ids`` [N]."""

    def __init__(self, sample_ids: np.ndarray, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]):
        self.sample_ids = np.asarray(sample_ids, np.int64)
        self.tensors = {k: v.float() for k, v in tensors.items()}
        self.meta = dict(meta)
        shapes = {k: tuple(v.shape) for k, v in self.tensors.items()}
        for k, s in shapes.items():
            if len(s) != 3 or s[1] != len(self.sample_ids):
                raise ValueError(f"teacher cache output {k!r} has shape {s}, expected [views, {len(self.sample_ids)}, D]")
        if len({s[0] for s in shapes.values()}) > 1:
            raise ValueError(f"teacher cache outputs disagree on the number of views: {shapes}")
        order = np.argsort(self.sample_ids, kind="stable")
        self._sorted_ids, self._order = self.sample_ids[order], order
        self._device_cache: dict[tuple[str, str], Tensor] = {}

    @property
    def views(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0]) if self.tensors else 0

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.tensors)

    def dims(self) -> dict[str, int]:
        return {k: int(v.shape[2]) for k, v in self.tensors.items()}

    def rows_of(self, sample_ids: np.ndarray | Tensor) -> np.ndarray:
        """Cache rows of ``sample_ids``; a KeyError naming how many (and one example) are not cached."""
        ids = np.asarray(sample_ids.cpu() if isinstance(sample_ids, Tensor) else sample_ids, np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        pos_c = np.minimum(pos, max(len(self._sorted_ids) - 1, 0))
        ok = (pos < len(self._sorted_ids)) & (self._sorted_ids[pos_c] == ids) if len(self._sorted_ids) else \
            np.zeros(len(ids), bool)
        if not ok.all():
            raise KeyError(f"{int((~ok).sum())} of {len(ids)} samples are not in the teacher cache (e.g. sample_id "
                           f"{int(ids[~ok][0])}); the cache was built on other rows: delete it or set "
                           f"cache.rebuild=true")
        return self._order[pos_c]

    def check_covers(self, sample_ids: np.ndarray) -> None:
        self.rows_of(sample_ids)

    def _on(self, output: str, device: torch.device) -> Tensor:
        key = (output, str(device))
        if key not in self._device_cache:
            if output not in self.tensors:
                raise KeyError(f"the teacher cache holds outputs {list(self.tensors)}, not {output!r}")
            self._device_cache[key] = self.tensors[output].to(device)
        return self._device_cache[key]

    def lookup(self, sample_ids: np.ndarray | Tensor, output: str = "descriptor", select: str = "clean",
               epoch: int = 0, seed: int = 0, device: str | torch.device = "cpu") -> Tensor:
        """``[B, D]`` teacher outputs of ``sample_ids`` (see the module doc for ``select``)."""
        if select not in SELECTS:
            raise ValueError(f"cache select must be one of {SELECTS}, got {select!r}")
        device = torch.device(device)
        table = self._on(output, device)
        rows = torch.from_numpy(self.rows_of(sample_ids)).to(device)
        if select == "clean" or self.views == 1:
            return table[0].index_select(0, rows)
        if select == "mean":
            return table.index_select(1, rows).mean(0)
        ids = np.asarray(sample_ids.cpu() if isinstance(sample_ids, Tensor) else sample_ids, np.int64)
        views = torch.from_numpy(_view_draw(ids, epoch, seed, self.views)).to(device)
        return table[views, rows]


def _view_draw(sample_ids: np.ndarray, epoch: int, seed: int, views: int) -> np.ndarray:
    """A view per sample, a pure function of ``(seed, epoch, sample_id)`` (splitmix64 hash)."""
    x = (sample_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
         + np.uint64((seed * 1_000_003 + epoch) % 2**63))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x % np.uint64(views)).astype(np.int64)


def cache_key(checkpoint_sha: str, manifest_sha: str, sample_ids: Sequence[int], data: Mapping[str, Any],
              views: int, outputs: Sequence[str] | None) -> str:
    payload = {"format": CACHE_FORMAT, "checkpoint": checkpoint_sha, "manifest": manifest_sha,
               "rows": hashlib.sha256(np.asarray(sample_ids, np.int64).tobytes()).hexdigest(),
               "data": {k: data.get(k) for k in KEY_DATA_FIELDS}, "views": int(views),
               "outputs": None if outputs is None else sorted(outputs)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def save_cache(path: str | Path, cache: TeacherCache) -> None:
    from safetensors.torch import save_file

    tensors = {f"out.{k}": v.contiguous() for k, v in cache.tensors.items()}
    tensors["sample_ids"] = torch.from_numpy(cache.sample_ids.copy())
    meta = {"format": CACHE_FORMAT, "meta": json.dumps(cache.meta, sort_keys=True, default=str)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_cache(path: str | Path) -> TeacherCache:
    """A cache file; ValueError naming the file when it is not a readable crossmodal teacher cache."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {header.get('format')!r}, expected {CACHE_FORMAT!r}")
            tensors = {k[4:]: f.get_tensor(k) for k in f.keys() if k.startswith("out.")}  # noqa: SIM118
            ids = f.get_tensor("sample_ids").numpy()
            meta = json.loads(header.get("meta", "{}"))
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise ValueError(f"{path}: not a readable teacher cache ({type(exc).__name__}: {exc}); delete it to "
                         f"rebuild") from None
    return TeacherCache(ids, tensors, meta)


@torch.no_grad()
def embed_views(teacher: torch.nn.Module, dm, views: int, device: torch.device, outputs: Sequence[str] | None,
                progress: bool = True) -> tuple[np.ndarray, dict[str, Tensor]]:
    """Run ``teacher`` (eval mode) over ``dm``'s training rows: the clean view, then ``views`` augmented draws.

    Under torchrun every rank embeds a contiguous share of the rows (every view) and the shares are gathered, so
    every rank returns the whole tables."""
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from crossmodal.data import PlaceCollate

    teacher.eval()
    clean = dm.dataset("train", augment=False)
    sample_ids = clean.sample_ids.copy()
    sets = [clean]
    if views:
        aug = dm.dataset("train", augment=True)
        if not np.array_equal(aug.sample_ids, sample_ids):  # pragma: no cover - same manifest, same filter
            raise RuntimeError("augmented and clean training datasets hold different rows")
        sets += [aug] * views
    result: dict[str, Tensor] = {}
    start, stop = distributed.shard_range(len(sample_ids))
    total = (stop - start) * len(sets)
    bar = tqdm(total=total, desc="teacher cache", unit="sample", disable=not progress or not distributed.is_main(),
               dynamic_ncols=True)
    for v, ds in enumerate(sets):
        if v:
            ds.set_epoch(AUG_EPOCH_BASE + v)
        rows = ds if (start, stop) == (0, len(sample_ids)) else Subset(ds, range(start, stop))
        loader = DataLoader(rows, batch_size=dm.eval_batch_size, shuffle=False,
                            collate_fn=PlaceCollate(dm.quantization_size, None), **dm._loader_kwargs())
        for batch in loader:
            out = teacher(move_batch(batch, device))
            keys = [k for k in out if outputs is None or k in outputs]
            missing = [k for k in (outputs or ()) if k not in out]
            if missing:
                raise KeyError(f"the teacher returns {sorted(out)}, not the requested cache outputs {missing}")
            idx = batch["indices"].to(torch.long)
            for k in keys:
                val = out[k].detach().float().cpu()
                if k not in result:
                    result[k] = torch.zeros(len(sets), len(sample_ids), val.shape[1])
                result[k][v, idx] = val
            bar.update(int(idx.numel()))
    bar.close()
    if distributed.world_size() > 1:  # [V, N, D] with this rank's rows filled -> everyone's rows
        keys = distributed.broadcast_object(sorted(result))
        result = {k: distributed.gather_rows(result[k][:, start:stop].transpose(0, 1).contiguous())
                  .transpose(0, 1).contiguous() for k in keys}
    return sample_ids, result


def load_or_build_cache(teacher_checkpoint: str | Path, dataset_dir: str | Path, cache_dir: str | Path, *,
                        views: int = 0, outputs: Sequence[str] | None = None, require: Sequence[str] | None = None,
                        device: str | torch.device = "cpu", batch_size: int = 64, num_workers: int = 0,
                        rebuild: bool = False, progress: bool = True) -> tuple[TeacherCache, Path, bool]:
    """The cache of ``teacher_checkpoint`` on ``dataset_dir``'s training rows: reused when its key matches,
    (re)built otherwise. Returns ``(cache, path, built)``."""
    from hydra.utils import instantiate

    from preprocessing.manifest import MANIFEST_NAME

    if views < 0:
        raise ValueError(f"cache.views must be >= 0, got {views}")
    teacher_checkpoint, dataset_dir = Path(teacher_checkpoint), Path(dataset_dir)
    ckpt = load_checkpoint(teacher_checkpoint, map_location="cpu", expect_role="teacher")
    tdata = dict((ckpt.get("config") or {}).get("data") or {})
    if "_target_" not in tdata:
        raise ValueError(f"{teacher_checkpoint}: the checkpoint config has no data section to embed with")
    manifest = dataset_dir / MANIFEST_NAME if dataset_dir.is_dir() else dataset_dir
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no manifest; preprocess the dataset first (scripts/preprocess_oxford.py)")
    from .trainer import model_modalities

    teacher = build_model(ckpt)
    tdata.update(root=str(dataset_dir), modalities=list(model_modalities(teacher)),
                 require=list(require) if require is not None else tdata.get("require"),
                 eval_batch_size=int(batch_size), num_workers=int(num_workers), persistent_workers=False)
    dm = instantiate(tdata, _convert_="all")
    ids = dm.dataset("train", augment=False).sample_ids
    key = cache_key(file_sha256(teacher_checkpoint), file_sha256(manifest), ids, tdata, views, outputs)
    path = Path(cache_dir) / f"teacher-{key[:16]}.safetensors"
    if distributed.world_size() > 1:
        # rank 0 looks for a valid file; the others read it, or everyone embeds a share and rank 0 writes it
        found = distributed.broadcast_object(_valid_cache(path, key, rebuild) is not None
                                             if distributed.is_main() else None)
        if found:
            cache = read_cache(path)
            log.info("teacher cache: reusing %s (%d rows, %d view(s))", path, len(cache.sample_ids), cache.views)
            return cache, path, False
    elif (cache := _valid_cache(path, key, rebuild)) is not None:
        return cache, path, False
    device = torch.device(device)
    teacher.to(device)
    log.info("teacher cache: embedding %d training rows x %d view(s) with %s -> %s", len(ids), 1 + views,
             ckpt.get("model_class"), path)
    sample_ids, tensors = embed_views(teacher, dm, views, device, outputs, progress)
    meta = {"key": key, "teacher_checkpoint": str(teacher_checkpoint), "teacher_fingerprint": ckpt.get("fingerprint"),
            "teacher_class": ckpt.get("model_class"), "teacher_epoch": ckpt.get("epoch"),
            "teacher_config": ckpt.get("config", {}).get("teacher"), "data": {k: tdata.get(k) for k in KEY_DATA_FIELDS},
            "views": views, "dataset_dir": str(dataset_dir), "version": crossmodal.__version__}
    cache = TeacherCache(sample_ids, tensors, meta)
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_cache(path, cache)
    distributed.barrier()
    return cache, path, True


def _valid_cache(path: Path, key: str, rebuild: bool) -> TeacherCache | None:
    """The cache at ``path`` when it is readable and records ``key`` (and no rebuild is asked), else None (the
    reason logged)."""
    if path.is_file() and not rebuild:
        try:
            cache = read_cache(path)
            if cache.meta.get("key") == key:
                log.info("teacher cache: reusing %s (%d rows, %d view(s), outputs %s)", path, len(cache.sample_ids),
                         cache.views, cache.dims())
                return cache
            log.warning("teacher cache %s: recorded key differs (stale); rebuilding", path)
        except ValueError as exc:
            log.warning("teacher cache: %s; rebuilding", exc)
    elif rebuild:
        log.info("teacher cache: rebuild requested")
    return None
