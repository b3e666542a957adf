"""Upstream pickle formats: MinkLoc++ / MinkLoc3Dv2 training tuples and PointNetVLAD evaluation sets."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from preprocessing.errors import InputError
from preprocessing.upstream import (
    UPSTREAM_MODULES,
    TrainingTuple,
    dumps_training_tuples,
    load_pickle,
    write_pickle,
    write_training_tuples,
)

RUN = "2014-05-19-13-20-57"

#: MinkLoc++'s ``datasets/oxford.py`` TrainingTuple (MinkLoc3Dv2 has the same one in ``datasets/base_datasets.py``).
UPSTREAM_CLASS = '''
import numpy as np


class TrainingTuple:
    # Tuple describing an element for training/validation
    def __init__(self, id: int, timestamp: int, rel_scan_filepath: str, positives: np.ndarray,
                 non_negatives: np.ndarray, position: np.ndarray):
        # id: element id (ids start from 0 and are consecutive numbers)
        # ts: timestamp
        # rel_scan_filepath: relative path to the scan
        # positives: sorted ndarray of positive elements id
        # negatives: sorted ndarray of elements id
        # position: x, y position in meters (northing, easting)
        assert position.shape == (2,)

        self.id = id
        self.timestamp = timestamp
        self.rel_scan_filepath = rel_scan_filepath
        self.positives = positives
        self.non_negatives = non_negatives
        self.position = position
'''


def _fake_upstream(tmp_path, module: str):
    """A folder holding a fake ``datasets`` package with the upstream class in ``module``."""
    root = tmp_path / "upstream_src"
    pkg = root / "datasets"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / f"{module.split('.')[1]}.py").write_text(UPSTREAM_CLASS)
    return root


def _run_python(code: str, cwd) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _tuples(n=4):
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        ts = 1_400_075_815_702_346 + i * 1_000_000
        out[i] = TrainingTuple(id=i, timestamp=ts, rel_scan_filepath=f"oxford/{RUN}/pointcloud_20m_10overlap/{ts}.bin",
                               positives=np.sort(rng.choice(n, 2, replace=False)).astype(np.int64),
                               non_negatives=np.arange(n, dtype=np.int64),
                               position=np.array([5735712.768124 + i, 620084.402381 - i]))
    return out


def test_training_tuple_rejects_bad_position():
    with pytest.raises(ValueError):
        TrainingTuple(0, 1, "x", np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(3))


@pytest.mark.parametrize("module", UPSTREAM_MODULES)
def test_training_tuples_round_trip(tmp_path, module):
    tuples = _tuples()
    path = tmp_path / "training_queries_baseline.pickle"
    write_training_tuples(path, tuples, module=module)
    data = path.read_bytes()
    assert data[:2] == bytes([0x80, pickle.HIGHEST_PROTOCOL])
    assert module.encode() in data and b"TrainingTuple" in data
    assert b"preprocessing" not in data  # nothing of ours is referenced
    other = [m for m in UPSTREAM_MODULES if m != module][0]
    assert other.encode() not in data
    loaded = load_pickle(path)
    assert list(loaded) == list(tuples)
    for k, t in tuples.items():
        got = loaded[k]
        assert isinstance(got, TrainingTuple)
        assert got == t
        assert got.positives.dtype == np.int64 and got.non_negatives.dtype == np.int64
        assert type(got.timestamp) is int and type(got.id) is int
    assert dumps_training_tuples(tuples, module) == data


def test_dumps_training_tuples_rejects_unknown_module():
    with pytest.raises(ValueError):
        dumps_training_tuples(_tuples(), "datasets.pointnetvlad")


@pytest.mark.parametrize("module", UPSTREAM_MODULES)
def test_upstream_reads_our_pickle_with_plain_pickle_load(tmp_path, module):
    tuples = _tuples()
    path = tmp_path / "training_queries_baseline.pickle"
    write_training_tuples(path, tuples, module=module)
    root = _fake_upstream(tmp_path, module)
    out = _run_python(f'''
        import sys
        sys.path.insert(0, {str(root)!r})
        import json, pickle
        import {module} as upstream
        with open({str(path)!r}, "rb") as f:
            queries = pickle.load(f)
        res = {{}}
        for k, t in queries.items():
            assert type(t) is upstream.TrainingTuple, type(t)
            assert "preprocessing" not in sys.modules
            res[str(k)] = dict(key_type=type(k).__name__, id=t.id, timestamp=t.timestamp,
                               ts_type=type(t.timestamp).__name__, rel=t.rel_scan_filepath,
                               positives=t.positives.tolist(), pos_dtype=str(t.positives.dtype),
                               non_negatives=t.non_negatives.tolist(), nn_dtype=str(t.non_negatives.dtype),
                               position=t.position.tolist(), attrs=sorted(vars(t)))
        print(json.dumps(res))
    ''', cwd=tmp_path)
    res = json.loads(out)
    assert sorted(res, key=int) == [str(k) for k in tuples]
    for k, t in tuples.items():
        r = res[str(k)]
        assert r["key_type"] == "int"
        assert r["id"] == t.id and r["timestamp"] == t.timestamp and r["ts_type"] == "int"
        assert r["rel"] == t.rel_scan_filepath
        assert r["positives"] == t.positives.tolist() and r["pos_dtype"] == "int64"
        assert r["non_negatives"] == t.non_negatives.tolist() and r["nn_dtype"] == "int64"
        assert r["position"] == t.position.tolist()
        assert r["attrs"] == sorted(["id", "timestamp", "rel_scan_filepath", "positives", "non_negatives",
                                     "position"])


@pytest.mark.parametrize("module", UPSTREAM_MODULES)
def test_we_read_pickle_written_by_upstream_class(tmp_path, module):
    root = _fake_upstream(tmp_path, module)
    path = tmp_path / "upstream_written.pickle"
    _run_python(f'''
        import sys
        sys.path.insert(0, {str(root)!r})
        import pickle
        import numpy as np
        from {module} import TrainingTuple
        queries = {{}}
        for i in range(3):
            queries[i] = TrainingTuple(id=i, timestamp=1400075815702346 + i,
                                       rel_scan_filepath="oxford/{RUN}/pointcloud_20m_10overlap/%d.bin" % i,
                                       positives=np.array([j for j in range(3) if j != i], dtype=np.int64),
                                       non_negatives=np.arange(3, dtype=np.int64),
                                       position=np.array([5735712.5 + i, 620084.25]))
        with open({str(path)!r}, "wb") as f:
            pickle.dump(queries, f, protocol=pickle.HIGHEST_PROTOCOL)
    ''', cwd=tmp_path)
    assert module.encode() in path.read_bytes()
    loaded = load_pickle(path)
    assert sorted(loaded) == [0, 1, 2]
    for i, t in loaded.items():
        assert isinstance(t, TrainingTuple)
        assert t == TrainingTuple(i, 1400075815702346 + i, f"oxford/{RUN}/pointcloud_20m_10overlap/{i}.bin",
                                  np.array([j for j in range(3) if j != i], np.int64), np.arange(3, dtype=np.int64),
                                  np.array([5735712.5 + i, 620084.25]))


def test_truncated_pickle_raises_input_error(tmp_path):
    data = dumps_training_tuples(_tuples(3))
    path = tmp_path / "truncated_training.pickle"
    for cut in list(range(0, len(data), 7)) + [len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match="truncated_training.pickle"):
            load_pickle(path)
    path.write_bytes(data)
    assert len(load_pickle(path)) == 3


def test_load_pickle_missing_and_garbage(tmp_path):
    with pytest.raises(InputError, match="absent.pickle"):
        load_pickle(tmp_path / "absent.pickle")
    garbage = tmp_path / "garbage.pickle"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(InputError, match="garbage.pickle"):
        load_pickle(garbage)
    # a class from a module that does not exist here (another upstream class) is reported, not raised raw
    foreign = tmp_path / "foreign.pickle"
    foreign.write_bytes(b"cdatasets.foo\nBar\n.")  # protocol-0 GLOBAL opcode
    with pytest.raises(InputError, match="foreign.pickle"):
        load_pickle(foreign)
    foreign.write_bytes(b"cos\nno_such_function_here\n.")  # existing module, missing attribute
    with pytest.raises(InputError, match="foreign.pickle"):
        load_pickle(foreign)


def test_evaluation_pickles_round_trip(tmp_path):
    database = [{0: {"query": f"oxford/{RUN}/pointcloud_20m/1.bin", "northing": 5735712.768124,
                     "easting": 620084.402381},
                 1: {"query": f"oxford/{RUN}/pointcloud_20m/2.bin", "northing": 5735713.0, "easting": 620085.0}},
                {0: {"query": "oxford/2014-06-24-14-47-45/pointcloud_20m/3.bin", "northing": 5735712.0,
                     "easting": 620084.0}}]
    query = [{0: {"query": f"oxford/{RUN}/pointcloud_20m/1.bin", "northing": 5735712.768124,
                  "easting": 620084.402381, 1: [0]}},
             {0: {"query": "oxford/2014-06-24-14-47-45/pointcloud_20m/3.bin", "northing": 5735712.0,
                  "easting": 620084.0, 0: [0, 1]}}]
    lidar2image = {np.int64(1400075815702346): [np.int64(1400075815700000), np.int64(1400075815760000)]}
    for name, obj in (("oxford_evaluation_database.pickle", database), ("oxford_evaluation_query.pickle", query),
                      ("lidar2image_ndx.pickle", lidar2image)):
        path = tmp_path / name
        write_pickle(path, obj)
        assert load_pickle(path) == obj
        with open(path, "rb") as fh:
            assert pickle.load(fh) == obj
    loaded = load_pickle(tmp_path / "lidar2image_ndx.pickle")
    key = next(iter(loaded))
    assert type(key) is np.int64 and type(loaded[key][0]) is np.int64
    assert list(tmp_path.glob(".*.tmp")) == []  # atomic write leaves no temporaries


def test_tuples_with_empty_positives_round_trip(tmp_path):
    """Several empty arrays (isolated samples) once tripped the pure-Python pickler's memo."""
    empty = np.zeros(0, np.int64)
    tuples = {i: TrainingTuple(i, 1000 + i, f"oxford/r/pointcloud_20m_10overlap/{1000 + i}.bin", empty.copy(),
                               np.array([i], np.int64), np.array([1.0, 2.0])) for i in range(3)}
    path = tmp_path / "t.pickle"
    write_training_tuples(path, tuples)
    back = load_pickle(path)
    assert back == tuples and back[2].positives.dtype == np.int64 and back[2].positives.shape == (0,)
