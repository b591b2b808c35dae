"""Event-camera datasets (N-MNIST, CIFAR10-DVS, simulated saccades) and a time-major collate.

Each dataset yields ``(x, label)`` where, depending on ``data_type``:

* ``"event"``: ``x`` is the structured event array (fields t, x, y, p);
* ``"frame"``: ``x`` is a float32 tensor ``[T, 2, H, W]`` of event counts, from SpikingJelly-style
  ``frames_number=T, split_by="number"|"time"`` or one tonic-style argument (``time_window``, ``event_count``,
  ``n_time_bins``, ``n_event_bins``); with ``cache_dir`` the integrated frames are cached on disk;
* ``"multilevel"``: the raw frames (sized as for ``"frame"``, this is ``N_raw``) go through a
  :class:`~multispike.data.events.encoding.MultiLevelEncoder`, giving ``[Q_F, S_i, 2, H', W']`` lanes (or the
  merged ``[Q_F, 2, H', W']`` value).

Batches from :func:`collate_time_major` are time-major ``[T, B, ...]`` (multispike's convention; tonic and
SpikingJelly loaders are batch-first ``[B, T, ...]``).

Example::

    train = NMNIST(split="train", data_type="frame", frames_number=10, split_by="number", cache_dir="/tmp/nm")
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate_time_major)
    x, y = next(iter(loader))          # x: [10, 32, 2, 34, 34], y: [32]

Size (over 450 lines): N-MNIST, CIFAR10-DVS and the saccade-simulator datasets share their frame modes,
caching and time-major collate, which are the bulk of the file.
"""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .encoding import MultiLevelEncoder
from .events import SensorSize, validate_events
from .frames import FrameCache, frames_from_events
from .readers import (CIFAR10DVS_SENSOR_SIZE, NMNIST_SENSOR_SIZE, read_cifar10dvs_aedat, read_events_npz,
                      read_nmnist_bin)
from .simulator import simulate_saccades

__all__ = ["EventDataset", "NMNIST", "CIFAR10DVS", "SaccadeEventDataset", "collate_time_major",
           "TimeMajorCollate", "CIFAR10DVS_CLASSES", "DATA_TYPES"]

DATA_TYPES = ("event", "frame", "multilevel")
CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SIZING = ("frames_number", "time_window", "event_count", "n_time_bins", "n_event_bins")


class EventDataset(Dataset):
    """Base class: a list of (source, label) samples read by :meth:`load_events`, turned into events, frames
    or multi-level lanes.

    Subclasses set ``samples``, ``classes`` and ``sensor_size`` and implement :meth:`load_events`.

    Args:
        data_type: ``"event"``, ``"frame"`` or ``"multilevel"``.
        frames_number, split_by: SpikingJelly-style integration (``split_by`` in {"number", "time"}).
        time_window, event_count, n_time_bins, n_event_bins, overlap, include_incomplete: tonic-style
            integration (exactly one sizing argument overall for "frame"/"multilevel", none for "event").
        encoder: the :class:`MultiLevelEncoder` for ``"multilevel"``.
        cache_dir: folder for the integrated-frame cache (:class:`FrameCache`); None = no cache.
        transform, target_transform: applied to ``x`` and to the label last.
    """

    synthetic: bool = False
    sensor_size: SensorSize
    classes: tuple[str, ...]

    def __init__(self, data_type: str = "event", frames_number: int | None = None, split_by: str = "number",
                 time_window: float | None = None, event_count: int | None = None, n_time_bins: int | None = None,
                 n_event_bins: int | None = None, overlap: float = 0.0, include_incomplete: bool = False,
                 encoder: MultiLevelEncoder | None = None, cache_dir: "str | os.PathLike[str] | None" = None,
                 transform: Callable | None = None, target_transform: Callable | None = None) -> None:
        owner = type(self).__name__
        if data_type not in DATA_TYPES:
            raise ValueError(f"{owner}: data_type must be one of {DATA_TYPES}, got {data_type!r}")
        values = dict(zip(_SIZING, (frames_number, time_window, event_count, n_time_bins, n_event_bins)))
        given = {k: v for k, v in values.items() if v is not None}
        if data_type == "event" and given:
            raise ValueError(f"{owner}: data_type='event' returns raw events; {sorted(given)} only apply to "
                             f"data_type='frame' or 'multilevel'")
        if data_type != "event" and len(given) != 1:
            raise ValueError(f"{owner}: data_type={data_type!r} needs exactly one of {', '.join(_SIZING)}; got "
                             f"{given or 'none'}")
        if split_by not in ("number", "time"):
            raise ValueError(f"{owner}: split_by must be 'number' or 'time', got {split_by!r}")
        if data_type == "multilevel":
            if not isinstance(encoder, MultiLevelEncoder):
                raise ValueError(f"{owner}: data_type='multilevel' needs encoder=MultiLevelEncoder(T_F=..., "
                                 f"lanes=...), got {encoder!r}")
            if frames_number is not None and frames_number < encoder.T_F:
                raise ValueError(f"{owner}: frames_number={frames_number} raw frames cannot make T_F={encoder.T_F} "
                                 f"binary frames; use frames_number >= {encoder.T_F}")
        elif encoder is not None:
            raise ValueError(f"{owner}: encoder is only used with data_type='multilevel', got "
                             f"data_type={data_type!r}")
        self.data_type = data_type
        self.frame_params: dict[str, Any] = {}
        if given:
            self.frame_params = {**given, "overlap": overlap, "include_incomplete": include_incomplete}
            if frames_number is not None:
                self.frame_params = {"frames_number": frames_number, "split_by": split_by}
        self.encoder = encoder
        self.cache = FrameCache(cache_dir) if cache_dir is not None else None
        self.transform = transform
        self.target_transform = target_transform
        self.samples: list[tuple[Any, int]] = []

    # -- to override -----------------------------------------------------------------------------------
    def load_events(self, index: int) -> np.ndarray:
        """The events of sample ``index``."""
        raise NotImplementedError

    def _cache_source(self, index: int) -> "str | None":
        """File whose identity keys the frame cache, or None when the sample is not a file."""
        source = self.samples[index][0]
        return source if isinstance(source, (str, os.PathLike)) else None

    # -- Dataset API -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        return [label for _, label in self.samples]

    def class_counts(self) -> list[int]:
        """Samples per class."""
        return np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes)).tolist()

    def frames(self, index: int) -> np.ndarray:
        """Integrated frames of sample ``index`` (through the cache when one is configured)."""
        if not self.frame_params:
            raise ValueError(f"{type(self).__name__}: no frame parameters (data_type='event')")

        def compute() -> np.ndarray:
            return frames_from_events(self.load_events(index), self.sensor_size, **self.frame_params)

        source = self._cache_source(index)
        if self.cache is None or source is None:
            return compute()
        params = {**self.frame_params, "sensor_size": list(self.sensor_size), "reader": type(self).__name__,
                  "dtype": "int16"}
        return self.cache.get_or_compute(source, params, compute)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {len(self)} samples")
        index %= len(self)
        label = self.samples[index][1]
        if self.data_type == "event":
            x: Any = self.load_events(index)
        else:
            frames = self.frames(index)
            if self.data_type == "frame":
                x = torch.from_numpy(frames.astype(np.float32))
            else:
                x = self.encoder(torch.from_numpy(frames))
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return x, label

    @property
    def metadata(self) -> dict[str, Any]:
        """Provenance recorded with results: class, sensor, data type, frame and encoder settings."""
        meta = {"dataset": type(self).__name__, "synthetic": self.synthetic, "sensor_size": list(self.sensor_size),
                "data_type": self.data_type, "frame_params": dict(self.frame_params), "num_samples": len(self)}
        if self.encoder is not None:
            meta["encoder"] = self.encoder.config()
        return meta

    def __repr__(self) -> str:
        extra = ", synthetic=True" if self.synthetic else ""
        return (f"{type(self).__name__}(n={len(self)}, data_type={self.data_type!r}, sensor_size="
                f"{tuple(self.sensor_size)}{extra})")


def _data_root(root) -> Path:
    from ..catalog import resolve_data_root  # late: the catalog imports this package as a plugin
    return resolve_data_root(root)


def _split_name(split: str, allowed: Sequence[str], owner: str) -> str:
    s = str(split).lower()
    if s not in allowed:
        raise ValueError(f"{owner}: split must be one of {list(allowed)}, got {split!r}")
    return s


# ----------------------------------------------------------------------------------------------- N-MNIST
class NMNIST(EventDataset):
    """N-MNIST recordings in the native ``.bin`` format (34 x 34 ATIS, 2 polarities).

    Layout: ``<root>/{Train,Test}/<digit>/<id>.bin``, with an optional ``labels.csv``
    (``split,path,label,...``; the shared N-MNIST-small subset has one) that fixes the sample order and labels;
    without it the digit folders are scanned in sorted order.

    Args:
        root: the dataset folder, or a data root holding ``events/nmnist-small`` (default: ``$MULTISPIKE_DATA``,
            else ``<repo>/../shared/datasets``). Nothing is downloaded.
        split: ``"train"`` or ``"test"``.
        **kwargs: see :class:`EventDataset` (data_type, frames_number, split_by, tonic arguments, encoder,
            cache_dir, transform, target_transform).

    Example::

        ds = NMNIST(split="test", data_type="frame", frames_number=8, split_by="time")
        x, y = ds[0]          # x: float32 [8, 2, 34, 34]
    """

    sensor_size = NMNIST_SENSOR_SIZE
    classes = tuple(str(d) for d in range(10))

    def __init__(self, root: "str | os.PathLike[str] | None" = None, split: str = "train", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.split = _split_name(split, ("train", "test"), "NMNIST")
        self.root = _find_nmnist_root(root)
        self.samples = _nmnist_samples(self.root, self.split)

    def load_events(self, index: int) -> np.ndarray:
        return read_nmnist_bin(self.samples[index][0])


def _find_nmnist_root(root) -> Path:
    if root is not None and Path(root).expanduser().is_dir() and (
            (Path(root).expanduser() / "Train").is_dir() or (Path(root).expanduser() / "Test").is_dir()):
        return Path(root).expanduser()
    from ..catalog import locate  # late: the catalog imports this package as a plugin
    return locate("nmnist", root)


def _resolve_listed(root: Path, rel: str) -> Path:
    # The shared N-MNIST-small copy was written from CRLF label lists, so its folder names end in '\r'
    # ("Train/5\r/00001.bin") and labels.csv records those names; accept both that and the clean layout.
    clean = root / rel.replace("\r", "")
    if clean.is_file():
        return clean
    literal = root / rel
    if literal.is_file():
        return literal
    raise FileNotFoundError(f"NMNIST: labels.csv lists {rel!r} but neither {clean} nor {literal!r} exists")


def _nmnist_samples(root: Path, split: str) -> list[tuple[str, int]]:
    labels_csv = root / "labels.csv"
    samples: list[tuple[str, int]] = []
    if labels_csv.is_file():
        # Split on '\n' only: the shared copy has '\r' inside fields (see _resolve_listed), which the csv
        # module would take for line ends. Fields never contain commas.
        lines = [ln for ln in labels_csv.read_bytes().decode("utf-8").split("\n") if ln.strip()]
        header = [h.strip() for h in lines[0].split(",")] if lines else []
        missing = {"split", "path", "label"} - set(header)
        if missing:
            raise ValueError(f"NMNIST: {labels_csv} lacks column(s) {sorted(missing)}; has {header}")
        col = {name: header.index(name) for name in ("split", "path", "label")}
        for lineno, line in enumerate(lines[1:], start=2):
            fields = line.split(",")
            if len(fields) != len(header):
                raise ValueError(f"NMNIST: {labels_csv} line {lineno} has {len(fields)} fields, expected "
                                 f"{len(header)}: {line!r}")
            if fields[col["split"]].strip().lower() != split:
                continue
            try:
                label = int(fields[col["label"]].strip())
            except ValueError:
                raise ValueError(f"NMNIST: {labels_csv} line {lineno}: label {fields[col['label']]!r} is not an "
                                 f"integer") from None
            if not 0 <= label <= 9:
                raise ValueError(f"NMNIST: {labels_csv} line {lineno}: label {label}; digits are 0-9")
            samples.append((str(_resolve_listed(root, fields[col["path"]])), label))
        if not samples:
            raise FileNotFoundError(f"NMNIST: {labels_csv} lists no {split!r} samples")
        return samples
    split_dir = root / ("Train" if split == "train" else "Test")
    if not split_dir.is_dir():
        raise FileNotFoundError(f"NMNIST: no {split_dir} folder (expected {root}/Train and {root}/Test with one "
                                f"folder per digit)")
    for digit_dir in sorted(split_dir.iterdir(), key=lambda p: p.name.strip()):
        name = digit_dir.name.strip()
        if not (digit_dir.is_dir() and name.isdigit() and 0 <= int(name) <= 9):
            continue
        samples.extend((str(f), int(name)) for f in sorted(digit_dir.glob("*.bin")))
    if not samples:
        raise FileNotFoundError(f"NMNIST: no <digit>/*.bin files under {split_dir}")
    return samples


# ----------------------------------------------------------------------------------------------- CIFAR10-DVS
class CIFAR10DVS(EventDataset):
    """CIFAR10-DVS from its original files: one folder per class holding ``cifar10_<class>_<i>.aedat``
    (jAER AEDAT 2, decoded as SpikingJelly does) or SpikingJelly's converted ``.npz`` event files.

    Split (``split="train" | "test" | "all"``): the TEBN split used by SpikingJelly's ``CIFAR10DVSTEBNSplit`` and
    most later work: samples ``i = 0..99`` of each class are the test set, ``i = 100..999`` the training set
    (``i`` is the number at the end of the file name). Accuracy on this split runs higher than on a random one.

    Args:
        root: folder holding the 10 class folders, or a data root holding ``events/cifar10dvs``.
        split: ``"train"``, ``"test"`` or ``"all"``.
        **kwargs: see :class:`EventDataset`.

    Raises:
        FileNotFoundError: the folder, a class folder, or every sample of a class is missing (the message
            names the folder).
    """

    sensor_size = CIFAR10DVS_SENSOR_SIZE
    classes = CIFAR10DVS_CLASSES
    test_per_class = 100

    def __init__(self, root: "str | os.PathLike[str] | None" = None, split: str = "train", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.split = _split_name(split, ("train", "test", "all"), "CIFAR10DVS")
        self.root = _find_cifar10dvs_root(root)
        self.samples = []
        for label, name in enumerate(self.classes):
            for index, path in _class_files(self.root / name):
                is_test = index < self.test_per_class
                if self.split == "all" or (self.split == "test") == is_test:
                    self.samples.append((str(path), label))

    def load_events(self, index: int) -> np.ndarray:
        path = self.samples[index][0]
        if path.endswith(".npz"):
            events = read_events_npz(path)
            validate_events(events, self.sensor_size, owner=path)
            return events
        return read_cifar10dvs_aedat(path)


def _find_cifar10dvs_root(root) -> Path:
    if root is not None:
        base = Path(root).expanduser()
        if base.is_dir() and any((base / c).is_dir() for c in CIFAR10DVS_CLASSES):
            return base
        for cand in (base / "events" / "cifar10dvs", base / "cifar10dvs"):
            if cand.is_dir() and any((cand / c).is_dir() for c in CIFAR10DVS_CLASSES):
                return cand
        raise FileNotFoundError(f"CIFAR10DVS: no class folders ({', '.join(CIFAR10DVS_CLASSES)}) in {base}; "
                                f"unzip the ten per-class archives there (nothing is downloaded)")
    from ..catalog import locate  # late: the catalog imports this package as a plugin
    return locate("cifar10dvs", None)


def _class_files(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR10DVS: class folder {folder} is missing; expected one folder per class "
                                f"({', '.join(CIFAR10DVS_CLASSES)}) with cifar10_<class>_<i>.aedat files")
    found: dict[int, Path] = {}
    for f in folder.iterdir():
        if f.suffix.lower() not in (".aedat", ".npz"):
            continue
        m = re.search(r"(\d+)$", f.stem)
        if m is None:
            continue
        i = int(m.group(1))
        # Prefer the original recording when both it and a converted .npz exist.
        if i not in found or f.suffix.lower() == ".aedat":
            found[i] = f
    if not found:
        raise FileNotFoundError(f"CIFAR10DVS: no cifar10_<class>_<i>.aedat or .npz files in {folder}")
    return sorted(found.items())


# ----------------------------------------------------------------------------------------------- simulated
class SaccadeEventDataset(EventDataset):
    """SYNTHETIC event streams made from static images by :func:`simulate_saccades` (so event pipelines can run
    on CIFAR-10 or MNIST without a camera). ``synthetic`` is True on the dataset and in its ``metadata``.

    Args:
        images: ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` uint8 (or float in [0, 1]) images, or an
            object with ``images``, ``labels`` and ``classes`` (e.g. :func:`multispike.data.load_cifar10`).
        labels: ``[N]`` integer labels (omit when ``images`` carries them).
        classes: class names (default: ``"0"..``).
        simulator: keyword arguments for :func:`simulate_saccades` (``n_steps``, ``shift_pattern``,
            ``contrast_threshold``, ``amplitude``, ...). ``pad`` defaults to ``⌈amplitude⌉`` so that every sample
            has the same sensor size.
        seed: sample ``i`` is simulated with seed ``seed + i`` (random patterns, threshold mismatch).
        **kwargs: see :class:`EventDataset`.

    Example::

        ds = SaccadeEventDataset(load_cifar10(split="test"), data_type="frame", frames_number=8)
        x, y = ds[0]            # [8, 2, 36, 36] counts from a simulated camera
    """

    synthetic = True

    def __init__(self, images, labels=None, classes: Sequence[str] | None = None,
                 simulator: dict[str, Any] | None = None, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if labels is None and hasattr(images, "images") and hasattr(images, "labels"):
            classes = classes if classes is not None else getattr(images, "classes", None)
            images, labels = images.images, images.labels
        if labels is None:
            raise ValueError("SaccadeEventDataset: labels are required (or pass an object with .images/.labels)")
        self.images = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        labels = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
        if len(self.images) != len(labels):
            raise ValueError(f"SaccadeEventDataset: {len(self.images)} images but {len(labels)} labels")
        self.simulator = dict(simulator or {})
        allowed = set(inspect.signature(simulate_saccades).parameters) - {"image", "seed"}
        unknown = set(self.simulator) - allowed
        if unknown:
            raise ValueError(f"SaccadeEventDataset: unknown simulator argument(s) {sorted(unknown)}; allowed: "
                             f"{sorted(allowed)} (seeds come from seed=)")
        amplitude = self.simulator.get("amplitude", 2.0)
        self.simulator.setdefault("pad", int(np.ceil(amplitude)))
        self.seed = int(seed)
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        self.classes = tuple(classes) if classes is not None else tuple(str(i) for i in range(n_classes))
        self.samples = [(i, int(lab)) for i, lab in enumerate(labels)]
        first = simulate_saccades(self.images[0], seed=self.seed, **self.simulator) if len(labels) else None
        self.sensor_size = first.sensor_size if first is not None else SensorSize(1, 1, 2)

    def recording(self, index: int):
        """The full :class:`EventRecording` (``synthetic=True``, simulator parameters in ``metadata``)."""
        return simulate_saccades(self.images[index], seed=self.seed + index, **self.simulator)

    def load_events(self, index: int) -> np.ndarray:
        rec = self.recording(index)
        if rec.sensor_size != self.sensor_size:
            raise ValueError(f"SaccadeEventDataset: sample {index} gives sensor {tuple(rec.sensor_size)} but the "
                             f"dataset uses {tuple(self.sensor_size)}; images must share one size and pad must be "
                             f"fixed (pass simulator={{'pad': ...}})")
        return rec.events

    @property
    def metadata(self) -> dict[str, Any]:
        meta = super().metadata
        meta["simulator"] = {**self.simulator, "seed": self.seed, "function": "simulate_saccades"}
        return meta


# ----------------------------------------------------------------------------------------------- collate
def collate_time_major(batch: Sequence[tuple[Any, Any]], pad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate ``(x, label)`` samples with ``x`` of shape ``[T, ...]`` into time-major ``([T, B, ...], [B])``.

    Tonic's ``PadTensors(batch_first=True)`` and SpikingJelly give ``[B, T, ...]``; multispike's layers expect
    ``[T, B, ...]``. Samples of different lengths are zero-padded at the end to the longest ``T`` (tonic's
    rule) when ``pad=True``; otherwise differing lengths raise.
    """
    if len(batch) == 0:
        raise ValueError("collate_time_major: empty batch")
    xs, ys = [], []
    for i, (x, y) in enumerate(batch):
        if isinstance(x, np.ndarray) and x.dtype.names is not None:
            raise TypeError("collate_time_major: samples are raw event arrays; integrate them first "
                            "(data_type='frame' or 'multilevel')")
        x = torch.as_tensor(x)
        if x.dim() < 1:
            raise ValueError(f"collate_time_major: sample {i} has shape {tuple(x.shape)}; expected [T, ...]")
        xs.append(x)
        ys.append(torch.as_tensor(y))
    tail = {tuple(x.shape[1:]) for x in xs}
    if len(tail) != 1:
        raise ValueError(f"collate_time_major: samples differ beyond the time axis: {sorted(tail)}")
    lengths = [x.shape[0] for x in xs]
    T = max(lengths)
    if len(set(lengths)) > 1:
        if not pad:
            raise ValueError(f"collate_time_major: samples have different lengths {sorted(set(lengths))}; pass "
                             f"pad=True to zero-pad them")
        xs = [torch.cat([x, x.new_zeros((T - x.shape[0], *x.shape[1:]))]) if x.shape[0] < T else x for x in xs]
    return torch.stack(xs, dim=1), torch.stack(ys)


class TimeMajorCollate:
    """Picklable ``collate_fn`` wrapper around :func:`collate_time_major` (for ``pad=False``)."""

    def __init__(self, pad: bool = True) -> None:
        self.pad = pad

    def __call__(self, batch):
        return collate_time_major(batch, pad=self.pad)
