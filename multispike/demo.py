"""End-to-end demo on the embedded 8x8 digits: ANN -> SNN in a few timesteps, on this CPU in minutes.

Rows (each measured, nothing copied):

* ``ann``   - a small CNN trained with ReLU.
* ``if``    - the same ANN converted to IF neurons (BN folded, MaxPool -> AvgPool, θ from the 99.9th
  percentile of each layer's pre-activations, v(0) = θ/2), at T = 1, 2, 4, 8, 16, 32.
* further rows (LM-HT, QAC, M-LIF) are added by :data:`EXTRA_ROWS` producers when their modules exist.

Run it with ``multispike demo`` (see ``--help``); results go to ``<out>/results.json``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .convert.converter import convert_to_snn
from .data.embedded import DIGITS_MEAN, DIGITS_STD, load_digits_split
from .data.loader import TensorLoader
from .layers import SeqToANNContainer
from .neurons.base import MemoryModule, reset_net
from .neurons.registry import make_neuron

__all__ = ["DemoConfig", "DigitsCNN", "run_demo", "evaluate_prefixes", "train_classifier", "spike_rates",
           "EXTRA_ROWS"]


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (the CLI flags mirror these names)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    timesteps: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    threshold: str = "99.9%"
    seed: int = 0
    rows: tuple[str, ...] = ("if", "lmht", "qac", "mlif")
    finetune_epochs: int = 4
    out: str | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)


class DigitsCNN(nn.Module):
    """A small time-major CNN for 8x8 inputs: 3 conv+BN layers, two average pools, a linear read-out.

    Average pooling from the start: swapping a trained MaxPool for AvgPool at conversion time changes the
    function the ANN computes (measured here: about -15 points on this demo).

    ``neuron`` chooses the activation (``"relu"`` for the ANN, any registered neuron for an SNN). Static
    input is direct-encoded: the stem conv+BN runs once and its output is repeated over ``T`` steps.
    """

    time_major = True

    def __init__(self, neuron="relu", T: int = 1, neuron_kwargs: dict | None = None, num_classes: int = 10,
                 width: int = 16) -> None:
        super().__init__()
        kw = dict(neuron_kwargs or {})
        self.T = T
        self.stem = SeqToANNContainer(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.act1 = make_neuron(neuron, T=T, **kw)
        self.conv2 = SeqToANNContainer(nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(2 * width))
        self.act2 = make_neuron(neuron, T=T, **kw)
        self.conv3 = SeqToANNContainer(nn.AvgPool2d(2), nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(4 * width))
        self.act3 = make_neuron(neuron, T=T, **kw)
        self.head = SeqToANNContainer(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * width * 4, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def set_timesteps(self, T: int) -> None:
        self.T = int(T)

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # static image: stem once, then repeat (direct encoding)
            h = self.stem(x.unsqueeze(0))
            h = h.expand(self.T, *h.shape[1:])
        else:
            h = self.stem(x)
        h = self.act1(h)
        h = self.act2(self.conv2(h))
        h = self.act3(self.conv3(h))
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_sequence(x).mean(0)


def _loaders(cfg: DemoConfig) -> tuple[TensorLoader, TensorLoader, torch.Tensor]:
    x_tr, y_tr = load_digits_split("train")
    x_te, y_te = load_digits_split("test")
    train = TensorLoader(x_tr, y_tr, cfg.batch_size, shuffle=True, seed=cfg.seed, mean=DIGITS_MEAN, std=DIGITS_STD)
    test = TensorLoader(x_te, y_te, 256, shuffle=False, mean=DIGITS_MEAN, std=DIGITS_STD)
    calib = torch.cat([x for x, _ in TensorLoader(x_tr, y_tr, 256, shuffle=False, mean=DIGITS_MEAN,
                                                  std=DIGITS_STD)])[:512]
    return train, test, calib


def train_classifier(model: nn.Module, loader: TensorLoader, epochs: int, lr: float, desc: str,
                     progress: bool = True, params: list | None = None) -> float:
    """Adam + cosine schedule, cross-entropy on the time-mean output; returns seconds spent."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    total = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="batch")
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            reset_net(model)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
    bar.close()
    model.eval()
    return time.perf_counter() - start


@torch.no_grad()
def evaluate_prefixes(model: nn.Module, loader: TensorLoader) -> list[float]:
    """Accuracy (%) of the cumulative time-mean output after every step t = 1..T."""
    model.eval()
    correct, n = None, 0
    for x, y in loader:
        reset_net(model)
        out = model.forward_sequence(x)  # [T, B, classes]
        steps = torch.arange(1, out.shape[0] + 1, dtype=out.dtype).view(-1, 1, 1)
        pred = (out.cumsum(0) / steps).argmax(-1)
        hits = (pred == y.unsqueeze(0)).sum(1).double()
        correct = hits if correct is None else correct + hits
        n += y.numel()
    reset_net(model)
    if n == 0:
        raise ValueError("evaluate_prefixes: the evaluation set is empty")
    return (100.0 * correct / n).tolist()


@torch.no_grad()
def spike_rates(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Mean unit events per neuron per timestep for every spiking layer, on one batch."""
    rates: dict[str, float] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, MemoryModule) and hasattr(m, "spike_events"):
            def hook(mod, inp, out, name=name):
                rates[name] = float(mod.spike_events(out).mean())
            hooks.append(m.register_forward_hook(hook))
    try:
        reset_net(model)
        model(x)
    finally:
        for h in hooks:
            h.remove()
        reset_net(model)
    return rates


# A producer receives (cfg, context, log) and returns a list of result rows; registered per row name.
EXTRA_ROWS: dict[str, Callable[[DemoConfig, dict, Callable], list[dict]]] = {}


def _table(rows: list[dict], timesteps: tuple[int, ...]) -> str:
    header = ["method", "T", "accuracy %", "notes"]
    lines = [header]
    for r in rows:
        lines.append([r["method"], str(r.get("T", "-")), f"{r['accuracy']:.2f}", r.get("notes", "")])
    widths = [max(len(l[i]) for l in lines) for i in range(4)]
    out = ["  ".join(c.ljust(w) for c, w in zip(l, widths)).rstrip() for l in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Train, convert and evaluate; returns (and optionally saves) the results dict."""
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    train, test, calib = _loaders(cfg)
    ctx: dict = {"train": train, "test": test, "calib": calib}
    rows: list[dict] = []

    ann = DigitsCNN("relu")
    secs = train_classifier(ann, train, cfg.epochs, cfg.lr, "ANN (ReLU)", cfg.progress)
    ann_acc = evaluate_prefixes(ann, test)[0]
    rows.append({"method": "ANN (ReLU)", "T": None, "accuracy": ann_acc, "notes": f"trained {secs:.1f} s"})
    log(f"ANN accuracy: {ann_acc:.2f}% ({cfg.epochs} epochs, {secs:.1f} s)")
    ctx["ann"] = ann

    per_layer = {}
    if "if" in cfg.rows:
        t_max = max(cfg.timesteps)
        snn, report = convert_to_snn(ann, T=t_max, threshold=cfg.threshold, calibration_data=[calib])
        prefix = evaluate_prefixes(snn, test)
        for T in cfg.timesteps:
            rows.append({"method": "IF (converted)", "T": T, "accuracy": prefix[T - 1],
                         "notes": f"θ from {cfg.threshold} of pre-activations, v0=θ/2"})
        for T in cfg.timesteps:
            snn.set_timesteps(T)
            per_layer[T] = spike_rates(snn, calib[:256])
        ctx["if_snn"], ctx["if_report"] = snn, report
        log(str(report))

    for name in cfg.rows:
        if name in EXTRA_ROWS:
            rows.extend(EXTRA_ROWS[name](cfg, ctx, log))

    result = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "dataset": {"name": "digits", "train": len(train.labels) if hasattr(train, "labels") else None,
                    "source": "scikit-learn digits (8x8), embedded in the installed package"},
        "rows": rows,
        "spike_rates": {str(T): r for T, r in per_layer.items()},
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__,
    }
    log("")
    log(_table(rows, cfg.timesteps))
    if per_layer:
        layers = list(next(iter(per_layer.values())))
        log("\nPer-layer spike rate (spikes per neuron per step) of the converted IF network:")
        log("T     " + "  ".join(f"{n:>8}" for n in layers))
        for T, r in per_layer.items():
            log(f"{T:<5} " + "  ".join(f"{r[n]:8.4f}" for n in layers))
    log(f"\nwall time: {result['wall_time_s']:.1f} s")
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out / "results.json")
        log(f"results saved to {out / 'results.json'}")
    return result
