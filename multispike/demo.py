"""End-to-end demo on the embedded 8x8 digits: ANN -> SNN in a few timesteps, on this CPU in minutes.

Rows (each measured in the run that prints it, nothing copied):

* ``ann``   - a small CNN trained with ReLU.
* ``if``    - the same ANN converted to IF neurons (BN folded, θ from the 99.9th percentile of each layer's
  pre-activations, v(0) = θ/2), at T = 1, 2, 4, 8, 16, 32.
* ``lmht``, ``qac``, ``mlif`` - LM-HT, QAC and one-hot M-LIF comparisons, produced by the
  :data:`EXTRA_ROWS` producers of :mod:`multispike.demo_rows` (see there for each recipe).

Every row is a dict with ``group``, ``method``, ``T`` (an int, a float average for mixed timesteps, or
``None`` for an ANN), ``accuracy`` (%, on the 359 test images) and ``notes``, plus method-specific fields
(per-layer ``T_l``, spike rates, energy). The tiny convolutions run fastest on one thread (measured: about
5x faster than two threads on a loaded 2-core CPU), so the demo sets ``torch.set_num_threads(cfg.threads)``
while it runs and restores the previous value afterwards.

Run it with ``multispike demo`` (see ``--help``); results go to ``<out>/results.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .convert.converter import convert_to_snn
from .data.embedded import DIGITS_MEAN, DIGITS_STD, load_digits_split
from .data.loader import TensorLoader
from .layers import SeqToANNContainer
from .neurons.base import MemoryModule, reset_net
from .neurons.registry import make_neuron

__all__ = ["DemoConfig", "DigitsCNN", "run_demo", "evaluate_prefixes", "train_classifier", "spike_rates",
           "spike_statistics", "predictions", "format_table", "EXTRA_ROWS", "DEFAULT_ROWS"]

DEFAULT_ROWS = ("if", "lmht", "qac", "mlif")


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (the CLI flags mirror the main ones).

    The ReLU ANN is trained from scratch with ``epochs`` and ``lr`` (Adam, cosine schedule); every other
    network starts from its weights: the QCFS ANN and the QAC network are trained on (quantization-aware
    fine-tuning, ``qcfs_epochs`` / ``qac_epochs``), the converted SNNs are fine-tuned with BPTT/STBP
    (``finetune_epochs``). So all rows share one ANN, and the demo fits in well under a minute.

    Method settings:
        qcfs_levels, qcfs_threshold, qcfs_epochs, qcfs_lr: Q, the initial (learnable) clip ϑ, epochs and lr
            of the QCFS ANN shared by the LM-HT and QAC rows. ϑ starts at 4.0 rather than QCFS-C's 8.0
            because this CNN's 99.9th-percentile pre-activations are 3-5 (measured by the ``if`` row).
        lmht_levels, lmht_timesteps, lmht_lr: L, T and the STBP fine-tuning learning rate (the paper's
            hybrid lr 5e-4, §2.6; Adam here).
        qac_alpha, qac_t, qac_epochs, qac_lr, qac_quantizer_lr: initial clip α and continuous timestep t of
            every QAC quantizer (the §4.2 defaults 8.0 and 4.0), QAT epochs, the weights' lr and the lr of
            (t, α): t is in units of timesteps, so it gets its own rate (30x the weights').
        qac_latency_weight, qac_latency_per_layer: λ and the layer weights of multispike's latency term
            λ·Σ_l w_l·t_l (:class:`~multispike.quant.qac.LatencyRegulariser`; ``macs``: w_l ∝ the synaptic MACs
            feeding the layer). QAC's cross-entropy alone leaves t near its start; the demo trains both.
        calib_epochs, calib_lr, calib_target: QAC calibration of v(0) and θ (§4.5).
        mlif_bits, mlif_lanes, mlif_threshold_init, mlif_lr, mlif_gamma: b of the log-quantized ANN the M-LIF
            rows start from, S of the main M-LIF row (``None``: ``2^b − 1``, the exact pairing), its init rule
            (``"logquant"``, the exact mapping; ``"percentile"`` = the paper text's P90), the fine-tuning lr (Adam;
            MLIF-P's 1e-4) and the triangle surrogate width γ. γ = 1 makes each window integrate to its edge's
            jump, so the surrogate's gain per layer matches the LQ-ANN's straight-through gradient; MLIF-P's 0.3
            shrinks the gradient by 0.3 per spiking layer (measured at the first conv of this CNN: 0.0017 vs 0.065
            for γ = 1 and 0.055 through the LQ-ANN).
        threads: torch intra-op threads while the demo runs.
        quick: the reduced setting used by the tests (few epochs; numbers are not meant for reading).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    timesteps: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    threshold: str = "99.9%"
    seed: int = 0
    rows: tuple[str, ...] = DEFAULT_ROWS
    finetune_epochs: int = 4
    out: str | None = None
    progress: bool = True
    qcfs_levels: int = 4
    qcfs_threshold: float = 4.0
    qcfs_epochs: int = 6
    qcfs_lr: float = 1e-3
    lmht_levels: int = 2
    lmht_timesteps: int = 2
    lmht_lr: float = 5e-4
    qac_alpha: float = 8.0
    qac_t: float = 4.0
    qac_epochs: int = 8
    qac_lr: float = 1e-3
    qac_quantizer_lr: float = 3e-2
    qac_latency_weight: float = 3e-2
    qac_latency_per_layer: str = "macs"
    calib_epochs: int = 5
    calib_lr: float = 1e-3
    calib_target: str = "float"
    mlif_bits: int = 2
    mlif_lanes: int | None = None
    mlif_threshold_init: str = "logquant"
    mlif_lr: float = 1e-4
    mlif_gamma: float = 1.0
    threads: int = 1
    quick: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick_config(cls, **overrides) -> "DemoConfig":
        """The reduced setting (``--quick``): 6 ANN epochs, 2 epochs for everything trained after it, T up to 8."""
        base = dict(epochs=6, finetune_epochs=2, qcfs_epochs=2, qac_epochs=2, calib_epochs=2, timesteps=(1, 2, 4, 8),
                    quick=True)
        base.update(overrides)
        return cls(**base)


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
        """``[B, 1, 8, 8]`` (static, direct-encoded over ``T`` steps) or ``[T, B, 1, 8, 8]`` -> ``[T, B, classes]``."""
        if x.dim() == 4:  # static image: stem once, then repeat (direct encoding)
            h = self.stem(x.unsqueeze(0))
            h = h.expand(self.T, *h.shape[1:])
        else:
            h = self.stem(x)
        return self.forward_body(h)

    def forward_body(self, h: torch.Tensor) -> torch.Tensor:
        """Everything after the stem, ``[T, B, C, 8, 8] -> [T, B, classes]``. Free of data-dependent branches,
        so torch.fx can trace it (QAC's converter checks it for functional ReLU calls this way)."""
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
                     progress: bool = True, params: list | None = None,
                     regulariser: Callable[[], torch.Tensor] | None = None) -> float:
    """Adam + cosine schedule, cross-entropy on the time-mean output; returns seconds spent.

    A thin wrapper over the package's one training loop, :class:`multispike.train.Trainer` (mode ``ann``, loss
    ``ce``, Adam without weight decay, per-iteration cosine lr over ``epochs · len(loader)`` steps); nothing is
    written to disk. ``params`` may be a list of tensors or of Adam parameter groups (a group's own ``"lr"`` wins
    over ``lr``). Epoch ``e`` of every call visits the batches in the same order (``loader.set_epoch(e)``), so a
    network's training does not depend on which other rows ran before it. ``desc`` labels the progress bar.

    ``regulariser()`` (e.g. QAC's :class:`~multispike.quant.qac.LatencyRegulariser`) is added to every batch's
    loss after the forward pass (the trainer's ``regulariser``).
    """
    from .train.config import TrainConfig
    from .train.distributed import DistInfo
    from .train.engine import Trainer

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
    from .metrics.prefix import prefix_accuracy

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
# to ctx["sections"], printed after the table.
EXTRA_ROWS: dict[str, Callable[[DemoConfig, dict, Callable], list[dict]]] = {}


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


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Train, convert and evaluate; returns (and optionally saves) the results dict."""
    known = ("if", *EXTRA_ROWS)
    unknown = [r for r in cfg.rows if r not in known]
    if unknown:
        raise ValueError(f"unknown demo row(s) {unknown}; choose from {', '.join(known)}")
    if isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int) or cfg.threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {cfg.threads!r}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(cfg: DemoConfig, log: Callable[[str], None]) -> dict:
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    train, test, calib = _loaders(cfg)
    ctx: dict = {"train": train, "test": test, "calib": calib, "sections": []}
    rows: list[dict] = []
    base = "ReLU ANN -> IF (rate conversion)"

    ann = DigitsCNN("relu")
    secs = train_classifier(ann, train, cfg.epochs, cfg.lr, "ANN (ReLU)", cfg.progress)
    ann_acc = evaluate_prefixes(ann, test)[0]
    rows.append({"group": base, "method": "ANN (ReLU)", "T": None, "accuracy": ann_acc,
                 "notes": f"{cfg.epochs} epochs, {secs:.1f} s"})
    log(f"ANN accuracy: {ann_acc:.2f}% ({cfg.epochs} epochs, {secs:.1f} s)")
    ctx["ann"], ctx["ann_accuracy"] = ann, ann_acc

    per_layer = {}
    if "if" in cfg.rows:
        t_max = max(cfg.timesteps)
        snn, report = convert_to_snn(ann, T=t_max, threshold=cfg.threshold, calibration_data=[calib])
        prefix = evaluate_prefixes(snn, test)
        for T in cfg.timesteps:
            rows.append({"group": base, "method": "IF (converted)", "T": T, "accuracy": prefix[T - 1],
                         "notes": f"θ = {cfg.threshold} of pre-activations, v0 = θ/2"})
        for T in cfg.timesteps:
            snn.set_timesteps(T)
            per_layer[T] = spike_rates(snn, calib[:256])
        ctx["if_snn"], ctx["if_report"] = snn, report
        log(str(report))

    for name in cfg.rows:
        if name in EXTRA_ROWS:
            start = time.perf_counter()
            rows.extend(EXTRA_ROWS[name](cfg, ctx, log))
            log(f"[{name}] rows done in {time.perf_counter() - start:.1f} s")

    result = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "dataset": {"name": "digits", "train": len(train.labels) if hasattr(train, "labels") else None,
                    "source": "scikit-learn digits (8x8), embedded in the installed package"},
        "rows": rows,
        "spike_rates": {str(T): r for T, r in per_layer.items()},
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__,
        "threads": cfg.threads,
    }
    log("")
    log(format_table(rows))
    if per_layer:
        layers = list(next(iter(per_layer.values())))
        log("\nPer-layer spike rate (spikes per neuron per step) of the converted IF network:")
        log("T     " + "  ".join(f"{n:>8}" for n in layers))
        for T, r in per_layer.items():
            log(f"{T:<5} " + "  ".join(f"{r[n]:8.4f}" for n in layers))
    for section in ctx["sections"]:
        log("\n" + section)
    log(f"\nwall time: {result['wall_time_s']:.1f} s")
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out / "results.json")
        log(f"results saved to {out / 'results.json'}")
    return result


# The LM-HT, QAC and M-LIF producers register themselves in EXTRA_ROWS; imported last because they build on
# the helpers above.
from . import demo_rows as _demo_rows  # noqa: E402,F401
