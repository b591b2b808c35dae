"""tonic (1.x) interop: feed tonic datasets and transforms to multispike training.

tonic yields ``(events, target)`` with events a numpy structured array (fields ``x, y, t, p`` in tonic's order and
dtype) or, after a transform such as ``tonic.transforms.ToFrame``, frames ``[T, P, H, W]``. multispike trains on
time-major float batches ``[T, B, P, H, W]``. :class:`TonicDataset` turns any tonic dataset (plus an optional
tonic transform) into float frame tensors and integer labels; :func:`tonic_loader` batches them time-major
(zero-padding recordings of different lengths at the end, as ``tonic.collation.PadTensors`` does), with the
``set_epoch`` determinism that :func:`multispike.train.run_training` relies on for bit-exact resume::

    import tonic, tonic.transforms as tt
    ds = tonic.datasets.NMNIST(save_to="data", train=True, transform=tt.ToFrame((34, 34, 2), n_time_bins=8))
    loader = tonic_loader(TonicDataset(ds), batch_size=32, shuffle=True)
    run_training(cfg, model=net, train_loader=loader, eval_loader=...)

multispike's own readers and frame integration reproduce tonic's exactly (tests/test_interop_tonic.py checks
``read_nmnist_bin`` against ``tonic.io.read_mnist_file`` and :func:`multispike.data.events.to_frame` against
``tonic.transforms.ToFrame`` on the shared N-MNIST recordings); :func:`from_tonic_events` /
:func:`to_tonic_events` convert between the two event layouts.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.events.datasets import collate_time_major
from ..data.events.events import EVENT_DTYPE
from .._validate import check_positive_int

__all__ = ["from_tonic_events", "to_tonic_events", "TonicDataset", "TimeMajorLoader", "tonic_loader"]

_FIELDS = ("x", "y", "t", "p")


def from_tonic_events(events: np.ndarray) -> np.ndarray:
    """A tonic event array (structured, fields ``x, y, t, p`` in any order/dtype) as multispike's
    :data:`~multispike.data.events.EVENT_DTYPE` array (``t`` int64 µs, ``x``/``y`` int16, ``p`` int8)."""
    names = getattr(getattr(events, "dtype", None), "names", None)
    missing = [f for f in _FIELDS if names is None or f not in names]
    if missing:
        raise ValueError(f"from_tonic_events: expected a structured array with fields {_FIELDS}, missing {missing}")
    out = np.empty(len(events), dtype=EVENT_DTYPE)
    for f in _FIELDS:
        col = np.asarray(events[f])
        info = np.iinfo(EVENT_DTYPE[f])
        if col.size and (col.min() < info.min or col.max() > info.max):
            raise ValueError(f"from_tonic_events: field {f!r} holds values outside {EVENT_DTYPE[f]} "
                             f"[{col.min()}, {col.max()}]")
        out[f] = col
    return out


def to_tonic_events(events: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """A multispike event array in tonic's layout (default dtype: tonic's N-MNIST ``x, y, t, p`` of ``int``)."""
    dtype = np.dtype(dtype) if dtype is not None else np.dtype([(f, int) for f in _FIELDS])
    out = np.empty(len(events), dtype=dtype)
    for f in dtype.names:
        out[f] = events[f]
    return out


class TonicDataset(Dataset):
    """A tonic dataset as multispike training data: ``(float32 frames [T, P, H, W], int label)``.

    Args:
        dataset: any indexable ``(events_or_frames, target)`` dataset (a ``tonic.datasets`` class, a
            ``tonic.SlicedDataset``, a ``tonic.DiskCachedDataset`` ...).
        transform: an extra transform applied to the sample (e.g. ``tonic.transforms.ToFrame`` when the dataset
            has none); it must produce frames ``[T, P, H, W]`` (or ``[T, H, W]``, given a channel axis).
        dtype: tensor dtype of the frames.

    Raises (on access):
        TypeError: the sample is still an event array (give a ``ToFrame`` transform) or not array-like.
    """

    def __init__(self, dataset: Any, transform: Callable | None = None, *, dtype: torch.dtype = torch.float32) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"TonicDataset: expected an indexable dataset, got {type(dataset).__name__}")
        self.dataset, self.transform, self.dtype = dataset, transform, dtype

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def targets(self) -> list[int]:
        """The labels (tonic datasets keep them in ``targets``; otherwise read through the samples)."""
        t = getattr(self.dataset, "targets", None)
        return [int(v) for v in t] if t is not None else [int(self[i][1]) for i in range(len(self))]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.dataset[index]
        if self.transform is not None:
            x = self.transform(x)
        if isinstance(x, np.ndarray) and x.dtype.names is not None:
            raise TypeError("TonicDataset: the sample is an event array; give a frame transform such as "
                            "tonic.transforms.ToFrame(sensor_size, n_time_bins=T)")
        try:
            frames = torch.as_tensor(np.asarray(x)).to(self.dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"TonicDataset: cannot turn a {type(x).__name__} sample into a tensor") from exc
        if frames.dim() == 3:
            frames = frames.unsqueeze(1)  # [T, H, W] -> [T, 1, H, W]
        if frames.dim() != 4:
            raise TypeError(f"TonicDataset: expected frames [T, P, H, W], got shape {tuple(frames.shape)}")
        return frames, int(np.asarray(y).item()) if not isinstance(y, int) else y


class TimeMajorLoader:
    """Batches ``([T, B, P, H, W] float, [B] int64)`` of a frame dataset, time-major for multispike models.

    The order of epoch ``e`` is ``torch.randperm`` seeded by ``(seed, e)`` (``set_epoch``), so a resumed run sees
    the same batches. Recordings with different ``T`` are zero-padded at the end (``pad=True``) or refused.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 pad: bool = True, drop_last: bool = False, indices: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.shuffle, self.seed, self.pad, self.drop_last = bool(shuffle), int(seed), bool(pad), bool(drop_last)
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        if not self.indices:
            raise ValueError("TimeMajorLoader: the dataset is empty")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.indices)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = [self.indices[i] for i in torch.randperm(n, generator=gen).tolist()]
        else:
            order = list(self.indices)
        self.epoch += 1
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            batch = [self.dataset[i] for i in order[start:start + self.batch_size]]
            x, y = collate_time_major([(f, torch.as_tensor(t)) for f, t in batch], pad=self.pad)
            yield x, y.long()


def tonic_loader(dataset: Any, batch_size: int, *, transform: Callable | None = None, shuffle: bool = False,
                 seed: int = 0, pad: bool = True, drop_last: bool = False,
                 indices: Sequence[int] | None = None) -> TimeMajorLoader:
    """A :class:`TimeMajorLoader` over a tonic dataset (wrapped in :class:`TonicDataset` unless it already is)."""
    ds = dataset if isinstance(dataset, TonicDataset) and transform is None else TonicDataset(dataset, transform)
    return TimeMajorLoader(ds, batch_size, shuffle=shuffle, seed=seed, pad=pad, drop_last=drop_last, indices=indices)
