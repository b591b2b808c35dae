"""The demo's shared pieces: data, the one training loop (the package's trainer), evaluation and spike statistics,
and the result table."""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from ..data.embedded import DIGITS_MEAN, DIGITS_STD, load_digits_split
from ..data.loader import TensorLoader
from ..neurons.base import MemoryModule, reset_net
from .config import DemoConfig

__all__ = ["train_classifier", "evaluate_prefixes", "predictions", "spike_statistics", "spike_rates", "format_table"]


def _loaders(cfg: DemoConfig) -> tuple[TensorLoader, TensorLoader, torch.Tensor]:
    x_tr, y_tr = load_digits_split("train")
    x_te, y_te = load_digits_split("test")
    train = TensorLoader(x_tr, y_tr, cfg.batch_size, shuffle=True, seed=cfg.seed, mean=DIGITS_MEAN, std=DIGITS_STD)
    test = TensorLoader(x_te, y_te, 256, shuffle=False, mean=DIGITS_MEAN, std=DIGITS_STD)
    calib = torch.cat([x for x, _ in TensorLoader(x_tr, y_tr, 256, shuffle=False, mean=DIGITS_MEAN,
                                                  std=DIGITS_STD)])[:512]
    return train, test, calib


def train_classifier(model: nn.Module, loader: TensorLoader, epochs: int, lr: float, desc: str,
                     progress: bool = True, params: list | None = None,
                     regulariser: Callable[[], torch.Tensor] | None = None) -> float:
    """Adam + cosine schedule, cross-entropy on the time-mean output; returns seconds spent.

    A thin wrapper over the package's one training loop, :class:`multispike.train.Trainer` (mode ``ann``, loss
    ``ce``, Adam without weight decay, per-iteration cosine lr over ``epochs · len(loader)`` steps); nothing is
    written to disk. ``params`` may be a list of tensors or of Adam parameter groups (a group's own ``"lr"`` wins
    over ``lr``). Epoch ``e`` of every call visits the batches in the same order (``loader.set_epoch(e)``), so a
    network's training does not depend on which other rows ran before it. ``desc`` labels the progress bar.

    ``regulariser()`` (e.g. QAC's :class:`~multispike.quant.latency.LatencyRegulariser`) is added to every batch's
    loss after the forward pass (the trainer's ``regulariser``).
    """
    from ..train.config import TrainConfig
    from ..train.distributed import DistInfo
    from ..train.engine import Trainer

    if epochs < 0:
        raise ValueError(f"train_classifier: epochs must be >= 0, got {epochs}")
    start = time.perf_counter()
    if epochs == 0:
        model.eval()
        return time.perf_counter() - start
    cfg = TrainConfig(model=desc, mode="ann", loss="ce", opt="adam", lr=lr, weight_decay=0.0, sched="cosine",
                      epochs=epochs, progress=progress, device="cpu")
    trainer = Trainer(model, loader, None, cfg, dist=DistInfo(rank=0, world_size=1, local_rank=0,
                                                               device=torch.device("cpu")))
    if params is not None:   # caller-chosen parameters / groups (e.g. only the neurons' thresholds)
        trainer.optimizer = torch.optim.Adam(params, lr=lr)
    trainer.regulariser = regulariser
    for epoch in range(epochs):
        trainer.train_epoch(epoch)
    model.eval()
    return time.perf_counter() - start


def evaluate_prefixes(model: nn.Module, loader: TensorLoader) -> list[float]:
    """Accuracy (%) of the cumulative time-mean output after every step t = 1..T.

    A thin wrapper over :func:`multispike.metrics.prefix_accuracy` (the package's one prefix evaluator).
    """
    from ..metrics.prefix import prefix_accuracy

    try:
        res = prefix_accuracy(model, loader)
    except ValueError as exc:
        raise ValueError(f"evaluate_prefixes: the evaluation set is empty ({exc})") from exc
    model.eval()
    return [100.0 * a for a in res["acc_per_t"]]


@torch.no_grad()
def predictions(model: nn.Module, loader: TensorLoader) -> torch.Tensor:
    """Argmax of the time-mean output for every sample of ``loader``, in order."""
    model.eval()
    out = []
    for x, _ in loader:
        reset_net(model)
        out.append(model(x).argmax(-1))
    reset_net(model)
    return torch.cat(out)


@torch.no_grad()
def spike_statistics(model: nn.Module, x: torch.Tensor) -> dict[str, dict]:
    """Per spiking layer, on one batch: ``events`` (mean value-weighted unit events per neuron per step, the
    neuron's ``spike_events``), ``active_lanes`` (mean fired lanes per neuron per step, ``active_lanes``; equal
    to ``events`` for binary neurons) and ``values`` (the distinct output values divided by the payload unit,
    e.g. ``[0, 1, 2, 4]`` for a one-hot M-LIF with S = 3)."""
    stats: dict[str, dict] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, MemoryModule) and hasattr(m, "spike_events"):
            def hook(mod, inp, out, name=name):
                events = mod.spike_events(out)
                lanes = mod.active_lanes(out) if hasattr(mod, "active_lanes") else (out != 0).to(out.dtype)
                stats[name] = {"events": float(events.mean()), "active_lanes": float(lanes.mean()),
                               "values": torch.unique(events).tolist()}
            hooks.append(m.register_forward_hook(hook))
    try:
        reset_net(model)
        model(x)
    finally:
        for h in hooks:
            h.remove()
        reset_net(model)
    return stats


def spike_rates(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Mean unit events per neuron per timestep for every spiking layer, on one batch."""
    return {name: s["events"] for name, s in spike_statistics(model, x).items()}


# A producer receives (cfg, context, log) and returns a list of result rows; registered per row name.
# The context holds the loaders ("train", "test", "calib"), the trained ReLU ANN ("ann"), the IF rows'
# network ("if_snn") and anything producers share (e.g. the QCFS ANN); a producer may append text blocks


def _fmt_T(T) -> str:
    if T is None:
        return "-"
    if isinstance(T, float) and not T.is_integer():
        return f"{T:.2f}"
    return str(int(T))


def format_table(rows: list[dict]) -> str:
    """The rows as a text table, one block per ``group`` (in first-appearance order)."""
    header = ["method", "T", "accuracy %", "notes"]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("group", ""), []).append(r)
    cells = {id(r): [r["method"], _fmt_T(r.get("T")), f"{r['accuracy']:.2f}", r.get("notes", "")] for r in rows}
    widths = [max([len(header[i])] + [len(c[i]) for c in cells.values()]) for i in range(4)]

    def line(c: list[str]) -> str:
        return "  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    for g, members in groups.items():
        if g:
            out.append(f"[{g}]")
        out += [line(cells[id(r)]) for r in members]
    return "\n".join(out)
