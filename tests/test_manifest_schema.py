"""The manifest is checked on read (issue 13): a missing column, a column of the wrong type or missing metadata is
an InputError naming the file, what is wrong and the command that rebuilds it, never a raw KeyError later."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crossmodal.data.fake import write_fake_manifest
from preprocessing.errors import InputError
from preprocessing.manifest import MANIFEST_NAME, read_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    write_fake_manifest(root, runs=2, train_per_run=4, eval_per_run=2)
    return root / MANIFEST_NAME


def _rewrite(src, dst, edit):
    table = pq.read_table(src)
    pq.write_table(edit(table), dst)
    return dst


def test_valid_manifest_reads(manifest):
    table, meta = read_manifest(manifest)
    assert len(table) > 0 and meta["benchmark_root"]


@pytest.mark.parametrize("column", ["positives", "cloud", "northing"])
def test_missing_column(manifest, tmp_path, column):
    bad = _rewrite(manifest, tmp_path / MANIFEST_NAME, lambda t: t.drop_columns([column]))
    with pytest.raises(InputError, match=rf"{MANIFEST_NAME}: the manifest lacks column\(s\) {column}; rebuild it "
                                         r"with `python scripts/preprocess_oxford.py`"):
        read_manifest(bad)


def test_wrong_types(manifest, tmp_path):
    def edit(t):
        t = t.set_column(t.schema.get_field_index("northing"), "northing",
                         pa.array([str(x) for x in t["northing"].to_pylist()]))
        return t.set_column(t.schema.get_field_index("positives"), "positives",
                            pa.array([str(x) for x in t["positives"].to_pylist()]))

    bad = _rewrite(manifest, tmp_path / MANIFEST_NAME, edit)
    with pytest.raises(InputError, match=r"wrong type: northing \(string, expected a number\), positives \(string, "
                                         r"expected a list\); rebuild"):
        read_manifest(bad)


def test_missing_metadata(manifest, tmp_path):
    bad = _rewrite(manifest, tmp_path / MANIFEST_NAME, lambda t: t.replace_schema_metadata({}))
    with pytest.raises(InputError, match=r"metadata lacks benchmark_root .*rebuild it"):
        read_manifest(bad)
