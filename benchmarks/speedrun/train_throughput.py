"""Training images/s of a zoo model on this CPU (forward + backward + SGD step, synthetic batches of the real shape).

    PYTHONPATH=. python benchmarks/speedrun/train_throughput.py --model airbench_cifar --widths 32,64,128,256 \
        --batch-size 256 --threads 2 [--channels-last] [--bf16]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from multispike.models import create_model


def measure(model_name: str, widths: tuple[int, ...] | None, batch_size: int, neuron: str, channels_last: bool,
            bf16: bool, steps: int, neuron_kwargs: dict | None = None) -> float:
    kw = {"widths": widths} if widths else {}
    model = create_model(model_name, num_classes=10, neuron=neuron, T=1, neuron_kwargs=neuron_kwargs, **kw)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch_size, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))

    def step():
        opt.zero_grad(set_to_none=True)
        with ctx():
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="airbench_cifar")
    ap.add_argument("--widths", default=None, help="comma-separated widths (airbench_cifar)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--neuron", default="relu")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(",")) if args.widths else None
    nk = {"levels": 4} if args.neuron == "qcfs" else None
    ips = measure(args.model, widths, args.batch_size, args.neuron, args.channels_last, args.bf16, args.steps, nk)
    print(json.dumps({"model": args.model, "widths": widths, "batch_size": args.batch_size, "threads": args.threads,
                      "neuron": args.neuron, "channels_last": args.channels_last, "bf16": args.bf16,
                      "train_images_per_s": round(ips, 1)}))


if __name__ == "__main__":
    main()
