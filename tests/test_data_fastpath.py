"""The in-memory CIFAR data path on real CIFAR-10 slices: reflect translate, cutout, the full augmented batch.

Every augmentation is checked as an exact transform of the source image (crop = shifted image, flip = mirrored
image, cutout = one zeroed square), on real pixels rather than toy tensors.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from multispike.data import Augment, TensorLoader, crop_at, cutout_at, load_cifar10, normalize, random_cutout

DATA = Path(__file__).resolve().parents[3] / "shared" / "datasets"
if not (DATA / "cifar10").is_dir():
    DATA = Path("/work/shared/datasets")
CIFAR_DIR = DATA / "cifar10" / "cifar-10-batches-py"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def cifar_slice():
    if not (CIFAR_DIR / "test_batch").is_file():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR_DIR}")
    split = load_cifar10(DATA, "test")
    return split.images[:256].clone(), split.labels[:256].clone()


def _candidates(img: torch.Tensor, p: int, pad_mode: str) -> list[torch.Tensor]:
    """All (2p+1)^2 crops of one image, unflipped and flipped."""
    out = []
    for a in range(2 * p + 1):
        for b in range(2 * p + 1):
            c = crop_at(img[None], p, torch.tensor([a]), torch.tensor([b]), pad_mode)[0]
            out += [c, c.flip(-1)]
    return out


def test_reflect_translate_is_a_mirrored_shift(cifar_slice):
    x, _ = cifar_slice
    img = x[:1]
    p = 2
    # shift content right by 2 and down by 1: output (h, w) = input (h - 1, w - 2), mirrored at the border
    out = crop_at(img, p, torch.tensor([p - 1]), torch.tensor([p - 2]), "reflect")[0]
    assert torch.equal(out[:, 1:, 2:], img[0, :, :-1, :-2])
    assert torch.equal(out[:, 0, 2:], img[0, :, 1, :-2])          # row -1 mirrors row 1
    assert torch.equal(out[:, 1:, 0], img[0, :, :-1, 2])          # column -2 mirrors column 2
    assert torch.equal(out[:, 1:, 1], img[0, :, :-1, 1])          # column -1 mirrors column 1
    # the centred window is the identity in both modes
    for mode in ("zeros", "reflect"):
        assert torch.equal(crop_at(x, p, torch.full((256,), p), torch.full((256,), p), mode), x)
    with pytest.raises(ValueError, match="pad_mode"):
        crop_at(img, 2, torch.tensor([0]), torch.tensor([0]), "edge")
    with pytest.raises(ValueError, match="reflect padding"):
        crop_at(img, 32, torch.tensor([0]), torch.tensor([0]), "reflect")


def test_cutout_zeroes_one_clipped_square(cifar_slice):
    x, _ = cifar_slice
    xf = normalize(x[:4], MEAN, STD)
    out = cutout_at(xf, 8, torch.tensor([0, 16, 31, 5]), torch.tensor([0, 16, 31, 20]))
    expect_boxes = [(0, 4, 0, 4), (12, 20, 12, 20), (27, 32, 27, 32), (1, 9, 16, 24)]
    for i, (t, b, l, r) in enumerate(expect_boxes):
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[t:b, l:r] = True
        assert (out[i][:, mask] == 0).all()
        assert torch.equal(out[i][:, ~mask], xf[i][:, ~mask])
    g = torch.Generator().manual_seed(0)
    r = random_cutout(xf, 12, g)
    holes = ((r == 0) & (xf != 0)).all(1).flatten(1).sum(1)
    assert (holes > 0).all() and (holes <= 144).all()


@pytest.mark.parametrize("aug", [Augment(crop_padding=4, hflip=True),
                                 Augment(crop_padding=2, hflip=True, pad_mode="reflect")])
def test_augmented_batch_is_exact_transform_of_source(cifar_slice, aug):
    x, y = cifar_slice
    loader = TensorLoader(x, y, 64, seed=3, augment=aug, mean=MEAN, std=STD)
    idx = loader.indices(0)
    batches = list(loader)
    assert len(batches) == 4
    xb, yb = batches[0]
    assert xb.shape == (64, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert torch.equal(yb, y[idx[:64]])
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (xb >= lo.view(1, 3, 1, 1) - 1e-6).all() and (xb <= hi.view(1, 3, 1, 1) + 1e-6).all()
    flips = 0
    for i in range(16):
        src = x[idx[i]]
        cands = [normalize(c[None], MEAN, STD)[0] for c in _candidates(src, aug.crop_padding, aug.pad_mode)]
        hits = [k for k, c in enumerate(cands) if torch.equal(c, xb[i])]
        assert hits, f"batch image {i} is no crop/flip of its source"
        flips += hits[0] % 2
    assert 0 < flips < 16


def test_same_seed_same_batches_other_seed_differs(cifar_slice):
    x, y = cifar_slice
    aug = Augment(crop_padding=4, hflip=True, cutout=8)
    a = [b[0] for b in TensorLoader(x, y, 128, seed=7, augment=aug, mean=MEAN, std=STD)]
    b = [b[0] for b in TensorLoader(x, y, 128, seed=7, augment=aug, mean=MEAN, std=STD)]
    c = [b[0] for b in TensorLoader(x, y, 128, seed=8, augment=aug, mean=MEAN, std=STD)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])
    # DDP shards see disjoint images and the same augmentation settings
    r0 = TensorLoader(x, y, 64, seed=7, augment=aug, rank=0, world_size=2)
    r1 = TensorLoader(x, y, 64, seed=7, augment=aug, rank=1, world_size=2)
    assert set(r0.indices(0).tolist()).isdisjoint(r1.indices(0).tolist())


def test_augment_rejects_bad_settings():
    with pytest.raises(ValueError, match="pad_mode"):
        Augment(crop_padding=2, pad_mode="wrap")
    with pytest.raises(ValueError, match="cutout"):
        Augment(cutout=-1)
    assert Augment(cutout=4).enabled
