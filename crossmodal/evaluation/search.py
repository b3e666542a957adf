"""Nearest-descriptor search: faiss (exact flat, IVF, HNSW) or a brute-force numpy reference.

Distances are reported the same way whatever the index: ``euclidean`` = the L2 distance between the raw
descriptors (not squared; PointNetVLAD / MinkLoc++ rank with a KDTree on raw descriptors), ``cosine`` = 1 - cos
(descriptors L2-normalised; DistilVPR). faiss is imported on first use only.

- ``flat`` (default): ``IndexFlatL2`` / ``IndexFlatIP``, exact (float32).
- ``ivf``: ``IndexIVFFlat`` (``encoding: sq8``: ``IndexIVFScalarQuantizer``, 8 bits per value); ``nlist`` lists
  (default ``4·sqrt(n)``, at most ``n // 39`` so every list has the 39 training points k-means asks for),
  ``nprobe`` lists visited per query. Approximate: :func:`crossmodal.evaluation.evaluate_checkpoints` measures
  its recall against ``flat`` whenever another index is asked for.
- ``hnsw``: ``IndexHNSWFlat`` (``hnsw_m`` links, ``ef_construction``, ``ef_search``). Approximate.
- ``numpy``: exact float64 brute force, the reference the faiss indexes are tested against.

Results are ordered by (distance, id), so ties break towards the lower id as a stable sort would (faiss is asked
for ``TIE_MARGIN`` more results than needed, so a tie at the cut-off is resolved the same way unless more than
that many entries tie).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

METRICS = ("euclidean", "cosine")
TIE_MARGIN = 8
INDEX_KINDS = ("flat", "ivf", "hnsw", "numpy")
METRIC_DESCRIPTIONS = {
    "euclidean": "Euclidean distance between raw descriptors (PointNetVLAD / MinkLoc++ ranking)",
    "cosine": "cosine distance (1 - cos) between L2-normalised descriptors (DistilVPR ranking)",
}


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    return metric


@dataclasses.dataclass
class IndexSpec:
    """Which index to search with (Hydra-instantiable: ``configs/evaluate.yaml`` ``index``)."""

    kind: str = "flat"
    nlist: int | None = None  #: IVF lists; None: 4·sqrt(n), capped at n // 39
    nprobe: int = 16  #: IVF lists visited per query
    hnsw_m: int = 32  #: HNSW links per node
    ef_construction: int = 40
    ef_search: int = 128
    train_size: int | None = None  #: IVF k-means training sample (None: faiss's default, 256 per list)
    encoding: str = "flat"  #: IVF vector storage: flat (float32) or sq8 (8-bit scalar quantiser, 4x less memory)
    seed: int = 0

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; use one of {INDEX_KINDS}")
        if self.encoding not in ("flat", "sq8"):
            raise ValueError(f"unknown IVF encoding {self.encoding!r}; use 'flat' or 'sq8'")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"index {name} must be >= 1, got {getattr(self, name)}")
        if self.nlist is not None and int(self.nlist) < 1:
            raise ValueError(f"index nlist must be >= 1 or null, got {self.nlist}")

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | IndexSpec | None) -> IndexSpec:
        """``"flat"`` / ``"ivf"`` / ``{"kind": "ivf", "nprobe": 32}`` / an :class:`IndexSpec` / None (flat)."""
        if value is None:
            return cls()
        if isinstance(value, IndexSpec):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, Mapping):
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - fields - {"_target_"})
            if unknown:
                raise ValueError(f"unknown index option(s) {unknown}; known: {sorted(fields)}")
            return cls(**{k: v for k, v in value.items() if k in fields})
        raise TypeError(f"index must be a kind name, a mapping or an IndexSpec, got {type(value).__name__}")

    @property
    def exact(self) -> bool:
        return self.kind in ("flat", "numpy")

    def nlist_for(self, n: int) -> int:
        want = int(self.nlist) if self.nlist is not None else max(1, round(4 * math.sqrt(max(n, 1))))
        return max(1, min(want, n // 39 if n >= 39 else 1))

    def describe(self, metric: str = "euclidean", n: int | None = None) -> str:
        flat = "IndexFlatL2" if metric == "euclidean" else "IndexFlatIP on L2-normalised descriptors"
        if self.kind == "flat":
            return f"faiss {flat} (exact)"
        if self.kind == "numpy":
            return "numpy brute force, float64 (exact)"
        if self.kind == "ivf":
            nlist = self.nlist_for(n) if n is not None else (self.nlist or "4*sqrt(n)")
            name = "IndexIVFFlat" if self.encoding == "flat" else "IndexIVFScalarQuantizer (8-bit)"
            return f"faiss {name} (nlist {nlist}, nprobe {self.nprobe}; approximate)"
        return f"faiss IndexHNSWFlat (M {self.hnsw_m}, efSearch {self.ef_search}; approximate)"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def as_descriptors(x: Any, name: str = "descriptors", dtype: Any = np.float32) -> np.ndarray:
    """``x`` as a contiguous 2-D ``dtype`` array; ValueError naming ``name`` if it is not [N, D], finite, numeric."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    return a


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(x.dtype, copy=False)


def _faiss():
    import faiss

    return faiss


class SearchIndex:
    """A searchable set of descriptors.

    ``SearchIndex(dim, metric, spec).add(x)`` builds the index (training IVF on the first ``add``);
    ``search(q, k)`` returns ``(distances [nq, k'], ids [nq, k'] int64)`` with ``k' = min(k, ntotal)``, best
    first (distances float32 from faiss, float64 from the numpy kind).
    """

    def __init__(self, dim: int, metric: str = "euclidean", spec: IndexSpec | str | Mapping | None = None):
        if int(dim) < 1:
            raise ValueError(f"descriptor dimension must be >= 1, got {dim}")
        self.dim = int(dim)
        self.metric = check_metric(metric)
        self.spec = IndexSpec.parse(spec)
        self._index = None  # faiss index
        self._data: np.ndarray | None = None  # numpy kind: float64 rows

    # -- building ------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        if self.spec.kind == "numpy":
            return 0 if self._data is None else len(self._data)
        return 0 if self._index is None else int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def _prepare(self, x: Any, name: str) -> np.ndarray:
        a = as_descriptors(x, name, np.float64 if self.spec.kind == "numpy" else np.float32)
        if a.shape[1] != self.dim:
            raise ValueError(f"{name} have dimension {a.shape[1]}, the index holds {self.dim}-d descriptors")
        return l2_normalize(a) if self.metric == "cosine" else a

    def _new_faiss_index(self, train: np.ndarray):
        faiss = _faiss()
        metric = faiss.METRIC_L2 if self.metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
        spec = self.spec
        if spec.kind == "flat":
            return faiss.IndexFlatL2(self.dim) if self.metric == "euclidean" else faiss.IndexFlatIP(self.dim)
        if spec.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, int(spec.hnsw_m), metric)
            index.hnsw.efConstruction = int(spec.ef_construction)
            index.hnsw.efSearch = int(spec.ef_search)
            return index
        nlist = spec.nlist_for(len(train))
        quantizer = faiss.IndexFlatL2(self.dim) if self.metric == "euclidean" else faiss.IndexFlatIP(self.dim)
        if spec.encoding == "sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, metric)
        else:
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, metric)
        index.cp.seed = int(spec.seed)
        if spec.train_size is not None and len(train) > spec.train_size:
            rng = np.random.default_rng(spec.seed)
            train = train[np.sort(rng.choice(len(train), int(spec.train_size), replace=False))]
            index.cp.max_points_per_centroid = max(1, math.ceil(len(train) / nlist))
        index.train(train)
        index.nprobe = min(int(spec.nprobe), nlist)
        return index

    def add(self, x: Any) -> SearchIndex:
        a = self._prepare(x, "database descriptors")
        if len(a) == 0:
            return self
        if self.spec.kind == "numpy":
            self._data = a if self._data is None else np.concatenate([self._data, a])
            return self
        if self._index is None:
            self._index = self._new_faiss_index(a)
        self._index.add(a)
        return self

    # -- search --------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = self._prepare(queries, "query descriptors")
        n = self.ntotal
        if n == 0:
            raise ValueError("the index is empty: add database descriptors before searching")
        k = min(int(k), n)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(q) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        if self.spec.kind == "numpy":
            dist = _numpy_distances(self._data, q, self.metric)
            ids = np.argsort(dist, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(dist, ids, 1), ids.astype(np.int64)
        # TIE_MARGIN extra results so that ties at the cut-off also go to the lower id
        raw, ids = self._index.search(q, min(k + TIE_MARGIN, n))
        if self.metric == "euclidean":
            dist = np.sqrt(np.maximum(raw, 0.0))
        else:
            dist = 1.0 - raw
        dist = np.where(ids < 0, np.inf, dist).astype(np.float32)
        order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), dist), axis=1)[:, :k]
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids.astype(np.int64), order, 1)

    def configure(self, nprobe: int | None = None, ef_search: int | None = None) -> SearchIndex:
        """Change the search-time parameters of a built IVF (``nprobe``) or HNSW (``ef_search``) index."""
        if nprobe is not None:
            self.spec = dataclasses.replace(self.spec, nprobe=int(nprobe))
            if self.spec.kind == "ivf" and self._index is not None:
                ivf = _faiss().extract_index_ivf(self._index)
                ivf.nprobe = min(int(nprobe), int(ivf.nlist))
        if ef_search is not None:
            self.spec = dataclasses.replace(self.spec, ef_search=int(ef_search))
            if self.spec.kind == "hnsw" and self._index is not None:
                self._index.hnsw.efSearch = int(ef_search)
        return self

    def imbalance(self) -> float:
        """IVF list-size imbalance (faiss's ``imbalance_factor``: 1 = equal lists); 1.0 for other kinds."""
        if self.spec.kind != "ivf" or self._index is None:
            return 1.0
        return float(_faiss().extract_index_ivf(self._index).invlists.imbalance_factor())

    # -- persistence ---------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The faiss index serialised (``faiss.serialize_index``); numpy kind: the float64 rows."""
        if self.spec.kind == "numpy":
            return b"" if self._data is None else self._data.tobytes()
        if self._index is None:
            return b""
        return _faiss().serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int, metric: str, spec: IndexSpec | str | Mapping | None) -> SearchIndex:
        index = cls(dim, metric, spec)
        if not data:
            return index
        if index.spec.kind == "numpy":
            index._data = np.frombuffer(data, np.float64).reshape(-1, dim).copy()
            return index
        faiss = _faiss()
        loaded = faiss.deserialize_index(np.frombuffer(data, np.uint8).copy())
        if loaded.d != dim:
            raise ValueError(f"serialised index holds {loaded.d}-d descriptors, expected {dim}")
        if index.spec.kind == "ivf":
            ivf = faiss.extract_index_ivf(loaded)
            ivf.nprobe = min(int(index.spec.nprobe), int(ivf.nlist))
        elif index.spec.kind == "hnsw":
            loaded.hnsw.efSearch = int(index.spec.ef_search)
        index._index = loaded
        return index

    def describe(self) -> str:
        return self.spec.describe(self.metric, self.ntotal or None)


def _numpy_distances(db: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """[nq, ndb] float64 distances (``db``, ``q`` already normalised for cosine)."""
    if metric == "cosine":
        return 1.0 - q @ db.T
    d2 = (q * q).sum(1)[:, None] + (db * db).sum(1)[None, :] - 2.0 * q @ db.T
    return np.sqrt(np.maximum(d2, 0.0))


def build_index(descriptors: Any, metric: str = "euclidean",
                spec: IndexSpec | str | Mapping | None = None) -> SearchIndex:
    """A :class:`SearchIndex` holding ``descriptors`` ([N, D])."""
    a = as_descriptors(descriptors, "database descriptors")
    return SearchIndex(a.shape[1], metric, spec).add(a)


def top1_agreement(database: Any, queries: Any, metric: str = "euclidean",
                   spec: IndexSpec | str | Mapping | None = "ivf") -> float:
    """Share (percent) of queries whose top-1 under ``spec`` equals the exact (flat) top-1."""
    exact = build_index(database, metric, "flat").search(queries, 1)[1][:, 0]
    approx = build_index(database, metric, spec).search(queries, 1)[1][:, 0]
    return float((exact == approx).mean() * 100.0) if len(exact) else float("nan")
