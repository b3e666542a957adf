"""The toolkit's own sample table: one row per submap, readable with pandas alone (Parquet, no pickle).

Columns:
``sample_id`` (row number), ``submap_set`` (``20m_10overlap`` training family or ``20m`` evaluation family),
``run``, ``timestamp``, ``northing``, ``easting``, ``split`` (``train`` / ``val`` / ``test`` / ``unused`` for the
10overlap set, ``eval`` for the 20m set), ``is_query`` (20m rows in a test square; every validation row),
``tuple_id`` (the row's key in the matching upstream pickle: training or test-query id, or the database index
within its run for evaluation and validation rows), ``cloud`` (path relative to the benchmark root),
``image`` (nearest paired image, relative to the image root; null when unpaired), ``image_timestamps``
(all k paired frames, nearest first), ``image_dt_s`` (time to the nearest frame), ``positives`` and
``non_negatives`` (``sample_id`` lists, for training and test-query rows).

The file's key-value metadata holds ``benchmark_root`` and ``image_root`` relative to the manifest's folder,
the radii used and the toolkit version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from preprocessing.errors import InputError
from preprocessing.io import atomic_write_with

MANIFEST_NAME = "manifest.parquet"
META_KEY = b"crossmodal"
COLUMNS = ("sample_id", "submap_set", "run", "timestamp", "northing", "easting", "split", "is_query", "tuple_id",
           "cloud", "image", "image_timestamps", "image_dt_s", "positives", "non_negatives")


def write_manifest(path: str | Path, table: pd.DataFrame, metadata: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"manifest table lacks columns {missing}")
    arrow = pa.Table.from_pandas(table[list(COLUMNS)], preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[META_KEY] = json.dumps(metadata, sort_keys=True).encode()
    arrow = arrow.replace_schema_metadata(meta)
    atomic_write_with(path, lambda tmp: pq.write_table(arrow, tmp))


def read_manifest(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """The manifest table and its metadata, with ``benchmark_root`` / ``image_root`` made absolute."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{path}: manifest not found; run `python scripts/preprocess_oxford.py` first or point "
                         f"the config at the folder holding {MANIFEST_NAME}")
    try:
        arrow = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses
        raise InputError(f"{path}: cannot read the manifest ({exc}); re-run preprocessing") from None
    try:
        meta = json.loads((arrow.schema.metadata or {}).get(META_KEY, b"{}"))
    except ValueError:
        meta = None
    check_schema(path, arrow.schema, meta)
    for key in ("benchmark_root", "image_root"):
        if meta.get(key) is not None:
            meta[key] = os.path.normpath(path.parent / meta[key])
    return arrow.to_pandas(), meta


#: Arrow type families the readers rely on (columns not named here are only required to exist)
_NUMERIC = ("sample_id", "timestamp", "northing", "easting", "tuple_id", "image_dt_s")
_LISTS = ("image_timestamps", "positives", "non_negatives")
_REBUILD = "rebuild it with `python scripts/preprocess_oxford.py` (the same source and output folder)"


def check_schema(path: Path, schema, meta: dict | None) -> None:
    """Reject a manifest whose columns, column types or metadata are not what the readers need, naming the file,
    what is wrong and the command that rebuilds it."""
    import pyarrow as pa

    names = set(schema.names)
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise InputError(f"{path}: the manifest lacks column(s) {', '.join(missing)}; {_REBUILD}")
    wrong = [f"{c} ({schema.field(c).type}, expected a number)" for c in _NUMERIC
             if not (pa.types.is_integer(schema.field(c).type) or pa.types.is_floating(schema.field(c).type)
                     or pa.types.is_null(schema.field(c).type))]
    wrong += [f"{c} ({schema.field(c).type}, expected a list)" for c in _LISTS
              if not (pa.types.is_list(schema.field(c).type) or pa.types.is_large_list(schema.field(c).type)
                      or pa.types.is_null(schema.field(c).type))]
    if wrong:
        raise InputError(f"{path}: manifest column(s) of the wrong type: {', '.join(wrong)}; {_REBUILD}")
    if not isinstance(meta, dict) or not meta.get("benchmark_root"):
        raise InputError(f"{path}: the manifest's metadata lacks benchmark_root (not written by this toolkit, or "
                         f"damaged); {_REBUILD}")
