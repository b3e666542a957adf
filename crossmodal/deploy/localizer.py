"""Localisation with a deployed image-only student: embed images, keep a database of descriptors with their
positions, and return the best matches of a query image.

    loc = Localizer.from_checkpoint("runs/distill/.../best.pt")     # or Localizer.from_onnx("student.onnx")
    loc.add_database(image_paths, positions)                         # images (or descriptors) + [N, 2] positions
    loc.save_database("db.npz")                                      # later: loc.load_database("db.npz")
    matches = loc.query("query.png", k=5)                            # [Match(rank, id, position, distance)]

A database remembers the model that built it (SHA-256 of its weights, descriptor size, input spec); loading it
into a localizer running another model is an error naming both. Teachers are refused: they read LiDAR, and the
deployed model must be the image-only student.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.io import atomic_path

from ..evaluation.search import IndexSpec, SearchIndex, as_descriptors, check_metric
from .inputs import ImageInputError, InputSpec, as_image_list, preprocess

DB_FORMAT = "crossmodal-localizer-db/1"


class EmptyDatabaseError(RuntimeError):
    """A query against a database with no entries."""


class DatabaseMismatchError(ValueError):
    """A database built with another model (or another descriptor size / input) than the localizer's."""


class NotAStudentError(ValueError):
    """A checkpoint that is not an image-only student where one is expected (e.g. a teacher)."""


@dataclasses.dataclass(frozen=True)
class Match:
    rank: int  #: 1 = best
    id: str  #: the database entry's id
    position: tuple[float, float]  #: (northing, easting) or whatever 2-D position the database was given
    distance: float  #: Euclidean or cosine distance (the localizer's metric)
    index: int  #: row in the database


def weights_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a state dict's names, dtypes, shapes and values, in sorted key order."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype!s}:{tuple(t.shape)}\n".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def freeze_for_inference(model):
    """Inference-time simplification, in place: every GeM pooling's learned exponent becomes a Python float
    (``x ** 3.0`` runs a specialised kernel; ``x ** tensor`` a generic exp/log one, 4–8x slower on the feature
    map). The outputs are unchanged up to float rounding; the model can no longer learn ``p``."""
    import torch

    from crossmodal.models.pooling import GeM

    class FrozenGeM(torch.nn.Module):
        def __init__(self, p: float, eps: float):
            super().__init__()
            self.p, self.eps = p, eps

        def forward(self, x):
            return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)

        def extra_repr(self) -> str:
            return f"p={self.p:.4f} (frozen), eps={self.eps}"

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GeM):
                setattr(parent, name, FrozenGeM(float(child.p.detach().reshape(-1)[0]), float(child.eps)))
    return model.eval()


def load_student(path: str | Path, device: str = "cpu", image_size: Sequence[int] | None = None,
                 freeze: bool = True):
    """``(model, input spec, identity, checkpoint)`` of a student checkpoint, in eval mode (``freeze``: with
    :func:`freeze_for_inference` applied); :class:`NotAStudentError` for a teacher."""
    import torch

    from crossmodal.training.checkpoint import build_model, load_checkpoint

    path = Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    role = ckpt.get("role", "teacher")
    if role != "student":
        teacher = (ckpt.get("config") or {}).get("teacher") or {}
        raise NotAStudentError(
            f"{path}: a {role} checkpoint ({ckpt.get('model_class')}, config.{role}._target_ "
            f"{teacher.get('_target_', '?')}) where an image-only student is expected; a teacher may read LiDAR and "
            f"cannot be deployed with a camera alone. Give a student checkpoint (written by scripts/distill.py).")
    spec = InputSpec.from_checkpoint(ckpt, image_size, source=str(path))
    model = build_model(ckpt).to(device).eval()
    if isinstance(getattr(model, "cloud", None), torch.nn.Module):
        raise NotAStudentError(f"{path}: role 'student' but {ckpt.get('model_class')} has a LiDAR ('cloud') branch")
    if freeze:
        freeze_for_inference(model)
    identity = {"model_class": ckpt.get("model_class"), "fingerprint": ckpt.get("fingerprint"),
                "weights_sha256": weights_digest(ckpt["model"]), "checkpoint": str(path),
                "epoch": ckpt.get("epoch")}
    return model, spec, identity, ckpt


class _TorchEncoder:
    def __init__(self, model, device: str = "cpu"):
        self.model, self.device = model.eval(), device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(x).to(self.device))["descriptor"]
        return out.float().cpu().numpy()


class _OnnxEncoder:
    def __init__(self, session):
        self.session = session
        self.input = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0].astype(np.float32, copy=False)


class Localizer:
    """Image → descriptor → nearest database entries (see the module doc).

    Args:
        encoder: callable ``[B, 3, H, W] float32 → [B, D] float32``.
        spec: the network's input (:class:`InputSpec`).
        identity: the model's identity (``weights_sha256``, ``model_class``, ...), stored with databases.
        metric: ``euclidean`` or ``cosine``. index: ``flat`` / ``ivf`` / ``hnsw`` / an :class:`IndexSpec`.
        batch_size: images per forward in :meth:`embed`. resize: resize images of another size instead of
            refusing them.
    """

    def __init__(self, encoder, spec: InputSpec, identity: Mapping[str, Any], metric: str = "euclidean",
                 index: Any = "flat", batch_size: int = 32, resize: bool = False, backend: str = "torch"):
        self.encoder = encoder
        self.spec = spec
        self.identity = dict(identity)
        self.metric = check_metric(metric)
        self.index_spec = IndexSpec.parse(index)
        self.batch_size = max(int(batch_size), 1)
        self.resize = bool(resize)
        self.backend = backend
        self.descriptor_dim: int | None = self.identity.get("descriptor_dim")
        self.clear_database()

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", metric: str = "euclidean", index: Any = "flat",
                        image_size: Sequence[int] | None = None, batch_size: int = 32,
                        resize: bool = False) -> Localizer:
        """A localizer running a student checkpoint with PyTorch; a teacher checkpoint is refused
        (:class:`NotAStudentError`)."""
        model, spec, identity, _ = load_student(path, device, image_size)
        loc = cls(_TorchEncoder(model, device), spec, identity, metric, index, batch_size, resize, "torch")
        loc.model = model
        loc.descriptor_dim = int(loc.encoder(np.zeros((1, 3, *spec.image_size), np.float32)).shape[1])
        loc.identity["descriptor_dim"] = loc.descriptor_dim
        return loc

    @classmethod
    def from_onnx(cls, path: str | Path, metric: str = "euclidean", index: Any = "flat", threads: int | None = None,
                  batch_size: int = 32, resize: bool = False) -> Localizer:
        """A localizer running an ONNX export (:func:`crossmodal.deploy.export_onnx`) with onnxruntime."""
        from .export import onnx_session, read_onnx_metadata

        spec, identity = read_onnx_metadata(path)
        loc = cls(_OnnxEncoder(onnx_session(path, threads)), spec, identity, metric, index, batch_size, resize,
                  "onnxruntime")
        loc.descriptor_dim = int(loc.encoder(np.zeros((1, 3, *spec.image_size), np.float32)).shape[1])
        loc.identity["descriptor_dim"] = loc.descriptor_dim
        return loc

    # -- embedding ----------------------------------------------------------------------------------------
    def embed(self, images: Any, progress: bool = False) -> np.ndarray:
        """``[N, D]`` float32 descriptors of images (paths, PIL images, ``H x W x 3`` uint8 arrays; one or a list)."""
        items = as_image_list(images)
        if not items:
            raise ImageInputError("no images given")
        from tqdm import tqdm

        out = []
        starts = range(0, len(items), self.batch_size)
        for s in tqdm(starts, desc="embed", leave=False, disable=not progress or len(starts) < 2):
            out.append(self.encoder(preprocess(items[s:s + self.batch_size], self.spec, self.resize, start=s)))
        return np.concatenate(out)

    # -- database -----------------------------------------------------------------------------------------
    def clear_database(self) -> None:
        self._descriptors = np.zeros((0, self.descriptor_dim or 0), np.float32)
        self._positions = np.zeros((0, 2), np.float64)
        self._ids: list[str] = []
        self._index: SearchIndex | None = None

    @property
    def database_size(self) -> int:
        return len(self._ids)

    def __len__(self) -> int:
        return self.database_size

    def _is_descriptors(self, items: Any) -> bool:
        return isinstance(items, np.ndarray) and items.ndim == 2 and np.issubdtype(items.dtype, np.floating)

    def add_database(self, items: Any, positions: Any, ids: Sequence[Any] | None = None,
                     progress: bool = False) -> int:
        """Add entries: images (embedded here) or an ``[N, D]`` float descriptor array, with ``[N, 2]`` positions
        and optional ids (default: running numbers; file names for image paths). Returns the database size.
        An IVF index is trained on the first call's descriptors: add a large database in one call."""
        if hasattr(items, "detach") and hasattr(items, "numpy"):  # a torch tensor of descriptors
            items = items.detach().cpu().numpy()
        if self._is_descriptors(items):
            desc = as_descriptors(items, "database descriptors")
            if desc.shape[1] != self.descriptor_dim:
                raise ValueError(f"database descriptors have dimension {desc.shape[1]}, the model gives "
                                 f"{self.descriptor_dim}-d descriptors (were they made by another model?)")
            default_ids = None
        else:
            listed = as_image_list(items)
            desc = self.embed(listed, progress)
            default_ids = [Path(x).name if isinstance(x, (str, Path)) else None for x in listed]
        pos = np.asarray(positions, np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) != len(desc):
            raise ValueError(f"positions must be [N, 2] with one row per database entry ({len(desc)}), got shape "
                             f"{pos.shape}")
        if not np.isfinite(pos).all():
            raise ValueError("positions hold NaN or infinite values")
        if ids is None:
            start = self.database_size
            ids = [d if d is not None else str(start + i) for i, d in enumerate(default_ids or [None] * len(desc))]
        ids = [str(x) for x in ids]
        if len(ids) != len(desc):
            raise ValueError(f"{len(ids)} ids for {len(desc)} database entries")
        if self._index is None:
            self._index = SearchIndex(self.descriptor_dim, self.metric, self.index_spec)
        self._index.add(desc)
        self._descriptors = np.concatenate([self._descriptors.reshape(-1, desc.shape[1]), desc])
        self._positions = np.concatenate([self._positions, pos])
        self._ids += ids
        return self.database_size

    # -- queries ------------------------------------------------------------------------------------------
    def query_descriptors(self, descriptors: Any, k: int = 5) -> list[list[Match]]:
        """Best ``k`` matches of each ``[N, D]`` descriptor."""
        if self.database_size == 0 or self._index is None:
            raise EmptyDatabaseError("the database is empty: call add_database(images or descriptors, positions) "
                                     "or load_database(path) before querying")
        q = as_descriptors(descriptors, "query descriptors")
        if q.shape[1] != self.descriptor_dim:
            raise ValueError(f"query descriptors have dimension {q.shape[1]}, the database holds "
                             f"{self.descriptor_dim}-d descriptors")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        dist, ids = self._index.search(q, k)
        return [[Match(rank + 1, self._ids[i], (float(self._positions[i, 0]), float(self._positions[i, 1])),
                       float(d), int(i)) for rank, (d, i) in enumerate(zip(drow, irow)) if i >= 0]
                for drow, irow in zip(dist, ids)]

    def query(self, image: Any, k: int = 5) -> list[Match]:
        """Best ``k`` database matches of one image, best first."""
        if self.database_size == 0:
            raise EmptyDatabaseError("the database is empty: call add_database(images or descriptors, positions) "
                                     "or load_database(path) before querying")
        return self.query_descriptors(self.embed([image]), k)[0]

    def query_many(self, images: Any, k: int = 5, progress: bool = False) -> list[list[Match]]:
        if self.database_size == 0:
            raise EmptyDatabaseError("the database is empty: call add_database(images or descriptors, positions) "
                                     "or load_database(path) before querying")
        return self.query_descriptors(self.embed(images, progress), k)

    # -- persistence --------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"format": DB_FORMAT, "metric": self.metric, "index": self.index_spec.to_dict(),
                "model": {k: v for k, v in self.identity.items()}, "input": self.spec.to_dict(),
                "descriptor_dim": self.descriptor_dim, "size": self.database_size}

    def save_database(self, path: str | Path) -> Path:
        """Write the database (descriptors, positions, ids, the faiss index, the model identity) to one ``.npz``
        file, atomically."""
        if self.database_size == 0:
            raise EmptyDatabaseError("the database is empty: nothing to save")
        path = Path(path)
        index_bytes = np.frombuffer(self._index.to_bytes(), np.uint8)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, descriptors=self._descriptors, positions=self._positions,
                     ids=np.asarray(self._ids, dtype=str), index=index_bytes,
                     meta=np.asarray(json.dumps(self._meta(), default=str)))
        return path

    def load_database(self, path: str | Path) -> int:
        """Replace the database by the one saved in ``path``; :class:`DatabaseMismatchError` when it was built
        with another model. The metric and index kind become the database's."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"database file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                desc, pos = data["descriptors"], data["positions"]
                ids, index_bytes = [str(x) for x in data["ids"]], data["index"].tobytes()
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: not a localizer database ({type(exc).__name__}: {exc})") from None
        if meta.get("format") != DB_FORMAT:
            raise ValueError(f"{path}: not a localizer database (format {meta.get('format')!r}, expected "
                             f"{DB_FORMAT!r})")
        self._check_same_model(meta, path)
        if not (len(desc) == len(pos) == len(ids)):
            raise ValueError(f"{path}: {len(desc)} descriptors, {len(pos)} positions and {len(ids)} ids")
        self.metric = check_metric(meta["metric"])
        self.index_spec = IndexSpec.parse(meta["index"])
        try:
            index = SearchIndex.from_bytes(index_bytes, int(meta["descriptor_dim"]), self.metric, self.index_spec)
        except Exception:  # noqa: BLE001 - an unreadable serialised index: rebuild it from the descriptors
            index = None
        if index is None or index.ntotal != len(desc):
            index = SearchIndex(int(meta["descriptor_dim"]), self.metric, self.index_spec).add(desc)
        self._index = index
        self._descriptors = np.asarray(desc, np.float32)
        self._positions = np.asarray(pos, np.float64)
        self._ids = ids
        return self.database_size

    def _check_same_model(self, meta: Mapping[str, Any], path: Path) -> None:
        theirs, ours = meta.get("model") or {}, self.identity
        problems = []
        if int(meta.get("descriptor_dim") or -1) != int(self.descriptor_dim or -2):
            problems.append(f"descriptor size {meta.get('descriptor_dim')} vs {self.descriptor_dim}")
        if theirs.get("weights_sha256") != ours.get("weights_sha256"):
            problems.append(f"weights SHA-256 {str(theirs.get('weights_sha256'))[:12]}... vs "
                            f"{str(ours.get('weights_sha256'))[:12]}...")
        if (meta.get("input") or {}).get("image_size") != list(self.spec.image_size):
            problems.append(f"input size {(meta.get('input') or {}).get('image_size')} vs "
                            f"{list(self.spec.image_size)}")
        if problems:
            raise DatabaseMismatchError(
                f"{path}: database built with another model ({theirs.get('model_class')} from "
                f"{theirs.get('checkpoint')}) than this localizer's ({ours.get('model_class')} from "
                f"{ours.get('checkpoint')}): " + "; ".join(problems) + ". Its descriptors are not comparable; "
                "rebuild the database with this model (scripts/localize.py build).")

    def __repr__(self) -> str:
        return (f"Localizer({self.identity.get('model_class')}, backend={self.backend}, input "
                f"{self.spec.size_text}, {self.descriptor_dim}-d, metric={self.metric}, "
                f"index={self.index_spec.kind}, database={self.database_size})")
