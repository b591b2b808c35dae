"""The evidence suite's data: stratified CIFAR-10 subsets and N-MNIST-small raw frames, read from the shared
datasets folder or from a compact bundle (``make_bundle.py``); both give the same images for the same subset."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.evidence.profiles import BUNDLE_FORMAT, BUNDLE_MANIFEST, NMNIST_RAW_FRAMES, REPO


def default_data_dir() -> Path:
    """``$MULTISPIKE_DATA``, else ``<repo>/.evidence_data`` when it holds a bundle, else
    ``<repo>/../shared/datasets``."""
    env = os.environ.get("MULTISPIKE_DATA")
    if env:
        return Path(env)
    bundle = REPO / ".evidence_data"
    if (bundle / BUNDLE_MANIFEST).is_file():
        return bundle
    return REPO.parent / "shared" / "datasets"


def is_bundle(path: Path) -> bool:
    return (Path(path) / BUNDLE_MANIFEST).is_file()


def read_manifest(path: Path) -> dict:
    m = json.loads((Path(path) / BUNDLE_MANIFEST).read_text())
    if m.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: not an evidence bundle of format {BUNDLE_FORMAT!r} (found {m.get('format')!r}); "
                         f"rebuild it with benchmarks/evidence/make_bundle.py")
    return m


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a class-stratified, seeded subset of size ``n`` (``multispike.train.subset_indices``:
    classes round-robin over a seeded permutation). Nested: the subset of size n is contained in every larger
    one with the same seed, which is what lets a bundle of the largest subset serve every smaller one."""
    from multispike.train import subset_indices
    return subset_indices(labels, int(n), int(seed))


@dataclass
class CifarData:
    train_x: torch.Tensor   # uint8 [N, 3, 32, 32]
    train_y: torch.Tensor   # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    provenance: dict


def load_cifar_subset(data_dir: Path, n_train: int, n_test: int, seed: int) -> CifarData:
    """The stratified CIFAR-10 subset from a bundle (``make_bundle.py``) or from the pickles under ``data_dir``.

    Both sources give the same images for the same ``(n, seed)`` (the bundle stores the largest subset and the
    full label arrays; smaller subsets are re-selected with the same rule, which is nested)."""
    data_dir = Path(data_dir)
    out: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    if is_bundle(data_dir):
        man = read_manifest(data_dir)
        c = man["cifar10"]
        if int(c["seed"]) != int(seed):
            raise ValueError(f"{data_dir}: the bundle holds the subset with seed {c['seed']}, the run asks for seed "
                             f"{seed}; rebuild the bundle with --seed {seed}")
        for split, n in (("train", n_train), ("test", n_test)):
            have = int(c[f"{split}_count"])
            if n > have:
                raise ValueError(f"{data_dir}: the bundle holds {have} CIFAR-10 {split} images, the profile needs {n}; "
                                 f"rebuild it with make_bundle.py --{split} {n}")
            x = torch.from_numpy(np.load(data_dir / c[f"{split}_images"]))
            idx = torch.from_numpy(np.load(data_dir / c[f"{split}_indices"]).astype(np.int64))
            all_labels = torch.from_numpy(np.load(data_dir / c[f"{split}_all_labels"]).astype(np.int64))
            want = stratified_subset(all_labels, n, seed)
            pos = torch.searchsorted(idx, want)
            if not torch.equal(idx[pos.clamp(max=len(idx) - 1)], want):
                raise ValueError(f"{data_dir}: the bundle's {split} subset does not contain the requested one "
                                 f"(bundle built with another rule?); rebuild it")
            out[split] = (x[pos], all_labels[want], want)
        source = {"kind": "bundle", "path": str(data_dir), "manifest_sha256": man.get("sha256", {}),
                  "built_from": man.get("source")}
    else:
        from multispike.data import load_cifar10
        for split, n in (("train", n_train), ("test", n_test)):
            s = load_cifar10(data_dir, split=split)
            want = stratified_subset(s.labels, n, seed)
            out[split] = (s.images[want], s.labels[want].to(torch.int64), want)
        source = {"kind": "pickles", "path": str(data_dir)}
    prov = {"dataset": "CIFAR-10 (pixels decoded from JPEG copies; see shared/datasets/README.md)",
            "source": source, "subset_rule": "multispike.train.subset_indices (class round-robin over "
            "torch.randperm with the seed), nested in n", "seed": int(seed)}
    for split in ("train", "test"):
        x, y, idx = out[split]
        prov[split] = {"count": int(len(y)), "per_class": torch.bincount(y, minlength=10).tolist(),
                       "indices_sha256": hashlib.sha256(idx.numpy().astype(np.int64).tobytes()).hexdigest()}
    return CifarData(out["train"][0], out["train"][1], out["test"][0], out["test"][1], prov)


@dataclass
class NMNISTData:
    train_frames: torch.Tensor  # uint8 {0,1} [N, NMNIST_RAW_FRAMES, 2, 34, 34]
    train_y: torch.Tensor
    test_frames: torch.Tensor
    test_y: torch.Tensor
    provenance: dict


def nmnist_raw_frames(root: Path, split: str, raw_frames: int = NMNIST_RAW_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """All recordings of one N-MNIST split integrated SpikingJelly-style (``frames_number=raw_frames``,
    ``split_by='number'``) and binarised (any event -> 1): uint8 ``[N, raw_frames, 2, 34, 34]`` and labels."""
    from multispike.data.events import NMNIST
    ds = NMNIST(root=root, split=split, data_type="frame", frames_number=raw_frames, split_by="number")
    frames = np.empty((len(ds), raw_frames, 2, 34, 34), dtype=np.uint8)
    for i in range(len(ds)):
        frames[i] = (ds.frames(i) > 0)
    return frames, np.asarray(ds.targets, dtype=np.int64)


def _nmnist_root(data_dir: Path) -> Path:
    for cand in (data_dir / "events" / "nmnist-small", data_dir / "nmnist-small", data_dir):
        if (cand / "Train").is_dir() and (cand / "Test").is_dir():
            return cand
    raise FileNotFoundError(f"N-MNIST-small not found under {data_dir} (looked for events/nmnist-small/Train and "
                            f"Test); pass --data pointing at shared/datasets or at a bundle from make_bundle.py")


def load_nmnist(data_dir: Path, n_train: int | None, n_test: int | None, seed: int) -> NMNISTData:
    """N-MNIST-small as binary raw frames, from a bundle or from the ``.bin`` files (stratified subsets)."""
    data_dir = Path(data_dir)
    if is_bundle(data_dir):
        man = read_manifest(data_dir)
        nm = man["nmnist"]
        if int(nm["raw_frames"]) != NMNIST_RAW_FRAMES:
            raise ValueError(f"{data_dir}: bundle has {nm['raw_frames']} raw N-MNIST frames, the suite needs "
                             f"{NMNIST_RAW_FRAMES}; rebuild it")
        z = np.load(data_dir / nm["file"])
        shape = tuple(int(s) for s in z["shape"])
        bits = np.unpackbits(z["packed"], axis=-1, count=shape[-1])
        frames = bits.reshape(shape).astype(np.uint8)
        split = z["split"]
        labels = z["labels"].astype(np.int64)
        parts = {s: (frames[split == i], labels[split == i]) for i, s in enumerate(("train", "test"))}
        source = {"kind": "bundle", "path": str(data_dir), "file": nm["file"]}
    else:
        root = _nmnist_root(data_dir)
        parts = {s: nmnist_raw_frames(root, s) for s in ("train", "test")}
        source = {"kind": "bin files", "path": str(root)}
    out = {}
    prov = {"dataset": "N-MNIST-small (1,000 train + 100 test real recordings; shared/datasets/README.md)",
            "source": source, "raw_frames": NMNIST_RAW_FRAMES,
            "integration": "SpikingJelly integrate_frames(frames_number=24, split_by='number'), binarised"}
    for s, n in (("train", n_train), ("test", n_test)):
        x, y = parts[s]
        yt = torch.from_numpy(y)
        idx = torch.arange(len(yt)) if n is None or n >= len(yt) else stratified_subset(yt, n, seed)
        out[s] = (torch.from_numpy(x)[idx], yt[idx])
        prov[s] = {"count": int(len(idx)), "per_class": torch.bincount(yt[idx], minlength=10).tolist(),
                   "subset": "all" if n is None or n >= len(yt) else f"stratified n={n}, seed={seed}"}
    return NMNISTData(out["train"][0], out["train"][1], out["test"][0], out["test"][1], prov)
