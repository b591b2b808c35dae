"""The dataset catalog: every dataset multispike knows, where it expects it, and how to load it.

Data location (never downloaded), in order of precedence:

1. an explicit ``root`` argument / the CLI's ``--data-dir``;
2. the ``MULTISPIKE_DATA`` environment variable;
3. ``<repo>/../shared/datasets`` (the layout the tests and benchmarks of this repository use).

A dataset registered with ``relpath="cifar10/cifar-10-batches-py"`` is looked for at
``<root>/cifar10/cifar-10-batches-py``, ``<root>/cifar-10-batches-py`` and ``<root>`` itself, so ``root``
may point at the datasets folder or at any folder along the expected path. It is *found* when every
entry of ``files`` exists there.

Other modules add datasets with :func:`register_dataset` (the event-camera readers in
``multispike.data.events`` register ``nmnist`` and ``cifar10dvs`` this way). Modules named in
:data:`PLUGIN_MODULES` are imported on the first catalog query, so their entries appear in
``multispike datasets`` without the caller importing them.

Example::

    images, labels, info = load_dataset("cifar10", split="test")   # uint8 [10000, 3, 32, 32]
    loader = make_loader("digits", "train", batch_size=64)
    for row in dataset_status():
        print(row.name, row.found, row.path)

Size (over 450 lines): the table of every dataset (location, reader, classes, checks), one entry per dataset;
it grows by one entry per dataset, not by logic.
"""
from __future__ import annotations

import importlib
import inspect
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .cifar import StaticSplit, load_cifar
from .embedded import DIGITS_CLASSES, DIGITS_MEAN, DIGITS_STD, load_digits_static, sklearn_digits_path
from .imagefolder import ImageFolder, class_folders, find_image_classes, native_size
from .loader import Augment, TensorLoader
from .subset import stratified_indices

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetStatus",
    "PLUGIN_MODULES",
    "ENV_VAR",
    "dataset_status",
    "default_data_root",
    "get_dataset",
    "list_datasets",
    "load_dataset",
    "locate",
    "make_loader",
    "register_dataset",
    "resolve_data_root",
]

ENV_VAR = "MULTISPIKE_DATA"
KINDS = ("static", "embedded", "folder", "events")

# Modules that register datasets into this catalog when imported (optional: a missing module or a
# missing optional dependency of it only hides its datasets' readers).
PLUGIN_MODULES: list[str] = ["multispike.data.events"]
_plugin_errors: dict[str, str] = {}
_plugins_loaded = False


# ----------------------------------------------------------------------------------------------------
# Data root
# ----------------------------------------------------------------------------------------------------

def default_data_root() -> Path:
    """``<repo>/../shared/datasets``: where this repository's tests and benchmarks find real data."""
    repo = Path(__file__).resolve().parents[2]
    return (repo.parent / "shared" / "datasets").resolve()


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder to search: ``root`` if given, else ``$MULTISPIKE_DATA``, else :func:`default_data_root`."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return default_data_root()


def data_root_source(root: str | os.PathLike | None = None) -> str:
    """Which rule :func:`resolve_data_root` used: ``"argument"``, ``"MULTISPIKE_DATA"`` or ``"default"``."""
    if root is not None and str(root) != "":
        return "argument"
    return ENV_VAR if os.environ.get(ENV_VAR, "").strip() else "default"


# ----------------------------------------------------------------------------------------------------
# Entries
# ----------------------------------------------------------------------------------------------------

Loader = Callable[..., Any]


@dataclass(frozen=True)
class DatasetInfo:
    """One catalog entry.

    Attributes:
        name: registry key (lower case, e.g. ``"cifar10"``).
        description: one line for ``multispike datasets``.
        kind: ``"static"`` (files under the data root, loaded into memory), ``"embedded"`` (ships in an
            installed package), ``"folder"`` (an image tree), or ``"events"`` (event-camera recordings).
        relpath: expected location relative to the data root (``None`` for embedded data).
        files: names (files or folders) that must exist in the dataset folder for it to count as found;
            ``"val|test"`` means either name.
        loader: ``loader(path, split, **kwargs)`` with ``path`` the located folder; returns
            ``(data, labels)``, ``(data, labels, classes)`` or a :class:`StaticSplit`. ``None``: the
            entry is declared but no reader is installed (see ``provided_by``).
        num_classes: number of classes.
        mean, std: per-channel normalisation on the [0, 1] scale (``None`` for non-image data).
        input_shape: shape of one sample as loaded, e.g. ``(3, 32, 32)``.
        classes: class names when fixed by the format (readers may supply them from the files).
        splits: accepted ``split`` values.
        augment: default train-time augmentation for :func:`make_loader`.
        fix: what to tell a user when it is not found (``None``: the generic advice).
        provided_by: module that registers the reader, for entries declared here without one.
        citation: source / licence note.
    """

    name: str
    description: str
    kind: str
    relpath: str | None
    files: tuple[str, ...]
    loader: Loader | None
    num_classes: int | None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    classes: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "test")
    augment: Augment = field(default_factory=Augment)
    fix: str | None = None
    provided_by: str | None = None
    citation: str = ""

    def __post_init__(self):
        if not self.name or self.name != self.name.lower() or any(c.isspace() for c in self.name):
            raise ValueError(f"dataset name must be a non-empty lower-case word, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"dataset {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind != "embedded" and (not self.relpath or not self.files):
            # Without files to check, any existing folder (the data root itself) would count as found.
            raise ValueError(f"dataset {self.name!r}: relpath and files are required for kind {self.kind!r}")
        if self.loader is not None and not callable(self.loader):
            raise TypeError(f"dataset {self.name!r}: loader must be callable, got {type(self.loader).__name__}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
        if (self.mean is None) != (self.std is None) or (self.mean is not None and len(self.mean) != len(self.std)):
            raise ValueError(f"dataset {self.name!r}: mean and std must both be given with one value per channel")
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "splits", tuple(self.splits))

    def candidates(self, root: Path) -> list[Path]:
        """Folders checked under ``root``: the full relative path, then each shorter tail, then ``root``."""
        if self.relpath is None:
            return []
        parts = Path(self.relpath).parts
        return [root.joinpath(*parts[i:]) for i in range(len(parts))] + [root]


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo | None = None, /, *, overwrite: bool = False, **fields: Any) -> DatasetInfo:
    """Add a dataset to :data:`DATASETS`; pass a :class:`DatasetInfo` or its fields as keywords.

    A name already registered with a reader raises unless ``overwrite=True``; an entry declared
    without a reader (``loader=None``) is replaced silently, which is how plugin modules fill in the
    slots declared here. Returns the stored entry.

    Example::

        register_dataset(name="nmnist", description="N-MNIST event recordings", kind="events",
                         relpath="nmnist", files=("Train", "Test"), loader=read_nmnist, num_classes=10,
                         input_shape=(2, 34, 34))
    """
    if info is None:
        info = DatasetInfo(**fields)
    elif fields:
        raise TypeError("register_dataset: pass either a DatasetInfo or keyword fields, not both")
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"register_dataset: expected a DatasetInfo, got {type(info).__name__}")
    old = DATASETS.get(info.name)
    if old is not None and old.loader is not None and not overwrite:
        raise ValueError(f"dataset {info.name!r} is already registered; pass overwrite=True to replace it")
    DATASETS[info.name] = info
    return info


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for mod in PLUGIN_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            # An optional extra (e.g. aedat) may be absent: keep the catalog usable, remember why.
            _plugin_errors[mod] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a broken plugin must not take `multispike datasets` down with it
            _plugin_errors[mod] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"multispike.data.catalog: importing dataset plugin {mod} failed ({exc!r}); "
                          "its datasets have no reader", RuntimeWarning, stacklevel=2)


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    _load_plugins()
    return sorted(DATASETS)


def get_dataset(name: str) -> DatasetInfo:
    """The catalog entry for ``name`` (case-insensitive)."""
    _load_plugins()
    key = str(name).lower()
    if key not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


# ----------------------------------------------------------------------------------------------------
# Locating
# ----------------------------------------------------------------------------------------------------

def _embedded_path(info: DatasetInfo) -> Path | None:
    if info.name == "digits":
        p = sklearn_digits_path()
        return Path(p) if p else None
    return None


def _search(info: DatasetInfo, root: str | os.PathLike | None) -> tuple[Path | None, list[Path]]:
    if info.kind == "embedded":
        p = _embedded_path(info)
        return p, [p] if p else []
    base = resolve_data_root(root)
    checked = info.candidates(base)
    for cand in checked:
        if cand.is_dir() and all(any((cand / alt).exists() for alt in f.split("|")) for f in info.files):
            return cand, checked
    return None, checked


def _fix(info: DatasetInfo) -> str:
    if info.fix:
        return info.fix
    return (f"set {ENV_VAR} or pass --data-dir / root= pointing at the folder that contains {info.relpath} "
            f"(nothing is downloaded)")


def locate(name: str, root: str | os.PathLike | None = None) -> Path:
    """Path of dataset ``name``'s folder (or file, for embedded data).

    Raises:
        FileNotFoundError: not found; the message lists each path checked, the files expected there
            and the fix.
    """
    info = get_dataset(name)
    found, checked = _search(info, root)
    if found is not None:
        return found
    if info.kind == "embedded":
        raise FileNotFoundError(f"{info.name}: embedded data not found in the installed packages. {_fix(info)}")
    raise FileNotFoundError(
        f"{info.name}: not found under data root {resolve_data_root(root)} ({data_root_source(root)}); looked at "
        f"{', '.join(str(c) for c in checked)}; expected {', '.join(f.replace('|', ' or ') for f in info.files)} "
        f"in {info.relpath}. "
        f"Fix: {_fix(info)}.")


@dataclass
class DatasetStatus:
    """One row of :func:`dataset_status`."""

    name: str
    kind: str
    description: str
    found: bool
    path: str                 # where it was found, or the most specific path checked
    checked: list[str]
    files: list[str]
    num_classes: int | None
    input_shape: list[int] | None
    reader: bool              # a loader is registered
    fix: str | None           # advice when not found or no reader

    def to_dict(self) -> dict:
        return asdict(self)


def dataset_status(root: str | os.PathLike | None = None) -> list[DatasetStatus]:
    """For every registered dataset: found or not, where, and what to do about it (no file is read)."""
    _load_plugins()
    rows = []
    for name in sorted(DATASETS):
        info = DATASETS[name]
        found, checked = _search(info, root)
        notes = []
        if found is None:
            notes.append(_fix(info))
        if info.loader is None:
            why = _plugin_errors.get(info.provided_by or "", "")
            notes.append(f"no reader installed (provided by {info.provided_by or 'a plugin'}"
                         f"{': ' + why if why else ''})")
        fix = "; ".join(notes) or None
        path = found if found is not None else (checked[0] if checked else None)
        rows.append(DatasetStatus(
            name=name, kind=info.kind, description=info.description, found=found is not None,
            path=str(path) if path is not None else "(not installed)", checked=[str(c) for c in checked],
            files=list(info.files), num_classes=info.num_classes,
            input_shape=list(info.input_shape) if info.input_shape else None, reader=info.loader is not None,
            fix=fix))
    return rows


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------

def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train", *,
                 subset: int | None = None, subset_seed: int = 0, progress: bool | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """Load one split of an in-memory dataset.

    Args:
        name: a registered name (see :func:`list_datasets`).
        root: data root (see the module docstring) or the dataset folder itself.
        split: one of the entry's ``splits`` (``"train"`` / ``"test"`` for all built-ins).
        subset: keep a class-stratified, seeded (``subset_seed``) choice of this many samples
            (:func:`~multispike.data.subset.stratified_indices`). Readers that take a ``select`` argument
            (imagefolder) choose from the labels *before* decoding, so a subset of a large tree costs only
            its own memory; others load the split and index it.
        progress: forwarded to readers that take it (imagefolder's decode bar; ``None`` = automatic).
        **kwargs: passed to the reader (``label="coarse"`` for cifar100, ``size=``/``resize=``/``mode=`` for
            imagefolder, ``test_fraction=``/``seed=`` for digits).

    Returns:
        ``(data, labels, info)``: for images uint8 ``[N, C, H, W]`` and int64 ``[N]``; ``info`` is the
        entry, with ``classes`` filled from the files when the reader provides them and ``input_shape``
        from the loaded images.
    """
    info = get_dataset(name)
    if split not in info.splits:
        raise ValueError(f"{info.name}: split must be one of {list(info.splits)}, got {split!r}")
    if info.loader is None:
        why = _plugin_errors.get(info.provided_by or "", "")
        raise FileNotFoundError(
            f"{info.name}: no reader is installed for this dataset; it is provided by "
            f"{info.provided_by or 'a plugin module'}{' (' + why + ')' if why else ''}")
    path = locate(info.name, root)
    params = inspect.signature(info.loader).parameters
    select = None
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
            raise ValueError(f"{info.name}: subset must be an integer >= 1, got {subset!r}")
        select = lambda labels: stratified_indices(labels, subset, subset_seed)  # noqa: E731
        if "select" in params:
            kwargs["select"] = select
            select = None
    if progress is not None and "progress" in params:
        kwargs["progress"] = progress
    out = info.loader(path, split, **kwargs)
    if isinstance(out, StaticSplit):
        data, labels, classes = out.images, out.labels, out.classes
    elif isinstance(out, tuple) and len(out) in (2, 3):
        data, labels = out[0], out[1]
        classes = out[2] if len(out) == 3 else None
    else:
        raise TypeError(f"{info.name}: reader returned {type(out).__name__}; expected (data, labels[, classes]) "
                        "or a StaticSplit")
    if select is not None:
        idx = select(labels)
        data, labels = data[idx], labels[idx]
    if classes:
        info = replace(info, classes=tuple(classes), num_classes=len(classes))
    if isinstance(data, torch.Tensor) and data.dim() == 4:
        info = replace(info, input_shape=tuple(int(s) for s in data.shape[1:]))
    return data, labels, info


def make_loader(name: str, split: str, batch_size: int, root: str | os.PathLike | None = None, *,
                augment: Augment | None | str = "default", shuffle: bool | None = None,
                dataset_kwargs: Mapping[str, Any] | None = None, **loader_kwargs: Any) -> TensorLoader:
    """A :class:`TensorLoader` over ``load_dataset(name, root, split)`` with the entry's statistics.

    Args:
        augment: ``"default"`` = the entry's train augmentation for ``split="train"`` and none otherwise;
            or an :class:`Augment` / ``None``.
        shuffle: default ``True`` for train, ``False`` otherwise.
        dataset_kwargs: forwarded to the reader.
        **loader_kwargs: forwarded to :class:`TensorLoader` (``seed``, ``drop_last``, ``rank``, ...).
    """
    images, labels, info = load_dataset(name, root, split, **dict(dataset_kwargs or {}))
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"{info.name}: make_loader needs uint8 [N, C, H, W] images; this dataset gives "
                        f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    train = split == "train"
    if isinstance(augment, str):
        if augment != "default":
            raise ValueError(f"augment must be 'default', an Augment or None, got {augment!r}")
        augment = info.augment if train else None
    loader_kwargs.setdefault("mean", info.mean)
    loader_kwargs.setdefault("std", info.std)
    return TensorLoader(images, labels, batch_size, shuffle=train if shuffle is None else shuffle, augment=augment,
                        **loader_kwargs)


# ----------------------------------------------------------------------------------------------------
# Built-in entries
# ----------------------------------------------------------------------------------------------------

def _cifar_loader(variant: str) -> Loader:
    def load(path: Path, split: str, label: str = "fine") -> StaticSplit:
        return load_cifar(path, variant, split, label)
    load.__name__ = f"load_{variant}"
    return load


def _digits_loader(path: Path, split: str, test_fraction: float = 0.2, seed: int = 0) -> StaticSplit:
    return load_digits_static(split, test_fraction, seed)


def imagefolder_split_dir(path: Path, split: str) -> Path:
    """The folder of ``split`` in an imagefolder dataset: ``train/``; ``val/`` or else ``test/`` for the test split.

    Raises:
        FileNotFoundError: neither exists (names what was looked for).
    """
    names = ("train",) if split == "train" else ("val", "test")
    tree = next((path / n for n in names if (path / n).is_dir()), None)
    if tree is None:
        raise FileNotFoundError(f"imagefolder: {path} has no {' or '.join(names)}/ folder for split {split!r}; "
                                f"expected {path}/train/<class>/<image> and {path}/val/<class>/<image> (or test/). "
                                "For a single tree use multispike.data.ImageFolder(path) directly.")
    return tree


def _imagefolder_loader(path: Path, split: str, size: int | None = None, resize: int | None = None,
                        mode: str = "RGB", select: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    tree = imagefolder_split_dir(path, split)
    # One class index for every split: the training split's folders. Numbering val/ by its own folders would
    # shift every label after a class that val/ lacks.
    classes = None
    train_dir = path / "train"
    if split != "train":
        classes = class_folders(train_dir) or None
        if classes is None:
            warnings.warn(f"imagefolder: {path} has no train/ class folders, so {tree.name}/ numbers its classes by "
                          f"its own folders; they must be exactly the classes the model was trained on",
                          stacklevel=3)
    if size is None and classes is not None:
        # the native size comes from train/, so every split decodes at the size the model was trained at
        _, train_samples = find_image_classes(train_dir)
        size = native_size(train_samples[0][0])
    ds = ImageFolder(tree, size=size, resize=resize, mode=mode, classes=classes)
    if ds.missing_classes:
        warnings.warn(f"imagefolder: {tree} has no folder for class(es) {', '.join(ds.missing_classes[:10])}"
                      f"{' ...' if len(ds.missing_classes) > 10 else ''} of train/; they are not evaluated (labels "
                      f"keep the training split's numbering)", stacklevel=3)
    # the subset is chosen from the labels of the file scan, before anything is decoded
    images, labels = ds.load_all(None if select is None else select(ds.targets), progress=progress)
    return images, labels, ds.classes


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

register_dataset(
    name="cifar10", kind="static", relpath="cifar10/cifar-10-batches-py",
    description="CIFAR-10, 60,000 32x32 colour images in 10 classes (torchvision python-pickle layout)",
    files=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
           "batches.meta"),
    loader=_cifar_loader("cifar10"), num_classes=10, classes=CIFAR10_CLASSES,
    # The widely used CIFAR-10 training-set statistics (per-pixel std, not the 0.2023/0.1994/0.2010
    # per-image values some repositories copy); see the tests for the values on the local copy.
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), input_shape=(3, 32, 32),
    augment=Augment(crop_padding=4, hflip=True),
    citation="Krizhevsky, 'Learning Multiple Layers of Features from Tiny Images', 2009")

register_dataset(
    name="cifar100", kind="static", relpath="cifar100/cifar-100-python",
    description="CIFAR-100, 60,000 32x32 colour images in 100 fine / 20 coarse classes (python-pickle layout)",
    files=("train", "test", "meta"), loader=_cifar_loader("cifar100"), num_classes=100,
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), input_shape=(3, 32, 32),
    augment=Augment(crop_padding=4, hflip=True),
    citation="Krizhevsky, 'Learning Multiple Layers of Features from Tiny Images', 2009")

register_dataset(
    name="digits", kind="embedded", relpath=None, files=(),
    description="scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; ships with scikit-learn)",
    loader=_digits_loader, num_classes=10, classes=DIGITS_CLASSES, mean=DIGITS_MEAN, std=DIGITS_STD,
    input_shape=(1, 8, 8), augment=Augment(),  # flips change a digit's identity; 8x8 has no margin to crop
    fix="install scikit-learn (pip install scikit-learn); the data ships inside its wheel",
    citation="UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak, 1998) via scikit-learn")

register_dataset(
    name="imagefolder", kind="folder", relpath="imagenet", files=("train", "val|test"),
    description="image tree <dir>/train/<class>/<image> + val/ or test/ (Pillow; native size up to 224, "
                "options size=, resize=, mode=L)",
    loader=_imagefolder_loader, num_classes=None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    input_shape=None, augment=Augment(crop_padding=0, hflip=True),   # native size: known once read
    fix="needs an explicit path: pass --data-dir / root= pointing at a tree with train/ and val/ (or test/) class "
        "folders (or place it at <data root>/imagenet)")

# Slots for the event-camera datasets; multispike.data.events replaces them with its readers.
register_dataset(
    name="nmnist", kind="events", relpath="nmnist", files=("Train", "Test"), loader=None, num_classes=10,
    input_shape=(2, 34, 34), description="N-MNIST event recordings (ATIS, 34x34, 2 polarities)",
    provided_by="multispike.data.events")
register_dataset(
    name="cifar10dvs", kind="events", relpath="cifar10dvs", files=CIFAR10_CLASSES, loader=None, num_classes=10,
    input_shape=(2, 128, 128), description="CIFAR10-DVS event recordings (DVS128, AEDAT 2, TEBN split)",
    provided_by="multispike.data.events")
