"""Datasets and tensor-level batching.

* :mod:`~multispike.data.cifar`: CIFAR-10/100 from the python-pickle layout, read with a restricted
  unpickler and no md5 check.
* :mod:`~multispike.data.imagefolder`: ImageNet-style ``<class>/<image>`` trees (Pillow, lazy or preloaded).
* :mod:`~multispike.data.embedded`: ``digits``, scikit-learn's 8x8 digits (no download; used by the demo).
* :mod:`~multispike.data.loader`: :class:`TensorLoader`, seeded shuffling, per-batch augmentation, DDP sharding.
* :mod:`~multispike.data.catalog`: every known dataset, where it is expected, ``load_dataset``, ``dataset_status``.
* :mod:`~multispike.data.provenance`: the data a checkpoint was trained on (``data_spec``), the one-line
  description every workflow prints, and the class / input-size check before any work.
* :mod:`~multispike.data.subset`: the class-stratified, seeded subsets of ``--subset``, ``--eval-subset``, ``--limit``.

Event-camera data lives in :mod:`multispike.data.events` (imported on demand; it registers into the catalog).
"""
from .catalog import (DATASETS, ENV_VAR, DatasetInfo, DatasetStatus, data_root_source, dataset_status,
                      default_data_root, get_dataset, list_datasets, load_dataset, locate, make_loader,
                      register_dataset, resolve_data_root)
from .cifar import (CorruptDatasetError, StaticSplit, UnsafePickleError, find_cifar_dir, load_cifar, load_cifar10,
                    load_cifar100, restricted_load)
from .embedded import (DIGITS_CLASSES, DIGITS_MEAN, DIGITS_STD, digits_split_indices, load_digits_all,
                       load_digits_split, load_digits_static)
from . import provenance, subset
from .imagefolder import ImageFolder, decode_image, find_image_classes
from .provenance import DataMismatchError, DataSpec, data_spec
from .subset import stratified_indices
from .loader import (PAD_MODES, Augment, TensorLoader, crop_at, cutout_at, normalize, random_crop, random_cutout,
                     random_hflip)

__all__ = [
    "DATASETS", "ENV_VAR", "DatasetInfo", "DatasetStatus", "data_root_source", "dataset_status", "default_data_root", "get_dataset",
    "list_datasets", "load_dataset", "locate", "make_loader", "register_dataset", "resolve_data_root",
    "CorruptDatasetError", "StaticSplit", "UnsafePickleError", "find_cifar_dir", "load_cifar", "load_cifar10",
    "load_cifar100", "restricted_load",
    "DIGITS_CLASSES", "DIGITS_MEAN", "DIGITS_STD", "digits_split_indices", "load_digits_all", "load_digits_split",
    "load_digits_static",
    "ImageFolder", "decode_image", "find_image_classes",
    "DataMismatchError", "DataSpec", "data_spec", "stratified_indices",
    "Augment", "PAD_MODES", "TensorLoader", "crop_at", "cutout_at", "normalize", "random_crop", "random_cutout",
    "random_hflip",
]
