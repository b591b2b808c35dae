"""Event datasets: N-MNIST-small (labels.csv, events / frames with the cache / multi-level lanes), CIFAR10-DVS over a
hand-built folder (TEBN split, errors), the catalog entries and the time-major collate."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from multispike.data.events import (CIFAR10DVS, CIFAR10DVS_CLASSES, NMNIST, MultiLevelEncoder, TimeMajorCollate,
                                    collate_time_major, integrate_frames, read_nmnist_bin)

DATA = Path(os.environ.get("MULTISPIKE_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
NMNIST_DIR = DATA / "events" / "nmnist-small"
needs_nmnist = pytest.mark.skipif(not (NMNIST_DIR / "labels.csv").is_file(),
                                  reason=f"N-MNIST-small not found at {NMNIST_DIR}")


@needs_nmnist
def test_nmnist_splits_labels_and_events():
    train = NMNIST(NMNIST_DIR, split="train")
    test = NMNIST(NMNIST_DIR, split="Test")
    assert len(train) == 1000 and len(test) == 100
    assert train.class_counts() == [97, 116, 99, 93, 105, 92, 94, 117, 87, 100]
    assert test.class_counts() == [8, 14, 8, 11, 14, 7, 10, 15, 2, 11]
    # labels.csv order: MNIST train image 0 is a 5, image 1 a 0 (the official MNIST labels)
    assert train.targets[:5] == [5, 0, 4, 1, 9]
    ev, label = train[0]
    assert label == 5 and ev.dtype.names == ("t", "x", "y", "p") and 1069 <= len(ev) <= 7152
    assert train.synthetic is False and train.metadata["synthetic"] is False
    assert len(NMNIST(DATA, split="test")) == 100  # a data root holding events/nmnist-small also works


@needs_nmnist
def test_nmnist_frames_with_cache(tmp_path):
    ds = NMNIST(NMNIST_DIR, split="test", data_type="frame", frames_number=6, split_by="time", cache_dir=tmp_path)
    x, y = ds[3]
    assert x.shape == (6, 2, 34, 34) and x.dtype == torch.float32
    ref = integrate_frames(read_nmnist_bin(ds.samples[3][0]), (34, 34, 2), 6, split_by="time")
    assert_close(x, torch.from_numpy(ref.astype(np.float32)), atol=0, rtol=0)
    assert int(x.sum()) == len(read_nmnist_bin(ds.samples[3][0]))
    assert len(list(tmp_path.glob("*.npz"))) == 1
    x2, _ = ds[3]
    assert torch.equal(x, x2)
    other = NMNIST(NMNIST_DIR, split="test", data_type="frame", frames_number=6, split_by="number", cache_dir=tmp_path)
    other[3]
    assert len(list(tmp_path.glob("*.npz"))) == 2  # split_by is part of the key
    tonic = NMNIST(NMNIST_DIR, split="test", data_type="frame", n_event_bins=4)
    assert tonic[0][0].shape == (4, 2, 34, 34)


@needs_nmnist
def test_nmnist_multilevel_and_loader_collate():
    enc = MultiLevelEncoder(T_F=20, lanes=3, size=24)
    ds = NMNIST(NMNIST_DIR, split="test", data_type="multilevel", frames_number=40, encoder=enc)
    x, _ = ds[0]
    assert x.shape == (5, 3, 2, 24, 24)  # Q_F = ceil(20 / 4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_time_major)
    xb, yb = next(iter(loader))
    assert xb.shape == (5, 4, 3, 2, 24, 24) and yb.shape == (4,) and yb.dtype == torch.int64
    with pytest.raises(ValueError, match="frames_number=10 raw frames cannot make T_F=20"):
        NMNIST(NMNIST_DIR, data_type="multilevel", frames_number=10, encoder=enc)


@needs_nmnist
def test_catalog_entry():
    from multispike.data.catalog import dataset_status, get_dataset, load_dataset
    info = get_dataset("nmnist")
    assert info.loader is not None and info.kind == "events"
    ds, labels, info = load_dataset("nmnist", root=DATA, split="test", data_type="frame", frames_number=2)
    assert len(ds) == 100 and labels.tolist() == ds.targets and ds[0][0].shape == (2, 2, 34, 34)
    rows = {r.name: r for r in dataset_status(DATA)}
    assert rows["nmnist"].found and rows["nmnist"].reader and rows["cifar10dvs"].reader


def test_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="data_type must be one of"):
        NMNIST(tmp_path, data_type="voxel")
    with pytest.raises(ValueError, match="exactly one of"):
        NMNIST(tmp_path, data_type="frame")
    with pytest.raises(ValueError, match="only apply to"):
        NMNIST(tmp_path, frames_number=3)
    with pytest.raises(ValueError, match="needs encoder"):
        NMNIST(tmp_path, data_type="multilevel", frames_number=3)
    with pytest.raises(ValueError, match="split must be one of"):
        NMNIST(tmp_path, split="val")


# ----------------------------------------------------------------------------------------------- CIFAR10-DVS
def _write_sample(path: Path, xs: list[int], ys: list[int], ps: list[int]) -> None:
    body = b"".join(struct.pack(">II", (y << 8) | (x << 1) | p, 10 * i) for i, (x, y, p) in enumerate(zip(xs, ys, ps)))
    path.write_bytes(b"#!AER-DAT2.0\r\n# hand-built\r\n" + body)


def _cifar10dvs_tree(root: Path, indices=(0, 1, 100, 101, 999)) -> None:
    for c, name in enumerate(CIFAR10DVS_CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in indices:
            _write_sample(folder / f"cifar10_{name}_{i}.aedat", [c, 2, 3], [4, 5, 6], [1, 0, i % 2])


def test_cifar10dvs_tebn_split_and_decoding(tmp_path):
    _cifar10dvs_tree(tmp_path)
    (tmp_path / "airplane" / "notes.txt").write_text("ignored")
    train = CIFAR10DVS(tmp_path, split="train")
    test = CIFAR10DVS(tmp_path, split="test")
    every = CIFAR10DVS(tmp_path, split="all")
    assert len(train) == 30 and len(test) == 20 and len(every) == 50
    assert train.class_counts() == [3] * 10 and test.class_counts() == [2] * 10
    assert all("_0.aedat" in p or "_1.aedat" in p for p, _ in test.samples)
    ev, label = test[4]  # class 2 (bird), sample 0
    assert label == 2
    assert ev["x"].tolist() == [127 - 4, 127 - 5, 127 - 6] and ev["y"].tolist() == [127 - 2, 125, 124]
    assert ev["p"].tolist() == [0, 1, 1]
    frames = CIFAR10DVS(tmp_path, split="test", data_type="frame", frames_number=2)[0][0]
    assert frames.shape == (2, 2, 128, 128) and int(frames.sum()) == 3
    nested = tmp_path / "root"
    _cifar10dvs_tree(nested / "events" / "cifar10dvs", indices=(7,))
    assert len(CIFAR10DVS(nested, split="test")) == 10  # a data root holding events/cifar10dvs also works


def test_cifar10dvs_npz_events_and_missing_folders(tmp_path):
    _cifar10dvs_tree(tmp_path, indices=(0, 100))
    np.savez(tmp_path / "cat" / "cifar10_cat_5.npz", t=np.array([0, 1]), x=np.array([1, 2]), y=np.array([3, 4]),
             p=np.array([1, 0]))
    test = CIFAR10DVS(tmp_path, split="test")
    cat = [p for p, label in test.samples if label == 3]
    assert len(cat) == 2 and any(p.endswith(".npz") for p in cat)
    npz_index = next(i for i, (p, _) in enumerate(test.samples) if p.endswith(".npz"))
    assert test[npz_index][0]["x"].tolist() == [1, 2]
    (tmp_path / "truck" / "cifar10_truck_0.aedat").unlink()
    (tmp_path / "truck" / "cifar10_truck_100.aedat").unlink()
    with pytest.raises(FileNotFoundError, match="truck"):
        CIFAR10DVS(tmp_path)
    (tmp_path / "truck").rmdir()
    with pytest.raises(FileNotFoundError, match=r"class folder .*truck is missing"):
        CIFAR10DVS(tmp_path)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="nothing"):
        CIFAR10DVS(empty)


# ----------------------------------------------------------------------------------------------- collate
def test_collate_time_major_pads_and_checks():
    a = (torch.ones(3, 2, 4, 4), 1)
    b = (np.full((5, 2, 4, 4), 2.0, np.float32), 0)
    x, y = collate_time_major([a, b])
    assert x.shape == (5, 2, 2, 4, 4) and y.tolist() == [1, 0]
    assert x[3:, 0].sum() == 0 and x[:3, 0].min() == 1 and x[:, 1].min() == 2
    with pytest.raises(ValueError, match="different lengths"):
        TimeMajorCollate(pad=False)([a, b])
    with pytest.raises(ValueError, match="differ beyond the time axis"):
        collate_time_major([a, (torch.ones(3, 2, 5, 4), 0)])
    events = np.zeros(3, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "i1")])
    with pytest.raises(TypeError, match="integrate them first"):
        collate_time_major([(events, 0)])
    # batch-first tonic batches become time-major: [B, T, ...] -> [T, B, ...]
    same = collate_time_major([(torch.arange(6.).view(3, 2), 0), (torch.arange(6., 12.).view(3, 2), 1)])[0]
    assert same[:, 1].tolist() == [[6, 7], [8, 9], [10, 11]]
