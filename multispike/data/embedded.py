"""``digits``: scikit-learn's 8x8 handwritten digits, shipped inside the installed package (no download).

Source: ``sklearn.datasets.load_digits`` reads ``sklearn/datasets/data/digits.csv.gz`` from the
installed wheel (the UCI "Optical Recognition of Handwritten Digits" test set, 1,797 images of 10
classes, 174-183 per class). Each pixel is a count 0..16 of set bits in a 4x4 block of the original
32x32 bitmap.

Representation here:
  * pixels mapped to uint8 by ``p = floor(v * 255 / 16 + 1/2)`` (round half up), so 0 -> 0, 16 -> 255
    and every level stays distinct; images are ``[N, 1, 8, 8]``;
  * a deterministic stratified split: within each class, a ``torch.Generator`` seeded with ``seed``
    permutes the indices and the first ``floor(n_c * test_fraction + 1/2)`` go to test. With the defaults
    (``test_fraction=0.2``, ``seed=0``) that is 1,438 train / 359 test images. Indices are returned in
    their original order, so the split depends only on membership, not on the permutation order.

This is the dataset ``multispike demo`` trains on; augmentation (crops, flips) is off for it, since a
flipped digit is a different symbol and 8x8 images have no margin to crop.

Example::

    x_train, y_train = load_digits_split("train")   # uint8 [1438, 1, 8, 8], int64 [1438]
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .._validate import check_positive_int
from .cifar import StaticSplit

__all__ = ["DIGITS_CLASSES", "DIGITS_MEAN", "DIGITS_STD", "digits_split_indices", "load_digits_all",
           "load_digits_split", "load_digits_static", "sklearn_digits_path"]

DIGITS_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
# Per-channel statistics of the default train split (test_fraction=0.2, seed=0) on the [0, 1] scale
# (uint8 / 255; population std); tests recompute them from the data.
DIGITS_MEAN: tuple[float, ...] = (0.3060,)
DIGITS_STD: tuple[float, ...] = (0.3763,)


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a core dependency
        raise ImportError("the embedded 'digits' dataset comes from scikit-learn: pip install scikit-learn") from exc
    return load_digits


def sklearn_digits_path() -> str | None:
    """Path of the digits file inside the installed scikit-learn, or ``None`` if it is not installed."""
    try:
        import sklearn.datasets
    except ImportError:
        return None
    from pathlib import Path
    path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return str(path) if path.is_file() else None


def load_digits_all() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(uint8 [1797, 1, 8, 8], int64 [1797])`` in scikit-learn's order."""
    d = _sklearn_digits()()
    if not bool(np.all(d.images == np.round(d.images))):   # checked before the cast, which would truncate
        raise ValueError("scikit-learn digits hold non-integer values, expected integers 0..16; the installed "
                         "scikit-learn data file is not the expected one")
    raw = torch.from_numpy(d.images).to(torch.int64)  # float64 holding integers 0..16
    if raw.min() < 0 or raw.max() > 16:
        raise ValueError(f"scikit-learn digits hold values {int(raw.min())}..{int(raw.max())}, expected 0..16; "
                         "the installed scikit-learn data file is not the expected one")
    images = ((raw * 255 + 8) // 16).to(torch.uint8).unsqueeze(1)   # round half up, integer-exact
    labels = torch.from_numpy(d.target).to(torch.int64)
    return images.contiguous(), labels


def digits_split_indices(labels: torch.Tensor, test_fraction: float = 0.2,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified ``(train_idx, test_idx)`` (int64, ascending) over ``labels``.

    Args:
        test_fraction: share of each class sent to test, in (0, 1).
        seed: seeds the per-class permutations (one ``torch.Generator`` drawn class by class).
    """
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    gen = torch.Generator().manual_seed(int(seed))
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_test = math.floor(idx.numel() * test_fraction + 0.5)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def load_digits_split(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """One split of the embedded digits: ``(uint8 [N, 1, 8, 8], int64 [N])``.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        test_fraction, seed: see :func:`digits_split_indices`.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"digits: split must be 'train', 'test' or 'all', got {split!r}")
    seed = check_positive_int(seed, "seed", minimum=0)
    images, labels = load_digits_all()
    if split == "all":
        return images, labels
    tr, te = digits_split_indices(labels, test_fraction, seed)
    idx = tr if split == "train" else te
    return images[idx].contiguous(), labels[idx]


def load_digits_static(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> StaticSplit:
    """:func:`load_digits_split` wrapped as a :class:`~multispike.data.cifar.StaticSplit`."""
    images, labels = load_digits_split(split, test_fraction, seed)
    return StaticSplit(images=images, labels=labels, classes=DIGITS_CLASSES,
                       source=sklearn_digits_path() or "sklearn.datasets.load_digits")
