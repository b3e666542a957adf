"""PairedPlaceDataset on a hand-made manifest: selection, items, index mapping of tuples, bad data, and the
image-only guarantee that no LiDAR file is opened."""

from __future__ import annotations

import builtins
import io
import logging
import os

import numpy as np
import pytest
import torch

from crossmodal.data import CorruptCloudError, PairedPlaceDataset, image_eval_transform
from crossmodal.data.fake import write_fake_manifest

# sample ids of damaged training rows (run 0: ids 0..19 are 20m_10overlap rows, 0..11 train)
NULL_IMAGE, ABSENT_IMAGE, SHORT_CLOUD, ABSENT_CLOUD, NAN_CLOUD = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_fake_manifest(tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    return write_fake_manifest(tmp_path_factory.mktemp("damaged"), null_image=[NULL_IMAGE],
                               absent_image=[ABSENT_IMAGE], short_cloud=[SHORT_CLOUD], absent_cloud=[ABSENT_CLOUD],
                               nan_cloud=[NAN_CLOUD])


@pytest.mark.parametrize("split", ["train", "val", "test", "eval"])
def test_selection_matches_manifest(clean, split):
    ds = PairedPlaceDataset(clean.root, split)
    t = clean.table
    family = "20m" if split == "eval" else "20m_10overlap"
    expected = t[(t["split"] == split) & (t["submap_set"] == family)]["sample_id"].to_numpy()
    assert len(ds) == len(expected) > 0
    np.testing.assert_array_equal(ds.sample_ids, expected)
    assert ds.skipped == {}


def test_item_contents(clean):
    ds = PairedPlaceDataset(clean.root, "train")
    item = ds[3]
    assert set(item) == {"image", "cloud", "position", "sample_id", "index", "run"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 24, 32)
    assert item["cloud"].dtype == torch.float32 and item["cloud"].shape == (4096, 3)
    assert item["position"].dtype == torch.float64 and item["position"].shape == (2,)
    row = clean.table.set_index("sample_id").loc[item["sample_id"]]
    np.testing.assert_array_equal(item["position"].numpy(), [row["northing"], row["easting"]])
    assert item["index"] == 3 and item["run"] == row["run"]
    raw = np.fromfile(clean.benchmark_root / row["cloud"], dtype=np.float64).reshape(4096, 3)
    np.testing.assert_allclose(item["cloud"].numpy(), raw.astype(np.float32))
    # default transform: ToTensor + ImageNet normalisation
    from PIL import Image

    img = np.asarray(Image.open(clean.image_root / row["image"]).convert("RGB"), np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(item["image"].numpy(), ((img - mean) / std).transpose(2, 0, 1), atol=1e-5)
    assert ds[-1]["index"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_positive_indices_map_to_the_manifest_ids(damaged):
    ds = PairedPlaceDataset(damaged.root, "train", require=("image",))
    t = damaged.table.set_index("sample_id")
    present = set(ds.sample_ids.tolist())
    n_dropped_refs = 0
    for i, sid in enumerate(ds.sample_ids):
        for getter, col in ((ds.positives, "positives"), (ds.non_negatives, "non_negatives")):
            got = getter(i)
            assert np.all(np.diff(got) > 0)
            ids = [int(s) for s in t.loc[sid, col]]
            kept = sorted(s for s in ids if s in present)
            n_dropped_refs += len(ids) - len(kept)
            assert sorted(ds.sample_ids[got].tolist()) == kept
        assert i not in ds.positives(i) and i in ds.non_negatives(i)
    assert n_dropped_refs > 0  # the damaged rows were referenced and are gone


def test_bad_rows_are_dropped_counted_and_logged(damaged, caplog):
    with caplog.at_level(logging.WARNING, logger="crossmodal.data.dataset"):
        ds = PairedPlaceDataset(damaged.root, "train")
    assert ds.skipped == {"image_unpaired": 1, "image_missing": 1, "cloud_size": 1, "cloud_missing": 1}
    assert not {NULL_IMAGE, ABSENT_IMAGE, SHORT_CLOUD, ABSENT_CLOUD} & set(ds.sample_ids.tolist())
    assert NAN_CLOUD in set(ds.sample_ids.tolist())  # not detectable without reading: caught at load time
    text = caplog.text
    for reason in ds.skipped:
        assert reason in text
    assert f"{SHORT_CLOUD * 1_000_000 + 1_420_000_000_000_000}.bin" in text


def test_nan_cloud_raises_naming_the_file(damaged):
    ds = PairedPlaceDataset(damaged.root, "train")
    i = int(np.flatnonzero(ds.sample_ids == NAN_CLOUD)[0])
    with pytest.raises(CorruptCloudError, match=r"pointcloud_20m_10overlap/\d+\.bin: cloud holds NaN"):
        ds[i]
    checked = PairedPlaceDataset(damaged.root, "train", validate_clouds=True)
    assert checked.skipped["cloud_nonfinite"] == 1 and NAN_CLOUD not in set(checked.sample_ids.tolist())


def test_requirements_follow_modalities(damaged):
    images_only = PairedPlaceDataset(damaged.root, "train", modalities=("image",))
    assert images_only.skipped == {"image_unpaired": 1, "image_missing": 1}
    clouds_only = PairedPlaceDataset(damaged.root, "train", modalities=("cloud",))
    assert clouds_only.skipped == {"cloud_size": 1, "cloud_missing": 1}
    assert "image" not in clouds_only[0]
    same_rows = PairedPlaceDataset(damaged.root, "train", modalities=("image",), require=("image", "cloud"))
    np.testing.assert_array_equal(same_rows.sample_ids, PairedPlaceDataset(damaged.root, "train").sample_ids)


def test_image_only_never_opens_a_lidar_file(clean, monkeypatch):
    opened = []
    real_open, real_io_open, real_fromfile = builtins.open, io.open, np.fromfile
    real_os_open = os.open

    def guard(path):
        if str(path).endswith(".bin"):
            opened.append(str(path))
            raise AssertionError(f"LiDAR file opened: {path}")

    def g_open(file, *a, **k):
        guard(file)
        return real_open(file, *a, **k)

    def g_io_open(file, *a, **k):
        guard(file)
        return real_io_open(file, *a, **k)

    def g_os_open(path, *a, **k):
        guard(path)
        return real_os_open(path, *a, **k)

    def g_fromfile(file, *a, **k):
        guard(file)
        return real_fromfile(file, *a, **k)

    monkeypatch.setattr(builtins, "open", g_open)
    monkeypatch.setattr(io, "open", g_io_open)
    monkeypatch.setattr(os, "open", g_os_open)
    monkeypatch.setattr(np, "fromfile", g_fromfile)
    ds = PairedPlaceDataset(clean.root, "train", modalities=("image",))
    items = [ds[i] for i in range(len(ds))]
    assert all("cloud" not in it and it["image"].shape == (3, 24, 32) for it in items)
    assert opened == []
    # the guard works: a cloud dataset trips it
    with pytest.raises(AssertionError, match="LiDAR file opened"):
        PairedPlaceDataset(clean.root, "train", modalities=("cloud",))[0]


def test_transforms_get_deterministic_per_item_generators(clean):
    calls = []

    class Recorder:
        uses_generator = True

        def __call__(self, x, generator=None):
            calls.append(float(torch.rand((), generator=generator)))
            return x

    ds = PairedPlaceDataset(clean.root, "train", modalities=("cloud",), cloud_transform=Recorder(), seed=3)
    ds[0], ds[1], ds[0]
    assert calls[0] == calls[2] != calls[1]
    ds.set_epoch(1)
    ds[0]
    assert calls[3] != calls[0]


def test_bad_arguments(clean):
    with pytest.raises(ValueError, match="split"):
        PairedPlaceDataset(clean.root, "training")
    with pytest.raises(ValueError, match="modalities"):
        PairedPlaceDataset(clean.root, "train", modalities=("depth",))
    with pytest.raises(Exception, match="manifest not found"):
        PairedPlaceDataset(clean.root / "nowhere", "train")


def test_resize_transform(clean):
    ds = PairedPlaceDataset(clean.root, "val", modalities=("image",), image_transform=image_eval_transform((48, 64)))
    assert ds[0]["image"].shape == (3, 48, 64)


def test_place_subset_keeps_whole_cells():
    from crossmodal.data.dataset import place_subset

    pos = np.array([[0.0, 0.0], [10.0, 5.0], [150.0, 0.0], [160.0, 20.0], [0.0, 250.0], [99.9, 99.9]])
    cells = [tuple(c) for c in np.floor(pos / 100.0).astype(int)]  # (0,0) x3, (1,0) x2, (0,2) x1
    for seed in range(5):
        keep = place_subset(pos, 0.5, 100.0, seed)
        kept_cells = {c for c, k in zip(cells, keep) if k}
        assert len(kept_cells) == 2  # round(0.5 · 3 cells)
        assert all(k == (c in kept_cells) for c, k in zip(cells, keep))  # a cell is kept whole or not at all
    assert place_subset(pos, 1.0, 100.0, 0).all() and place_subset(pos, 0.01, 100.0, 0).sum() >= 1
    with pytest.raises(ValueError, match="place_fraction"):
        place_subset(pos, 0.0, 100.0, 0)


def test_place_fraction_subsamples_the_training_rows_only(clean):
    from crossmodal.data import PlaceDataModule

    full = PairedPlaceDataset(clean.root, "train")
    dm = PlaceDataModule(clean.root, place_fraction=0.5, place_cell_m=1.0, num_workers=0)
    sub = dm.dataset("train", augment=False)
    assert 0 < len(sub) < len(full) and sub.place_subsampled == len(full) - len(sub) and sub.skipped == {}
    assert set(sub.sample_ids) <= set(full.sample_ids)
    for i in range(len(sub)):  # the tuples index the subsampled rows only
        assert all(0 <= j < len(sub) for j in sub.tuples.positives(i))
    assert len(dm.dataset("val", augment=False)) == len(PairedPlaceDataset(clean.root, "val"))


def _image_file(fake, sample_id: int):
    return fake.image_root / fake.table.set_index("sample_id").loc[sample_id, "image"]


def test_truncated_image_is_dropped_named_and_counted(tmp_path, caplog):
    from crossmodal.data.dataset import image_looks_complete

    fake = write_fake_manifest(tmp_path)
    path = _image_file(fake, 6)
    assert image_looks_complete(path)
    path.write_bytes(path.read_bytes()[:100])  # as a disk-full copy or an interrupted transfer leaves it
    assert not image_looks_complete(path)
    with caplog.at_level(logging.WARNING, logger="crossmodal.data.dataset"):
        ds = PairedPlaceDataset(fake.root, "train")
    assert ds.skipped == {"image_corrupt": 1} and 6 not in set(ds.sample_ids.tolist())
    assert "image_corrupt" in caplog.text and str(path) in caplog.text
    clouds_only = PairedPlaceDataset(fake.root, "train", modalities=("cloud",))
    assert clouds_only.skipped == {} and 6 in set(clouds_only.sample_ids.tolist())  # never opens an image


def test_image_that_fails_to_decode_raises_naming_the_file(tmp_path):
    from crossmodal.data import CorruptImageError
    from crossmodal.data.dataset import PNG_END, PNG_SIGNATURE, image_looks_complete

    fake = write_fake_manifest(tmp_path)
    path = _image_file(fake, 7)
    path.write_bytes(PNG_SIGNATURE + b"\x00" * 64 + PNG_END)  # complete-looking, undecodable
    assert image_looks_complete(path)
    ds = PairedPlaceDataset(fake.root, "train")
    assert ds.skipped == {}
    i = int(np.flatnonzero(ds.sample_ids == 7)[0])
    with pytest.raises(CorruptImageError, match=rf"{path.name}: cannot decode the image .*re-run preprocessing"):
        ds[i]


def test_image_check_tiny_cases(tmp_path):
    from crossmodal.data.dataset import PNG_END, PNG_SIGNATURE, image_looks_complete

    cases = {"ok.png": PNG_SIGNATURE + PNG_END, "empty.png": b"", "nosig.png": b"x" * 8 + PNG_END,
             "noend.png": PNG_SIGNATURE + b"\x00" * 20, "short.png": PNG_SIGNATURE[:4],
             "photo.jpg": b"\xff\xd8\xff", "empty.jpg": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    got = {name: image_looks_complete(tmp_path / name) for name in cases}
    assert got == {"ok.png": True, "empty.png": False, "nosig.png": False, "noend.png": False, "short.png": False,
                   "photo.jpg": True, "empty.jpg": False}
    assert not image_looks_complete(tmp_path / "absent.png")
