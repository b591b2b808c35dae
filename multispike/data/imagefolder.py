"""ImageNet-style folder trees: ``<root>/<class>/<image>``, decoded with Pillow to uint8 CHW tensors.

Each sample is decoded on access (so a large tree costs no memory up front), resized so its shorter
side is ``resize`` pixels and centre-cropped to ``size x size``. Random augmentation is *not* done here:
it runs per batch on tensors (:mod:`multispike.data.loader`), after stacking.

Geometry defaults (``size=None``, ``resize=None``):

* ``size=None`` - the *native* size: the shorter side of the tree's first image when it is at most 224
  pixels (a tree of 28x28 or 32x32 images stays 28 or 32), else 224;
* ``resize=None`` - for an image whose shorter side is at least ``round(size * 256 / 224)``, that value
  (the standard ImageNet evaluation geometry: resize to 256, crop 224); for a smaller image ``size``
  (the shorter side scaled to exactly ``size``, then the centred square), so a small image is never
  enlarged and then cropped. Pass ``resize=`` explicitly for another geometry; ``resize=size`` always
  takes the largest centred square.

Small trees can be decoded once into a single uint8 tensor (``preload=True`` or :meth:`ImageFolder.load_all`,
which takes ``indices`` to decode a subset only, shows progress and checks the memory it needs first)
and fed to :class:`~multispike.data.loader.TensorLoader`; large ones go through a
``torch.utils.data.DataLoader`` (the class is a map-style ``Dataset``).

Example::

    ds = ImageFolder("imagenet/val", size=224)
    x, y = ds[0]                       # uint8 [3, 224, 224], int
    images, labels = ImageFolder("tiny/train").load_all()            # native size, e.g. [N, 3, 32, 32]
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .._validate import check_positive_int

__all__ = ["IMG_EXTENSIONS", "ImageFolder", "class_folders", "decode_image", "find_image_classes", "native_size",
           "available_memory", "check_memory"]

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MODES = {"RGB": 3, "L": 1}
#: Largest side the native-size default keeps; larger images default to 224 (ImageNet geometry).
NATIVE_MAX = 224
#: Share of the available memory one decoded split may take before loading is refused.
MEMORY_FRACTION = 0.8


def _pil():
    # Pillow arrives with matplotlib but is only needed here; import it on first decode.
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow ships with matplotlib, a core dependency
        raise ImportError("ImageFolder needs Pillow to decode images: pip install pillow") from exc
    return Image


def decode_image(path: str | os.PathLike, size: int, resize: int | None = None, mode: str = "RGB") -> torch.Tensor:
    """Decode one image file to a uint8 ``[C, size, size]`` tensor.

    The shorter side is resized to ``resize`` (bilinear with antialiasing, Pillow's default filter for
    downscaling quality) and the centre ``size x size`` window is cut out. ``resize=None`` means
    ``round(size * 256 / 224)`` when the image's shorter side is at least that (ImageNet geometry) and
    ``size`` otherwise (a small image is not enlarged to be cropped again); ``resize=size`` crops the largest
    centred square.

    Raises:
        ValueError: the file cannot be decoded (names the file), or ``resize < size``.
    """
    size = check_positive_int(size, "size")
    auto = resize is None
    resize = int(round(size * 256 / 224)) if resize is None else check_positive_int(resize, "resize")
    if resize < size:
        raise ValueError(f"resize ({resize}) must be >= size ({size}): the centre crop is taken from the resized "
                         "image. Use resize=size to crop the largest centred square.")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    Image = _pil()
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            w, h = im.size
            if auto and min(w, h) < resize:
                resize = size   # small image: scale the shorter side to size, no enlarge-then-crop
            scale = resize / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as exc:  # derives from Exception only
        raise ValueError(f"refusing to decode image {path}: {exc} Remove the file, or raise "
                         f"PIL.Image.MAX_IMAGE_PIXELS if the image is genuine.") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow raises these for unreadable/truncated files
        raise ValueError(f"cannot decode image {path}: {exc}. Remove or replace the file.") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def native_size(path: str | os.PathLike) -> int:
    """The default ``size`` for a tree whose first image is ``path``: its shorter side if <= 224, else 224."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image {path} to find the native size: {exc}. Remove or replace the file, "
                         f"or pass size=N.") from exc
    return int(min(w, h, NATIVE_MAX))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``; ``None`` when unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def check_memory(nbytes: int, what: str, fix: str) -> None:
    """Raise ``MemoryError`` naming ``what``, the estimate and ``fix`` when ``nbytes`` exceeds 80 % of the
    available memory (checked before allocating, so the process is not killed half-way)."""
    avail = available_memory()
    if avail is not None and nbytes > MEMORY_FRACTION * avail:
        raise MemoryError(f"{what} needs {_gib(nbytes)} as uint8, more than {int(100 * MEMORY_FRACTION)}% of the "
                          f"{_gib(avail)} of memory available now. {fix}")


def class_folders(root: str | os.PathLike) -> list[str]:
    """The class sub-folder names of ``root``, sorted (hidden folders skipped); ``[]`` if ``root`` is no folder."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def find_image_classes(root: str | os.PathLike, extensions: Sequence[str] = IMG_EXTENSIONS,
                       classes: Sequence[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Scan ``root/<class>/**/<file>``; classes sorted by name, files sorted within each class.

    Args:
        classes: a fixed class index (e.g. the training split's classes, so every split numbers classes
            alike). A folder of ``root`` not in it is an error (its label would be undefined); a listed
            class without a folder simply has no samples here. ``None``: the sorted folder names.

    Returns:
        ``(classes, samples)`` with ``samples = [(path, class_index), ...]``.

    Raises:
        FileNotFoundError: ``root`` is missing, not a folder, has no class sub-folders, or holds no image
            with one of ``extensions``.
        ValueError: ``classes`` is given and ``root`` has class folders outside it.
    """
    root = Path(root)
    exts = tuple(e.lower() for e in extensions)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected <root>/<class>/<image> with "
                                f"extensions {', '.join(exts)}). Pass the path of an existing tree.")
    folders = class_folders(root)
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"image folder {root}: the class list has duplicates")
        extra = sorted(set(folders) - set(classes))
        if extra:
            raise ValueError(f"image folder {root} has class folder(s) {', '.join(extra[:10])}"
                             f"{' ...' if len(extra) > 10 else ''} that are not among the {len(classes)} classes of "
                             f"the class index (the training split's); their labels would be undefined. Add them to "
                             f"the training split or remove them here.")
    else:
        classes = folders
    if not folders:
        raise FileNotFoundError(f"image folder {root} has no class sub-folders; expected <root>/<class>/<image> "
                                f"(one folder per class, e.g. {root}/n01440764/x.JPEG).")
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    present = set(folders)
    for idx, name in enumerate(classes):
        if name not in present:
            continue
        files = sorted(p for p in (root / name).rglob("*")
                       if p.suffix.lower() in exts and p.is_file() and not p.name.startswith("."))
        if not files:
            empty.append(name)
        samples.extend((p, idx) for p in files)
    if not samples:
        raise FileNotFoundError(f"image folder {root}: its {len(classes)} class folder(s) hold no images with "
                                f"extensions {', '.join(exts)}.")
    if empty:
        raise FileNotFoundError(f"image folder {root}: class folder(s) {', '.join(empty[:5])}"
                                f"{' ...' if len(empty) > 5 else ''} hold no images with extensions "
                                f"{', '.join(exts)}; an empty class can never be predicted and usually means an "
                                f"incomplete copy - restore its images or remove the folder.")
    return classes, samples


class ImageFolder(Dataset):
    """Map-style dataset over ``<root>/<class>/<image>`` returning ``(uint8 [C, size, size], label)``.

    Args:
        root: the tree's root (one sub-folder per class; class index = position in sorted names, or in
            ``classes``).
        size: output height and width; ``None`` = the native size (the first image's shorter side when at
            most 224, else 224; see the module docstring).
        resize: shorter side before the centre crop; ``None`` = ``round(size * 256 / 224)`` for images at
            least that large, else ``size`` (no enlarge-then-crop of small images).
        mode: ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
        extensions: accepted file suffixes (case-insensitive).
        preload: decode every image now into :attr:`images` (``[N, C, size, size]`` uint8); then
            ``__getitem__`` indexes memory. Meant for trees that fit in RAM.
        classes: fixed class index shared with other splits (see :func:`find_image_classes`); classes of the
            index with no folder here are listed in :attr:`missing_classes`.
    """

    def __init__(self, root: str | os.PathLike, size: int | None = None, resize: int | None = None,
                 mode: str = "RGB", extensions: Sequence[str] = IMG_EXTENSIONS, preload: bool = False,
                 classes: Sequence[str] | None = None):
        self.root = Path(root)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
        self.mode = mode
        self.classes, self.samples = find_image_classes(self.root, extensions, classes)
        self.size = native_size(self.samples[0][0]) if size is None else check_positive_int(size, "size")
        # None = per-image rule (decode_image); kept as None so small images are never enlarged-then-cropped
        self.resize = None if resize is None else check_positive_int(resize, "resize")
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= size ({self.size})")
        folders = set(class_folders(self.root))
        self.missing_classes = [c for c in self.classes if c not in folders]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = torch.tensor([t for _, t in self.samples], dtype=torch.int64)
        self.images: torch.Tensor | None = None
        if preload:
            self.images = self._decode_all()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            return self.images[index], int(self.targets[index])
        path, target = self.samples[index]
        return decode_image(path, self.size, self.resize, self.mode), target

    def _decode_all(self, indices: Sequence[int] | None = None, progress: bool | None = None) -> torch.Tensor:
        idx = range(len(self.samples)) if indices is None else [int(i) for i in indices]
        shape = (len(idx), _MODES[self.mode], self.size, self.size)
        check_memory(int(np.prod(shape)), f"decoding {len(idx)} images of {self.root} at {shape[1]}x{self.size}x"
                     f"{self.size}", "Train or evaluate on fewer images (--subset N / --eval-subset N / --limit N, "
                     "decoded after the choice) or a smaller size (--dataset-kwargs size=N).")
        out = torch.empty(shape, dtype=torch.uint8)
        from tqdm import tqdm   # a core dependency (progress bars of eval)
        # progress=None: show a bar for trees large enough to take a while (a few hundred files decode in < 1 s)
        bar = tqdm(idx, desc=f"decoding {self.root.name}/", unit="img", leave=False, mininterval=1.0,
                   disable=(len(idx) < 2000) if progress is None else not progress)
        for k, i in enumerate(bar):
            out[k] = decode_image(self.samples[i][0], self.size, self.resize, self.mode)
        return out

    def load_all(self, indices: Sequence[int] | torch.Tensor | None = None, progress: bool | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and return ``(images uint8 [N, C, size, size], labels int64 [N])``.

        Args:
            indices: decode only these samples (e.g. a stratified subset chosen from :attr:`targets`, so a
                subset of a large tree never decodes the rest); ``None`` = all (kept in :attr:`images`).
            progress: a progress bar on stderr; ``None`` = only for 2000 images or more.

        Raises:
            MemoryError: the decoded images would not fit in the available memory (checked before
                allocating; the message gives the estimate).
        """
        if indices is not None:
            idx = torch.as_tensor(indices, dtype=torch.int64).flatten()
            if self.images is not None:
                return self.images[idx], self.targets[idx]
            return self._decode_all(idx.tolist(), progress), self.targets[idx]
        if self.images is None:
            self.images = self._decode_all(None, progress)
        return self.images, self.targets

    def __repr__(self) -> str:
        return (f"ImageFolder(root={str(self.root)!r}, n={len(self)}, classes={len(self.classes)}, size={self.size}, "
                f"resize={self.resize}, mode={self.mode!r}, preloaded={self.images is not None})")
