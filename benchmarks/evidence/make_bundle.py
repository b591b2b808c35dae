"""Pack the data the evidence suite reads into one compact folder (default ``<repo>/.evidence_data``, git-ignored).

Contents (all written atomically, listed with their sha256 in ``manifest.json``):

* ``cifar10_{train,test}_images.npy``: uint8 ``[N, 3, 32, 32]``, the class-stratified seeded subset of
  :func:`benchmarks.evidence.common.stratified_subset` (``multispike.train.subset_indices``), sorted by original
  index; ``cifar10_{train,test}_indices.npy`` (int32 original indices) and ``cifar10_{train,test}_all_labels.npy``
  (uint8 labels of the *whole* split, so any smaller subset with the same seed can be re-selected: the rule is
  nested in n);
* ``nmnist_frames24.npz``: every N-MNIST-small recording (1,000 train + 100 test) integrated into 24 frames
  (SpikingJelly ``frames_number=24, split_by='number'``), binarised, bit-packed along the width and
  zlib-compressed, with labels, the split (0 train, 1 test) and the shape.

The default sizes (12,000 + 3,000 CIFAR-10 images) give about 46 MB for CIFAR-10 and under 2 MB for N-MNIST; the
script refuses to write more than ``--max-mib`` (50 MiB) in all.

Run: ``PYTHONPATH=. python3 benchmarks/evidence/make_bundle.py --source ../shared/datasets --out .evidence_data``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.evidence import common as C  # noqa: E402


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def build_bundle(source: Path, out: Path, *, n_train: int = 12000, n_test: int = 3000, seed: int = 0,
                 max_mib: float = 50.0, nmnist: bool = True, log=print) -> dict:
    """Write the bundle; returns the manifest. Raises ``ValueError`` if it would exceed ``max_mib``."""
    import torch

    from multispike.data import load_cifar10

    source, out = Path(source), Path(out)
    t0 = time.perf_counter()
    est = (n_train + n_test) * 3072 + (2 << 20)
    if est > max_mib * 2**20:
        raise ValueError(f"{n_train} + {n_test} CIFAR-10 images need about {est / 2**20:.1f} MiB, more than "
                         f"--max-mib {max_mib:g}; use fewer images")
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"format": C.BUNDLE_FORMAT, "created_by": "benchmarks/evidence/make_bundle.py",
                      "source": str(source), "created_unix": int(time.time()), "sha256": {}}
    cifar = {"seed": seed}
    for split, n in (("train", n_train), ("test", n_test)):
        s = load_cifar10(source, split=split)
        idx = C.stratified_subset(s.labels, n, seed)
        files = {"images": f"cifar10_{split}_images.npy", "indices": f"cifar10_{split}_indices.npy",
                 "all_labels": f"cifar10_{split}_all_labels.npy"}
        _save_npy(out / files["images"], s.images[idx].numpy())
        _save_npy(out / files["indices"], idx.numpy().astype(np.int32))
        _save_npy(out / files["all_labels"], s.labels.numpy().astype(np.uint8))
        cifar.update({f"{split}_count": int(len(idx)), f"{split}_{'images'}": files["images"],
                      f"{split}_indices": files["indices"], f"{split}_all_labels": files["all_labels"],
                      f"{split}_per_class": torch.bincount(s.labels[idx], minlength=10).tolist()})
        log(f"CIFAR-10 {split}: {len(idx)} images (seed {seed})")
    manifest["cifar10"] = cifar
    if nmnist:
        root = C._nmnist_root(source)
        tr, ytr = C.nmnist_raw_frames(root, "train")
        te, yte = C.nmnist_raw_frames(root, "test")
        frames = np.concatenate([tr, te])
        packed = np.packbits(frames.astype(bool), axis=-1)
        name = f"nmnist_frames{C.NMNIST_RAW_FRAMES}.npz"
        tmp = out / (name + ".tmp.npz")
        np.savez_compressed(tmp, packed=packed, shape=np.asarray(frames.shape, dtype=np.int64),
                            labels=np.concatenate([ytr, yte]).astype(np.uint8),
                            split=np.concatenate([np.zeros(len(ytr)), np.ones(len(yte))]).astype(np.uint8))
        os.replace(tmp, out / name)
        manifest["nmnist"] = {"file": name, "raw_frames": C.NMNIST_RAW_FRAMES, "train_count": int(len(ytr)),
                              "test_count": int(len(yte)), "root": str(root),
                              "integration": "integrate_frames(frames_number=24, split_by='number') > 0"}
        log(f"N-MNIST-small: {len(ytr)} train + {len(yte)} test recordings, {C.NMNIST_RAW_FRAMES} binary frames each")
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != C.BUNDLE_MANIFEST)
    manifest["sha256"] = {p.name: _sha256(p) for p in files}
    total = sum(p.stat().st_size for p in files)
    manifest["bytes"] = total
    if total > max_mib * 2**20:
        raise ValueError(f"the bundle in {out} is {total / 2**20:.1f} MiB, more than --max-mib {max_mib:g}")
    tmp = out / (C.BUNDLE_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / C.BUNDLE_MANIFEST)
    log(f"bundle {out}: {total / 2**20:.2f} MiB in {len(files)} files ({time.perf_counter() - t0:.1f} s)")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Pack the evidence suite's CIFAR-10 subset and N-MNIST-small frames "
                                             "into a compact, git-ignored folder.")
    ap.add_argument("--source", type=Path, default=C.REPO.parent / "shared" / "datasets",
                    help="the shared datasets folder (cifar10/ and events/nmnist-small/)")
    ap.add_argument("--out", type=Path, default=C.REPO / ".evidence_data", help="bundle folder")
    ap.add_argument("--train", type=int, default=12000, help="CIFAR-10 training images (stratified)")
    ap.add_argument("--test", type=int, default=3000, help="CIFAR-10 test images (stratified)")
    ap.add_argument("--seed", type=int, default=0, help="subset seed")
    ap.add_argument("--max-mib", type=float, default=50.0, help="refuse bundles larger than this")
    ap.add_argument("--no-nmnist", action="store_true", help="leave N-MNIST out")
    args = ap.parse_args(argv)
    build_bundle(args.source, args.out, n_train=args.train, n_test=args.test, seed=args.seed, max_mib=args.max_mib,
                 nmnist=not args.no_nmnist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
