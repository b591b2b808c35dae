"""Images/s of the in-memory CIFAR-10 data path alone (no model): gather + augment + normalise per batch.

    PYTHONPATH=. python benchmarks/speedrun/loader_throughput.py --threads 2 --batch-size 512
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from multispike.data import Augment, TensorLoader, load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y, info = load_dataset("cifar10", None, "train")
    results = {}
    for name, aug, cl in [("crop4+flip", Augment(crop_padding=4, hflip=True), False),
                          ("translate2_reflect+flip", Augment(crop_padding=2, hflip=True, pad_mode="reflect"), False),
                          ("crop4+flip+cutout12", Augment(crop_padding=4, hflip=True, cutout=12), False),
                          ("crop4+flip channels_last", Augment(crop_padding=4, hflip=True), True)]:
        loader = TensorLoader(x, y, args.batch_size, seed=0, augment=aug, mean=info.mean, std=info.std,
                              channels_last=cl, device=args.device)
        n, t0 = 0, time.perf_counter()
        for _ in range(args.epochs):
            for xb, _ in loader:
                n += xb.shape[0]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        results[name] = round(n / (time.perf_counter() - t0))
    print(json.dumps({"threads": args.threads, "batch_size": args.batch_size, "device": args.device,
                      "images_per_s": results}, indent=1))


if __name__ == "__main__":
    main()
