"""Event-camera data: structured event arrays, file readers, frame integration, multi-level encoding,
a saccade simulator and datasets.

* :mod:`.events`: :data:`EVENT_DTYPE` ``(t int64 µs, x int16, y int16, p int8)``, tonic-style sensor sizes
  ``(W, H, P)``, validation.
* :mod:`.readers`: N-MNIST ``.bin``, CIFAR10-DVS AEDAT 2 ``.aedat`` (SpikingJelly's decoding), AEDAT 4 (optional
  ``aedat`` package), Prophesee ``.dat``.
* :mod:`.frames`: SpikingJelly ``integrate_frames(frames_number, split_by)``, tonic ``to_frame``, a disk cache.
* :mod:`.encoding`: the multi-level input encoding of one-hot M-LIF (algorithms.md §5.5).
* :mod:`.simulator`: static image -> synthetic events by simulated saccades.
* :mod:`.datasets`: ``NMNIST``, ``CIFAR10DVS`` (TEBN split), ``SaccadeEventDataset``, ``collate_time_major``.

Importing this package registers ``nmnist`` and ``cifar10dvs`` in :mod:`multispike.data.catalog`.

Example::

    from multispike.data.events import NMNIST, MultiLevelEncoder, collate_time_major
    ds = NMNIST(split="train", data_type="multilevel", frames_number=20,
                encoder=MultiLevelEncoder(T_F=20, lanes=3))          # x: [5, 3, 2, 34, 34]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..catalog import register_dataset
from .datasets import (CIFAR10DVS, CIFAR10DVS_CLASSES, DATA_TYPES, NMNIST, EventDataset, SaccadeEventDataset,
                       TimeMajorCollate, collate_time_major)
from .encoding import (MultiLevelEncoder, augment_lanes, binarize_frames, encode_multilevel, encoded_steps,
                       group_size, log_quantize_counts, merge_lanes, multilevel_lanes, resize_lanes)
from .events import (EVENT_DTYPE, EventFileError, EventRecording, SensorSize, as_sensor_size, empty_events,
                     infer_sensor_size, is_time_sorted, make_events, sort_events, validate_events)
from .frames import FrameCache, frames_from_events, integrate_frames, segment_bounds, slice_bounds, to_frame
from .readers import (CIFAR10DVS_SENSOR_SIZE, NMNIST_SENSOR_SIZE, aedat4_sensor_size, decode_dvs128_cifar10dvs,
                      load_events, read_aedat2_raw, read_aedat4, read_cifar10dvs_aedat, read_events_npz,
                      read_nmnist_bin, read_prophesee_dat, read_prophesee_dat_header)
from .simulator import SHIFT_PATTERNS, saccade_path, simulate_saccades

__all__ = [
    # events
    "EVENT_DTYPE", "EventFileError", "EventRecording", "SensorSize", "as_sensor_size", "empty_events",
    "infer_sensor_size", "is_time_sorted", "make_events", "sort_events", "validate_events",
    # readers
    "CIFAR10DVS_SENSOR_SIZE", "NMNIST_SENSOR_SIZE", "aedat4_sensor_size", "decode_dvs128_cifar10dvs", "load_events",
    "read_aedat2_raw", "read_aedat4", "read_cifar10dvs_aedat", "read_events_npz", "read_nmnist_bin",
    "read_prophesee_dat", "read_prophesee_dat_header",
    # frames
    "FrameCache", "frames_from_events", "integrate_frames", "segment_bounds", "slice_bounds", "to_frame",
    # encoding
    "MultiLevelEncoder", "augment_lanes", "binarize_frames", "encode_multilevel", "encoded_steps", "group_size",
    "log_quantize_counts", "merge_lanes", "multilevel_lanes", "resize_lanes",
    # simulator
    "SHIFT_PATTERNS", "saccade_path", "simulate_saccades",
    # datasets
    "CIFAR10DVS", "CIFAR10DVS_CLASSES", "DATA_TYPES", "NMNIST", "EventDataset", "SaccadeEventDataset",
    "TimeMajorCollate", "collate_time_major",
]


def _catalog_loader(cls):
    """Adapter for the catalog's ``loader(path, split, **kwargs)`` protocol: returns
    ``(dataset, labels, classes)`` where ``dataset`` is the event dataset (events, frames or lanes per item)."""

    def load(path: Path, split: str, **kwargs: Any):
        ds = cls(root=path, split=split, **kwargs)
        return ds, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)

    load.__name__ = f"load_{cls.__name__.lower()}"
    return load


def _register() -> None:
    register_dataset(
        name="nmnist", kind="events", relpath="events/nmnist-small", files=("Train", "Test"),
        loader=_catalog_loader(NMNIST), num_classes=10, input_shape=(2, 34, 34), classes=NMNIST.classes,
        description="N-MNIST recordings, native .bin (ATIS 34x34, 2 polarities); the shared copy is the "
                    "1,000/100 N-MNIST-small subset; pass root= for the full set",
        fix="pass --data-dir / root= pointing at the folder with Train/ and Test/ (N-MNIST .bin layout)",
        provided_by="multispike.data.events",
        citation="Orchard et al., 'Converting static image datasets to spiking neuromorphic datasets using "
                 "saccades', Front. Neurosci. 2015", overwrite=True)
    register_dataset(
        name="cifar10dvs", kind="events", relpath="events/cifar10dvs", files=CIFAR10DVS_CLASSES,
        loader=_catalog_loader(CIFAR10DVS), num_classes=10, input_shape=(2, 128, 128), classes=CIFAR10DVS_CLASSES,
        splits=("train", "test", "all"),
        description="CIFAR10-DVS, original jAER AEDAT 2 .aedat per class folder (DVS128, SpikingJelly decoding, "
                    "TEBN split: samples 0-99 of each class test)",
        fix="unzip the ten per-class CIFAR10-DVS archives (figshare) into <data root>/events/cifar10dvs/<class>/ "
            "or pass --data-dir / root= pointing at the folder holding the class folders",
        provided_by="multispike.data.events",
        citation="Li et al., 'CIFAR10-DVS: An Event-Stream Dataset for Object Classification', Front. Neurosci. "
                 "2017", overwrite=True)


_register()
