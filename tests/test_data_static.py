"""Static-image data layer: CIFAR reader (restricted unpickler), ImageFolder, embedded digits, TensorLoader,
catalog and the ``multispike datasets`` command."""
from __future__ import annotations

import io
import json
import math
import os
import pickle
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from multispike.cli.main import main as cli_main
from multispike.data import (DATASETS, Augment, CorruptDatasetError, DatasetInfo, ImageFolder, TensorLoader,
                             UnsafePickleError, crop_at, dataset_status, decode_image, default_data_root,
                             digits_split_indices, find_cifar_dir, get_dataset, load_cifar, load_cifar10,
                             load_dataset, load_digits_all, load_digits_split, locate, make_loader, normalize,
                             random_crop, random_hflip, register_dataset, resolve_data_root, restricted_load)
from multispike.data.catalog import ENV_VAR, data_root_source
from multispike.data.embedded import DIGITS_MEAN, DIGITS_STD

DATA = default_data_root()
CIFAR_DIR = DATA / "cifar10" / "cifar-10-batches-py"
CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta"]
needs_cifar = pytest.mark.skipif(not all((CIFAR_DIR / f).is_file() for f in CIFAR_FILES),
                                 reason=f"real CIFAR-10 not found at {CIFAR_DIR}")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    # Tests must not depend on the caller's MULTISPIKE_DATA.
    monkeypatch.delenv(ENV_VAR, raising=False)


# ====================================================================================================
# CIFAR-10 on the real files
# ====================================================================================================

@pytest.fixture(scope="module")
def cifar_train():
    if not CIFAR_DIR.is_dir():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR_DIR}")
    return load_cifar10(DATA, "train")


@pytest.fixture(scope="module")
def cifar_test():
    if not CIFAR_DIR.is_dir():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR_DIR}")
    return load_cifar10(DATA, "test")


@needs_cifar
def test_cifar10_real_counts_shapes_classes(cifar_train, cifar_test):
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    for split, n, per_class in ((cifar_train, 50_000, 5_000), (cifar_test, 10_000, 1_000)):
        assert split.images.shape == (n, 3, 32, 32)
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
        assert split.classes == names
        assert split.class_counts().tolist() == [per_class] * 10
        assert len(split) == n


@needs_cifar
def test_cifar10_pixel_layout_matches_raw_pickle(cifar_test):
    # The reader must keep the R-plane-then-G-then-B, row-major layout: compare with a plain load of
    # the trusted shared file.
    with open(CIFAR_DIR / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    data = np.asarray(raw["data"])
    assert_close(cifar_test.images[:200], torch.from_numpy(data[:200].reshape(200, 3, 32, 32)), atol=0, rtol=0)
    assert cifar_test.labels[:200].tolist() == raw["labels"][:200]
    # Red plane of image 0 is the first 1,024 bytes.
    assert cifar_test.images[0, 0].flatten().tolist() == data[0, :1024].tolist()


@needs_cifar
def test_cifar10_statistics_close_to_catalog(cifar_train):
    info = get_dataset("cifar10")
    x = cifar_train.images[::10].to(torch.float64) / 255  # every 10th image: plenty for 3 decimals
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    # The local copy was decoded from JPEGs (shared README), so its statistics are close to, not equal to,
    # the official ones stored in the catalog.
    assert_close(mean, torch.tensor(info.mean, dtype=torch.float64), atol=3e-3, rtol=0)
    assert_close(std, torch.tensor(info.std, dtype=torch.float64), atol=5e-3, rtol=0)


@needs_cifar
@pytest.mark.parametrize("root", [DATA, DATA / "cifar10", CIFAR_DIR])
def test_cifar_root_may_point_at_any_level(root):
    assert find_cifar_dir(root) == CIFAR_DIR
    assert locate("cifar10", root) == CIFAR_DIR


@needs_cifar
def test_cifar_env_var_and_default(monkeypatch, tmp_path):
    assert resolve_data_root(None) == DATA and data_root_source(None) == "default"
    assert find_cifar_dir(None) == CIFAR_DIR
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert resolve_data_root(None) == tmp_path and data_root_source(None) == ENV_VAR
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        find_cifar_dir(None)
    assert find_cifar_dir(DATA) == CIFAR_DIR  # an explicit root beats the environment


@needs_cifar
def test_load_dataset_cifar10_test_split(cifar_test):
    images, labels, info = load_dataset("cifar10", DATA, "test")
    assert_close(images, cifar_test.images, atol=0, rtol=0)
    assert_close(labels, cifar_test.labels, atol=0, rtol=0)
    assert info.classes[0] == "airplane" and info.num_classes == 10 and info.input_shape == (3, 32, 32)


def _link_cifar(dst: Path, skip: str) -> None:
    dst.mkdir(parents=True)
    for f in CIFAR_FILES:
        if f != skip:
            (dst / f).symlink_to(CIFAR_DIR / f)


@needs_cifar
def test_truncated_batch_file_rejected_with_its_path(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _link_cifar(folder, skip="test_batch")
    full = (CIFAR_DIR / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(full[: len(full) // 2])
    with pytest.raises(CorruptDatasetError) as exc:
        load_cifar10(tmp_path, "test")
    msg = str(exc.value)
    assert str(folder / "test_batch") in msg and "truncated" in msg and "3072" in msg


@needs_cifar
def test_missing_batch_file_names_the_file(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    _link_cifar(folder, skip="data_batch_3")
    with pytest.raises(FileNotFoundError) as exc:
        load_cifar10(tmp_path, "train")
    assert "data_batch_3" in str(exc.value) and str(folder) in str(exc.value)


def test_missing_folder_lists_paths_and_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        load_cifar10(tmp_path / "nowhere", "test")
    msg = str(exc.value)
    assert str(tmp_path / "nowhere" / "cifar10" / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "batches.meta" in msg and "MULTISPIKE_DATA" in msg
    with pytest.raises(FileNotFoundError, match="looked at"):
        locate("cifar10", tmp_path)


# ====================================================================================================
# Synthetic CIFAR files (no real data needed): both layouts, several pickle protocols
# ====================================================================================================

def _write_pickle(path: Path, obj, protocol: int) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_synthetic_cifar10_roundtrip(tmp_path, protocol):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for name, n in [(f"data_batch_{i}", 7) for i in range(1, 6)] + [("test_batch", 5)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        _write_pickle(folder / name, {"batch_label": name, "labels": labels, "data": data,
                                      "filenames": [f"{i}.png" for i in range(n)]}, protocol)
        batches.append((data, labels))
    _write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, protocol)
    train = load_cifar(tmp_path, "cifar10", "train")
    expect = np.concatenate([d for d, _ in batches[:5]]).reshape(35, 3, 32, 32)
    assert_close(train.images, torch.from_numpy(expect), atol=0, rtol=0)
    assert train.labels.tolist() == sum((lab for _, lab in batches[:5]), [])
    assert train.classes == tuple(f"c{i}" for i in range(10))
    test = load_cifar(folder, "cifar10", "test")
    assert_close(test.images, torch.from_numpy(batches[5][0].reshape(5, 3, 32, 32)), atol=0, rtol=0)


def test_synthetic_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name, n in (("train", 9), ("test", 4)):
        _write_pickle(folder / name, {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                                      "fine_labels": list(range(90, 90 + n)), "coarse_labels": [19] * n}, 4)
    _write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                    "coarse_label_names": [f"g{i}" for i in range(20)]}, 4)
    fine = load_cifar(tmp_path, "cifar100", "train")
    assert fine.labels.tolist() == list(range(90, 99)) and len(fine.classes) == 100
    coarse = load_cifar(tmp_path, "cifar100", "test", label="coarse")
    assert coarse.labels.tolist() == [19] * 4 and coarse.classes[19] == "g19"
    images, labels, info = load_dataset("cifar100", tmp_path, "test", label="coarse")
    assert images.shape == (4, 3, 32, 32) and info.num_classes == 20


def test_synthetic_cifar_bad_contents(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in CIFAR_FILES:
        _write_pickle(folder / f, {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1],
                                   "label_names": [str(i) for i in range(10)]}, 4)
    _write_pickle(folder / "test_batch", {"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}, 4)
    with pytest.raises(CorruptDatasetError, match=r"test_batch.*uint8 \[n, 3072\]"):
        load_cifar10(tmp_path, "test")
    _write_pickle(folder / "test_batch", {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, 4)
    with pytest.raises(CorruptDatasetError, match=r"labels span 0\.\.10, expected 0\.\.9"):
        load_cifar10(tmp_path, "test")
    _write_pickle(folder / "test_batch", {"data": np.zeros((2, 3072), np.uint8)}, 4)
    with pytest.raises(CorruptDatasetError, match="missing key"):
        load_cifar10(tmp_path, "test")
    # Truncation anywhere (inside the array bytes, or before the final STOP) is caught, naming the file.
    good = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, protocol=4)
    for cut in (len(good) // 2, len(good) - 1):
        (folder / "test_batch").write_bytes(good[:cut])
        with pytest.raises(CorruptDatasetError, match=rf"{folder / 'test_batch'}.*truncated"):
            load_cifar10(tmp_path, "test")


# ====================================================================================================
# Restricted unpickler
# ====================================================================================================

class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_with_os_system_is_rejected(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Evil(str(marker)), "labels": [0]}, protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        restricted_load(payload)
    assert not marker.exists()
    # The same payload placed in a CIFAR folder is refused before anything runs.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in CIFAR_FILES:
        (folder / f).write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"data_batch_1.*refusing"):
        load_cifar10(folder, "train")
    assert not marker.exists()


@pytest.mark.parametrize("obj", [eval, getattr, __import__, io.BytesIO, np.load])
def test_other_globals_are_rejected(obj):
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        restricted_load(pickle.dumps(obj))


def test_dotted_names_and_object_arrays_are_rejected():
    # A protocol-4 STACK_GLOBAL with a dotted name would reach attributes of an allowed object.
    dotted = b"\x80\x04\x8c\x05numpy\x8c\x11ndarray.__class__\x93."
    with pytest.raises(UnsafePickleError):
        restricted_load(dotted)
    with pytest.raises(UnsafePickleError, match="holds Python objects"):
        restricted_load(pickle.dumps(np.array([1, "a"], dtype=object), protocol=4))


def test_plain_containers_and_numeric_arrays_load():
    obj = {"a": [1, 2, (3, 4)], "b": b"xy", "c": "text", "d": 1.5, "e": np.arange(5, dtype=np.int64)}
    for protocol in range(6):
        out = restricted_load(pickle.dumps(obj, protocol=protocol))
        assert out["a"] == [1, 2, (3, 4)] and out["b"] == b"xy" and out["c"] == "text" and out["d"] == 1.5
        assert out["e"].tolist() == [0, 1, 2, 3, 4]


# ====================================================================================================
# Embedded digits
# ====================================================================================================

def test_digits_split_sizes_stratified_and_deterministic():
    images, labels = load_digits_all()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    tr, te = digits_split_indices(labels)
    per_class = torch.bincount(labels)
    assert_close(torch.bincount(labels[te], minlength=10),
                 torch.floor(per_class * 0.2 + 0.5).to(torch.int64), atol=0, rtol=0)
    assert (tr.numel(), te.numel()) == (1438, 359)
    assert torch.cat([tr, te]).sort().values.tolist() == list(range(1797))  # disjoint and complete
    x1, y1 = load_digits_split("train")
    x2, y2 = load_digits_split("train")
    assert_close(x1, x2, atol=0, rtol=0)
    assert_close(y1, y2, atol=0, rtol=0)
    assert_close(x1, images[tr], atol=0, rtol=0)
    xt, yt = load_digits_split("test")
    assert xt.shape == (359, 1, 8, 8) and yt.shape == (359,)
    tr7, _ = digits_split_indices(labels, seed=7)
    assert not torch.equal(tr7, tr)


def test_digits_pixel_mapping_and_statistics():
    from sklearn.datasets import load_digits
    raw = torch.from_numpy(load_digits().images).to(torch.int64)
    images, _ = load_digits_all()
    # Round half up of v * 255 / 16: exact in integers.
    expect = torch.floor(raw.to(torch.float64) * 255 / 16 + 0.5).to(torch.uint8)
    assert_close(images[:, 0], expect, atol=0, rtol=0)
    assert images.max() == 255 and images.min() == 0
    assert len(torch.unique(images)) == 17  # every level 0..16 stays distinct
    x, _ = load_digits_split("train")
    x = x.to(torch.float64) / 255
    assert abs(x.mean().item() - DIGITS_MEAN[0]) < 1e-4
    assert abs(x.std(unbiased=False).item() - DIGITS_STD[0]) < 1e-4


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="split must be"):
        load_digits_split("val")
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        load_digits_split("train", test_fraction=1.0)


def test_make_loader_digits_defaults():
    loader = make_loader("digits", "train", batch_size=64, seed=3)
    assert len(loader) == math.ceil(1438 / 64) and not loader.augment.enabled
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    test = make_loader("digits", "test", batch_size=1000)
    assert test.shuffle is False
    xt, _ = next(iter(test))
    raw, _ = load_digits_split("test")
    assert_close(xt, (raw.float() / 255 - DIGITS_MEAN[0]) / DIGITS_STD[0], atol=1e-6, rtol=0)


# ====================================================================================================
# TensorLoader and augmentation
# ====================================================================================================

def _toy(n: int = 50, c: int = 3, h: int = 6, w: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, c, h, w), generator=g, dtype=torch.uint8)  # no zeros: padding is visible
    return images, torch.arange(n)


def _collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_same_seed_same_batches_and_epochs_differ():
    images, labels = _toy()
    kw = dict(batch_size=8, seed=5, augment=Augment(crop_padding=2, hflip=True), mean=(0.5,), std=(0.25,))
    a, b = TensorLoader(images, labels, **kw), TensorLoader(images, labels, **kw)
    ea, eb = _collect(a), _collect(b)
    for (xa, ya), (xb, yb) in zip(ea, eb, strict=True):
        assert_close(xa, xb, atol=0, rtol=0)
        assert_close(ya, yb, atol=0, rtol=0)
    # Epoch advances automatically: the second pass has a different order ...
    second = _collect(a)
    assert not torch.equal(torch.cat([y for _, y in ea]), torch.cat([y for _, y in second]))
    # ... and set_epoch replays any epoch exactly.
    b.set_epoch(1)
    for (x1, y1), (x2, y2) in zip(second, _collect(b), strict=True):
        assert_close(x1, x2, atol=0, rtol=0)
        assert_close(y1, y2, atol=0, rtol=0)
    # Order seed is seed + epoch, as documented.
    c = TensorLoader(images, labels, batch_size=8, seed=6)
    assert torch.equal(c.indices(0), a.indices(1))
    assert torch.equal(torch.cat([y for _, y in ea]), a.indices(0))
    assert sorted(torch.cat([y for _, y in ea]).tolist()) == list(range(50))


def test_loader_without_shuffle_and_normalisation_values():
    images, labels = _toy(n=10)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    loader = TensorLoader(images, labels, batch_size=4, shuffle=False, mean=mean, std=std)
    batches = _collect(loader)
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    x = torch.cat([b for b, _ in batches])
    expect = (images.to(torch.float64) / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    assert x.dtype == torch.float32
    assert_close(x.to(torch.float64), expect, atol=2e-6, rtol=0)
    # Known values: 255 in channel 0 -> (1 - 0.1) / 0.5 = 1.8; 0 in channel 2 -> -0.3 / 0.125 = -2.4.
    probe = torch.zeros(1, 3, 1, 2, dtype=torch.uint8)
    probe[0, 0, 0, 0] = 255
    out = normalize(probe, mean, std)
    assert_close(out[0, 0, 0, 0], torch.tensor(1.8), atol=1e-6, rtol=0)
    assert_close(out[0, 2, 0, 0], torch.tensor(-2.4), atol=1e-6, rtol=0)
    assert_close(normalize(probe)[0, 0, 0], torch.tensor([1.0, 0.0]), atol=0, rtol=0)


def test_loader_channels_last_and_dtype():
    images, labels = _toy(n=6)
    x, _ = next(iter(TensorLoader(images, labels, batch_size=6, shuffle=False, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert_close(x, images.float() / 255, atol=0, rtol=0)
    xb, _ = next(iter(TensorLoader(images, labels, batch_size=6, shuffle=False, dtype=torch.bfloat16)))
    assert xb.dtype == torch.bfloat16


def test_sharding_disjoint_equal_and_rank_consistent():
    images, labels = _toy(n=101)
    W = 4
    parts = []
    for r in range(W):
        loader = TensorLoader(images, labels, batch_size=7, seed=11, rank=r, world_size=W)
        loader.set_epoch(3)
        ys = torch.cat([y for _, y in loader])
        assert ys.numel() == 25 == loader.num_samples
        assert torch.equal(ys, loader.indices(3))
        parts.append(set(ys.tolist()))
    assert all(not (parts[i] & parts[j]) for i in range(W) for j in range(i + 1, W))
    union = set().union(*parts)
    assert len(union) == 100  # 101 - (101 mod 4) samples of this epoch's permutation
    full = TensorLoader(images, labels, batch_size=7, seed=11).indices(3)
    assert union == set(full[:100].tolist())


def test_crop_at_shifts_content_exactly():
    images, _ = _toy(n=3, c=2, h=6, w=5)
    p = 2
    dy, dx = torch.tensor([0, 2, 4]), torch.tensor([4, 2, 1])
    out = crop_at(images, p, dy, dx)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(3):
        sy, sx = int(dy[i]) - p, int(dx[i]) - p          # output (h, w) = input (h + sy, w + sx)
        for h in range(6):
            for w in range(5):
                hh, ww = h + sy, w + sx
                inside = 0 <= hh < 6 and 0 <= ww < 5
                want = images[i, :, hh, ww] if inside else torch.zeros(2, dtype=torch.uint8)
                assert torch.equal(out[i, :, h, w], want)
    assert torch.equal(out[1], images[1])  # centred window = identity
    # Image 0 moved down 2 and right... i.e. content shifted: rows 0-1 are padding, columns 3-4 padding.
    assert (out[0, :, :2] == 0).all() and (out[0, :, :, 3:] == 0).all()
    assert torch.equal(out[0, :, 2:, :3], images[0, :, :4, 2:])


def test_random_crop_windows_and_flip_are_exact_transforms():
    images, _ = _toy(n=64, c=1, h=4, w=4)
    g = torch.Generator().manual_seed(0)
    out = random_crop(images, 1, g)
    seen = set()
    for i in range(64):
        matches = [(a, b) for a in range(3) for b in range(3)
                   if torch.equal(out[i:i + 1], crop_at(images[i:i + 1], 1, torch.tensor([a]), torch.tensor([b])))]
        assert len(matches) == 1  # pixels 1..255 make every window distinct
        seen.add(matches[0])
    assert len(seen) == 9  # all (2p+1)^2 offsets occur in 64 draws with this seed
    f = random_hflip(images, torch.Generator().manual_seed(1))
    flipped = [torch.equal(f[i], images[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(f[i], images[i]) for i in range(64)]
    assert all(a or b for a, b in zip(flipped, kept)) and 16 < sum(flipped) < 48


def test_loader_augmentation_preserves_shape_and_pads_with_zero():
    images = torch.full((32, 3, 8, 8), 200, dtype=torch.uint8)
    loader = TensorLoader(images, torch.zeros(32, dtype=torch.int64), batch_size=32, augment=Augment(crop_padding=4))
    x, _ = next(iter(loader))
    assert x.shape == (32, 3, 8, 8)
    # Padding is raw 0 (before normalisation, as torchvision pads the PIL image); content is untouched.
    assert_close(torch.unique(x), torch.tensor([0, 200], dtype=torch.uint8).float() / 255, atol=0, rtol=0)
    # Each image's content is one rectangle of (8 - |shift_y|) x (8 - |shift_x|) pixels, shifts in [-4, 4].
    for img in x[:, 0]:
        rows, cols = (img > 0).any(1), (img > 0).any(0)
        assert rows.sum() >= 4 and cols.sum() >= 4
        assert (img > 0).sum() == rows.sum() * cols.sum()


def test_loader_bad_arguments():
    images, labels = _toy(n=5)
    with pytest.raises(TypeError, match="uint8"):
        TensorLoader(images.float(), labels, batch_size=2)
    with pytest.raises(ValueError, match="length 5"):
        TensorLoader(images, labels[:4], batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TensorLoader(images, labels, batch_size=0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 1\]"):
        TensorLoader(images, labels, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="3 channels"):
        TensorLoader(images, labels, batch_size=2, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std must be > 0"):
        TensorLoader(images, labels, batch_size=2, std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="crop_padding must be >= 0"):
        Augment(crop_padding=-1)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        TensorLoader(images[:, 0], labels, batch_size=2)
    with pytest.raises(ValueError, match="world_size=8"):
        TensorLoader(images, labels, batch_size=2, world_size=8, rank=0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 120), batch_size=st.integers(1, 40), drop_last=st.booleans(), world_size=st.integers(1, 4),
       shuffle=st.booleans())
def test_loader_length_matches_iteration(n, batch_size, drop_last, world_size, shuffle):
    if n < world_size:
        return
    images = torch.zeros((n, 1, 2, 2), dtype=torch.uint8)
    rank = n % world_size
    loader = TensorLoader(images, torch.arange(n), batch_size, drop_last=drop_last, shuffle=shuffle,
                          world_size=world_size, rank=rank)
    sizes = [y.numel() for _, y in loader]
    per_rank = n // world_size
    assert len(sizes) == len(loader)
    assert all(s == batch_size for s in sizes[:-1])
    if drop_last:
        assert sizes == [batch_size] * (per_rank // batch_size)
    else:
        assert sum(sizes) == per_rank and (not sizes or 1 <= sizes[-1] <= batch_size)


# ====================================================================================================
# ImageFolder
# ====================================================================================================

def _write_tree(root: Path, classes=("cat", "ant", "bee"), per_class: int = 2, shape=(8, 12)) -> dict:
    from PIL import Image
    rng = np.random.default_rng(0)
    arrays = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            arr = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"img{k}.png")
            arrays[(c, k)] = arr
    return arrays


def test_imagefolder_lazy_and_preloaded_exact_pixels(tmp_path):
    arrays = _write_tree(tmp_path)
    ds = ImageFolder(tmp_path, size=8, resize=8)
    assert ds.classes == ["ant", "bee", "cat"] and len(ds) == 6
    assert ds.targets.tolist() == [0, 0, 1, 1, 2, 2]
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and y == 2
    # 8x12 image, shorter side already 8: no resampling, the centre crop keeps columns 2..9 exactly.
    expect = torch.from_numpy(arrays[("cat", 0)][:, 2:10]).permute(2, 0, 1)
    assert torch.equal(x, expect)
    images, labels = ImageFolder(tmp_path, size=8, resize=8, preload=True).load_all()
    assert images.shape == (6, 3, 8, 8) and torch.equal(images[4], x) and torch.equal(labels, ds.targets)
    grey = ImageFolder(tmp_path, size=4, mode="L")
    assert grey[0][0].shape == (1, 4, 4)


def test_imagefolder_resize_keeps_constant_images_constant(tmp_path):
    from PIL import Image
    (tmp_path / "a").mkdir()
    Image.new("RGB", (40, 30), (10, 120, 250)).save(tmp_path / "a" / "x.png")
    x = decode_image(tmp_path / "a" / "x.png", size=16)  # resize default round(16*256/224) = 18
    assert x.shape == (3, 16, 16)
    assert torch.equal(x, torch.tensor([10, 120, 250], dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16))
    with pytest.raises(ValueError, match="resize .* must be >= size"):
        decode_image(tmp_path / "a" / "x.png", size=16, resize=8)


def test_imagefolder_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="hold no images"):
        ImageFolder(tmp_path)
    _write_tree(tmp_path / "t", classes=("a",), per_class=1)
    (tmp_path / "t" / "b").mkdir()
    with pytest.raises(FileNotFoundError, match=r"class folder\(s\) b hold no images"):
        ImageFolder(tmp_path / "t")
    (tmp_path / "t" / "b" / "broken.png").write_bytes(b"not a png")
    ds = ImageFolder(tmp_path / "t", size=4)
    with pytest.raises(ValueError, match="broken.png"):
        ds[1]


def test_catalog_imagefolder_train_val(tmp_path):
    _write_tree(tmp_path / "train", classes=("x", "y"), per_class=3)
    _write_tree(tmp_path / "val", classes=("x", "y"), per_class=1)
    assert locate("imagefolder", tmp_path) == tmp_path
    images, labels, info = load_dataset("imagefolder", tmp_path, "test", size=8)
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1] and info.classes == ("x", "y")
    loader = make_loader("imagefolder", "train", 4, tmp_path, dataset_kwargs={"size": 8})
    assert loader.augment.hflip and len(loader) == 2


# ====================================================================================================
# Catalog and CLI
# ====================================================================================================

@pytest.fixture
def clean_catalog():
    saved = dict(DATASETS)
    yield DATASETS
    DATASETS.clear()
    DATASETS.update(saved)


def test_catalog_entries_and_registration(clean_catalog, tmp_path):
    for name in ("cifar10", "cifar100", "digits", "imagefolder", "nmnist", "cifar10dvs"):
        assert name in clean_catalog
    info = get_dataset("CIFAR10")
    assert info.num_classes == 10 and info.input_shape == (3, 32, 32) and len(info.mean) == 3
    with pytest.raises(KeyError, match="unknown dataset 'imagenet1k'"):
        get_dataset("imagenet1k")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(get_dataset("digits"))

    # A plugin fills a declared slot (loader=None) without overwrite=True.
    (tmp_path / "toy" / "Train").mkdir(parents=True)

    def read_toy(path, split, scale=1):
        return torch.full((3, 1, 2, 2), scale, dtype=torch.uint8), torch.tensor([0, 1, 0])

    clean_catalog["toy"] = DatasetInfo(name="toy", description="declared", kind="events", relpath="toy",
                                       files=("Train",), loader=None, num_classes=2, provided_by="some.plugin")
    with pytest.raises(FileNotFoundError, match="no reader is installed.*some.plugin"):
        load_dataset("toy", tmp_path)
    register_dataset(name="toy", description="toy set", kind="events", relpath="toy", files=("Train",),
                     loader=read_toy, num_classes=2)
    x, y, inf = load_dataset("toy", tmp_path, "train", scale=7)
    assert x.unique().tolist() == [7] and inf.description == "toy set"
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("toy", tmp_path, "validation")
    row = next(r for r in dataset_status(tmp_path) if r.name == "toy")
    assert row.found and row.path == str(tmp_path / "toy") and row.reader

    with pytest.raises(ValueError, match="relpath and files are required"):
        DatasetInfo(name="bad", description="", kind="static", relpath="x", files=(), loader=None, num_classes=1)
    with pytest.raises(ValueError, match="kind must be one of"):
        DatasetInfo(name="bad", description="", kind="video", relpath="x", files=("a",), loader=None, num_classes=1)


def test_dataset_status_reports_paths(tmp_path):
    rows = {r.name: r for r in dataset_status(tmp_path)}
    assert not rows["cifar10"].found
    assert rows["cifar10"].path == str(tmp_path / "cifar10" / "cifar-10-batches-py")
    assert str(tmp_path) in rows["cifar10"].checked and "MULTISPIKE_DATA" in rows["cifar10"].fix
    assert rows["digits"].found and rows["digits"].path.endswith("digits.csv.gz")
    assert not rows["imagefolder"].found and "explicit path" in rows["imagefolder"].fix


def _cli(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(list(argv))
    return rc, buf.getvalue()


def test_cli_datasets_table_and_json(tmp_path):
    rc, out = _cli("datasets", "--data-dir", str(tmp_path))
    assert rc == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "not found" in lines["cifar10"] and str(tmp_path / "cifar10" / "cifar-10-batches-py") in lines["cifar10"]
    assert " found " in lines["digits"]
    assert "from --data-dir" in out and "MULTISPIKE_DATA" in out
    rc, out = _cli("datasets", "--data-dir", str(tmp_path), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["data_root"] == str(tmp_path) and doc["data_root_source"] == "argument"
    by_name = {d["name"]: d for d in doc["datasets"]}
    assert by_name["digits"]["found"] and not by_name["cifar10"]["found"]


@needs_cifar
def test_cli_datasets_finds_real_cifar():
    rc, out = _cli("datasets")
    line = next(line for line in out.splitlines() if line.startswith("cifar10 "))
    assert rc == 0 and " found " in line and str(CIFAR_DIR) in line


def test_cli_datasets_help():
    with pytest.raises(SystemExit) as exc:
        _cli("datasets", "--help")
    assert exc.value.code == 0
