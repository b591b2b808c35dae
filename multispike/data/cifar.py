"""CIFAR-10 / CIFAR-100 from torchvision's python-pickle layout, read safely and without md5 checks.

Layouts read (the files torchvision downloads, or copies of them)::

    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta

Each batch file is a pickled dict with ``data`` (uint8 ``[n, 3072]``: 1,024 red values, then green, then
blue, each 32x32 row-major) and ``labels`` (CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100).

Why not torchvision: it md5-checks every file against the official sums, so re-encoded copies (such as
the JPEG-decoded set in ``shared/datasets``) are rejected, and it unpickles with ``pickle.load``, which
runs whatever code a crafted file names. :func:`restricted_load` admits only the few globals that numpy
array reconstruction needs; anything else (``os.system``, ``builtins.eval``, ...) raises
:class:`UnsafePickleError` before it can be called.

Example::

    split = load_cifar10(split="train")          # root: MULTISPIKE_DATA or ../shared/datasets
    split.images.shape, split.images.dtype        # (torch.Size([50000, 3, 32, 32]), torch.uint8)
    split.classes[:3]                             # ('airplane', 'automobile', 'bird')
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .._errors import MissingDataError

__all__ = [
    "CIFAR_LAYOUTS",
    "CIFARLayout",
    "CorruptDatasetError",
    "StaticSplit",
    "UnsafePickleError",
    "find_cifar_dir",
    "load_cifar",
    "load_cifar10",
    "load_cifar100",
    "restricted_load",
]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the allow-list (it could run code); nothing was called."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but is truncated or does not hold what the format says."""


# ----------------------------------------------------------------------------------------------------
# Restricted unpickler
# ----------------------------------------------------------------------------------------------------

def _numpy_multiarray():
    # numpy >= 2 moved the module to numpy._core; importing numpy.core there emits a DeprecationWarning,
    # so resolve both spellings to whichever module this numpy actually has.
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _safe_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` as the pickle calls it, refusing object dtypes.

    An object array would unpickle its elements as arbitrary (still allow-listed) objects; no image
    format needs one, so refusing it keeps the accepted surface to plain numeric buffers.
    """
    dt = np.dtype(obj, align=align, copy=copy)
    if dt.hasobject:
        raise UnsafePickleError(f"pickle requests numpy dtype {dt!r}, which holds Python objects; "
                                "only numeric dtypes are allowed in dataset files")
    return dt


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to latin-1, the only use Python 3 protocol-2 pickles make of it.

    (Protocol 2 has no bytes opcode, so Python 3 writes ``bytes`` as ``_codecs.encode(text, 'latin1')``.)
    """
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(obj, str):
        raise UnsafePickleError(f"pickle calls _codecs.encode with encoding {encoding!r}; only 'latin1' is allowed")
    return codecs.encode(obj, "latin1", errors)


def _ndarray_token(*args: Any, **kwargs: Any) -> None:
    """Stands for ``numpy.ndarray`` inside a pickle. Calling it is refused: ``ndarray(shape, dtype)`` allocates an
    *uninitialised* array of any size, so a few bytes could claim 350,000 images of garbage memory. Real numpy
    pickles only pass the type to ``_reconstruct`` and fill the array with ``__setstate__``, which checks that
    the stored bytes match the shape."""
    raise UnsafePickleError("pickle calls numpy.ndarray(...) directly (an uninitialised array of a declared size); "
                            "numpy never writes that - the file is corrupt or crafted")


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for plain ndarrays only (no subclasses)."""
    if subtype is not _ndarray_token and subtype is not np.ndarray:
        raise UnsafePickleError(f"pickle reconstructs an array of type {subtype!r}; only numpy.ndarray is allowed")
    return _numpy_multiarray()._reconstruct(np.ndarray, shape, dtype)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    ma = _numpy_multiarray()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _ndarray_token,
        ("numpy", "dtype"): _safe_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _safe_reconstruct
        allowed[(mod, "scalar")] = ma.scalar
    # Protocol 5 (Python 3.14's default) stores arrays as _frombuffer(buffer, dtype, shape, order).
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = _frombuffer
    return allowed


def _frombuffer(buf: Any, dtype: Any, shape: tuple, order: str) -> np.ndarray:
    """numpy's protocol-5 array constructor, re-implemented so no numpy internals are exposed."""
    return np.frombuffer(buf, dtype=_safe_dtype(dtype)).reshape(shape, order=order)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose only reachable globals are numpy array/scalar reconstruction (protocols 0-5).

    Dicts, lists, tuples, str, bytes, ints and floats are built by pickle opcodes and need no globals.
    Names are matched exactly as ``(module, name)``; dotted names (``ndarray.__reduce__``) and anything
    else are refused, so ``REDUCE`` can only ever call one of the allowed callables.
    """

    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file, encoding="latin1")  # latin1: Python-2 str buffers decode byte-for-byte
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in self._allowed))
            raise UnsafePickleError(
                f"{self._source}: refusing to load global '{module}.{name}' - dataset pickles may only "
                f"reference numpy array reconstruction ({allowed}). The file is not a CIFAR batch or has been "
                f"tampered with; replace it with a clean copy.") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed in dataset pickles")


def restricted_load(file: str | os.PathLike | BinaryIO | bytes) -> Any:
    """Unpickle ``file`` admitting only plain containers and numpy arrays.

    Args:
        file: a path, an open binary file or the pickle bytes.

    Raises:
        UnsafePickleError: the pickle references a global outside the allow-list (nothing is executed).
        pickle.UnpicklingError / EOFError: the data is malformed or truncated.
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        return _RestrictedUnpickler(io.BytesIO(bytes(file)), "<bytes>").load()
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as fh:
            return _RestrictedUnpickler(fh, str(file)).load()
    return _RestrictedUnpickler(file, getattr(file, "name", "<stream>")).load()


# ----------------------------------------------------------------------------------------------------
# Layouts and location
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CIFARLayout:
    """Where a CIFAR variant lives and which files it must have."""

    name: str                      # "cifar10" | "cifar100"
    folder: str                    # torchvision's folder name
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_keys: dict[str, str]     # label kind -> dict key in the batch
    names_keys: dict[str, str]     # label kind -> dict key in the meta file
    num_classes: dict[str, int]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR_LAYOUTS: dict[str, CIFARLayout] = {
    "cifar10": CIFARLayout(
        name="cifar10", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        meta_file="batches.meta", label_keys={"fine": "labels"}, names_keys={"fine": "label_names"},
        num_classes={"fine": 10}),
    "cifar100": CIFARLayout(
        name="cifar100", folder="cifar-100-python", train_files=("train",), test_files=("test",),
        meta_file="meta", label_keys={"fine": "fine_labels", "coarse": "coarse_labels"},
        names_keys={"fine": "fine_label_names", "coarse": "coarse_label_names"},
        num_classes={"fine": 100, "coarse": 20}),
}


def _layout(variant: str) -> CIFARLayout:
    try:
        return CIFAR_LAYOUTS[variant]
    except KeyError:
        raise ValueError(f"unknown CIFAR variant {variant!r}; expected one of {sorted(CIFAR_LAYOUTS)}") from None


def cifar_candidates(root: Path, variant: str) -> list[Path]:
    """Folders that may hold ``variant``'s files, given ``root``, in the order they are tried.

    ``root`` may be the datasets folder (``<root>/cifar10/cifar-10-batches-py``), the variant folder
    (``<root>/cifar-10-batches-py``) or the batch folder itself.
    """
    lay = _layout(variant)
    return [root, root / lay.folder, root / lay.name / lay.folder]


def find_cifar_dir(root: str | os.PathLike | None = None, variant: str = "cifar10") -> Path:
    """Return the folder holding ``variant``'s batch files.

    Args:
        root: the datasets folder, ``cifar10/``, or ``cifar-10-batches-py/`` itself. ``None`` means
            ``$MULTISPIKE_DATA``, else ``<repo>/../shared/datasets``.

    Raises:
        FileNotFoundError: no candidate folder holds all expected files; the message lists the paths
            looked at, the files expected and how to point multispike at the data.
    """
    from .catalog import resolve_data_root  # late import: catalog imports this module

    lay = _layout(variant)
    base = resolve_data_root(root)
    candidates = cifar_candidates(base, variant)
    for cand in candidates:
        if all((cand / f).is_file() for f in lay.files):
            return cand
    # Report the most specific folder that exists, with the files it lacks.
    partial = next((c for c in reversed(candidates) if c.is_dir() and any((c / f).exists() for f in lay.files)), None)
    if partial is not None:
        missing = [f for f in lay.files if not (partial / f).is_file()]
        raise FileNotFoundError(
            f"{lay.name}: folder {partial} is incomplete: missing {', '.join(missing)} "
            f"(expected {', '.join(lay.files)}). Restore the missing files.")
    looked = ", ".join(str(c) for c in candidates)
    raise MissingDataError(
        f"{lay.name}: no '{lay.folder}' folder found; looked at {looked}; expected files "
        f"{', '.join(lay.files)}. Set MULTISPIKE_DATA or pass root=/{{data_dir}} pointing at the folder that "
        f"contains {lay.name}/{lay.folder} (nothing is downloaded).", "data_dir")


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------

@dataclass
class StaticSplit:
    """One split of an in-memory image dataset.

    Attributes:
        images: uint8 ``[N, C, H, W]``.
        labels: int64 ``[N]``.
        classes: class names, index = label.
        source: the folder or file read.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.labels.numel())

    def class_counts(self) -> torch.Tensor:
        """Images per class, int64 ``[len(classes)]``."""
        return torch.bincount(self.labels, minlength=len(self.classes))


def _str_keys(d: dict) -> dict:
    # Files re-pickled after a Python-2 load with encoding="bytes" carry bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_dict(path: Path, expected: str) -> dict:
    size = path.stat().st_size
    try:
        obj = restricted_load(path)
    except UnsafePickleError as exc:
        if str(path) in str(exc):
            raise
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError, OverflowError) as exc:
        raise CorruptDatasetError(
            f"{path}: cannot be read as a CIFAR pickle ({type(exc).__name__}: {exc}); the file is {size:,} bytes, "
            f"probably truncated or corrupt. Expected {expected}. Replace it with a complete copy.") from exc
    if not isinstance(obj, dict):
        raise CorruptDatasetError(f"{path}: expected a pickled dict ({expected}), got {type(obj).__name__}")
    return _str_keys(obj)


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    expected = f"a dict with 'data' (uint8 [n, 3072]) and '{label_key}' (n ints)"
    d = _read_dict(path, expected)
    missing = [k for k in ("data", label_key) if k not in d]
    if missing:
        raise CorruptDatasetError(f"{path}: missing key(s) {missing}; has {sorted(d)}; expected {expected}")
    data, labels = d["data"], np.asarray(d[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptDatasetError(f"{path}: 'data' is {desc}; expected uint8 [n, 3072]")
    size = path.stat().st_size
    if data.nbytes > size:   # pickled pixels are stored raw: a file cannot hold more image bytes than its size
        raise CorruptDatasetError(f"{path}: 'data' declares {data.shape[0]:,} images ({data.nbytes:,} bytes) but the "
                                  f"file has only {size:,} bytes; it is corrupt or crafted. Replace it with a clean "
                                  f"copy.")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise CorruptDatasetError(f"{path}: '{label_key}' has shape {labels.shape} / dtype {labels.dtype}; "
                                  f"expected {data.shape[0]} integers (one per image)")
    return data, labels.astype(np.int64, copy=False)


def _read_names(path: Path, key: str) -> tuple[str, ...]:
    d = _read_dict(path, f"a dict with '{key}' (list of class names)")
    if key not in d:
        raise CorruptDatasetError(f"{path}: missing key '{key}'; has {sorted(d)}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in d[key])


def load_cifar(root: str | os.PathLike | None = None, variant: str = "cifar10", split: str = "train",
               label: str = "fine") -> StaticSplit:
    """Read one split of CIFAR-10/100 into memory.

    Args:
        root: see :func:`find_cifar_dir`.
        variant: ``"cifar10"`` or ``"cifar100"``.
        split: ``"train"`` or ``"test"``.
        label: ``"fine"`` (default; the only kind CIFAR-10 has) or ``"coarse"`` (CIFAR-100's 20 superclasses).

    Returns:
        :class:`StaticSplit` with uint8 ``[N, 3, 32, 32]`` images, int64 labels and the class names
        from the meta file.

    Raises:
        FileNotFoundError: data not found (names the paths looked at and the expected files).
        CorruptDatasetError: a file is truncated or malformed (names the file).
        UnsafePickleError: a file references code outside the allow-list.
    """
    lay = _layout(variant)
    if split not in ("train", "test"):
        raise ValueError(f"{lay.name}: split must be 'train' or 'test', got {split!r}")
    if label not in lay.label_keys:
        raise ValueError(f"{lay.name}: label must be one of {sorted(lay.label_keys)}, got {label!r}")
    folder = find_cifar_dir(root, variant)
    files = lay.train_files if split == "train" else lay.test_files
    parts = [_read_batch(folder / f, lay.label_keys[label]) for f in files]
    n = sum(p[0].shape[0] for p in parts)
    # One preallocated buffer: a single copy out of the (read-only) unpickled arrays.
    data = np.empty((n, 3072), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    i = 0
    for d, lab in parts:
        data[i:i + d.shape[0]] = d
        labels[i:i + d.shape[0]] = lab
        i += d.shape[0]
    del parts
    classes = _read_names(folder / lay.meta_file, lay.names_keys[label])
    k = lay.num_classes[label]
    if len(classes) != k:
        raise CorruptDatasetError(f"{folder / lay.meta_file}: {len(classes)} class names, expected {k}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise CorruptDatasetError(f"{folder}: labels span {labels.min()}..{labels.max()}, expected 0..{k - 1}")
    images = torch.from_numpy(data).view(n, 3, 32, 32)
    return StaticSplit(images=images, labels=torch.from_numpy(labels), classes=classes, source=str(folder))


def load_cifar10(root: str | os.PathLike | None = None, split: str = "train") -> StaticSplit:
    """CIFAR-10 split (50,000 train / 10,000 test, 10 classes). See :func:`load_cifar`."""
    return load_cifar(root, "cifar10", split)


def load_cifar100(root: str | os.PathLike | None = None, split: str = "train", label: str = "fine") -> StaticSplit:
    """CIFAR-100 split (50,000 train / 10,000 test, 100 fine or 20 coarse classes). See :func:`load_cifar`."""
    return load_cifar(root, "cifar100", split, label)
