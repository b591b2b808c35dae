"""Training phases and evaluation of the evidence suite, through the library: every network is trained by
:class:`multispike.train.Trainer` and every accuracy comes from :func:`multispike.metrics.prefix.prefix_accuracy`.

A phase is described by a :class:`TrainSpec` (the suite's short recipe vocabulary) which :func:`phase_config`
turns into a :class:`multispike.train.TrainConfig`:

* fractional epochs -> ``max_steps = round(epochs x steps per epoch)`` (the cosine spans exactly those steps);
* the phase's time allotment -> ``time_budget_s`` (the Trainer stops cleanly there and its cosine follows the
  elapsed time, ``budget_schedule``), with ``budget_min_steps`` so a phase under a tiny allotment still takes a
  few steps; the run's hard deadline stops a phase regardless (after at least one step);
* weight decay on conv/linear weights only (``decay_norm_and_bias: false``, neuron and quantizer groups 0);
* QAC's (t, alpha) optimizer and multispike's latency term -> ``quant_opt``/``quant_lr``/``latency_weight``;
* the converted networks' BatchNorm statistics stay fixed -> ``freeze_bn``.

Compared rows get equal epochs: :func:`plan_equal_epochs` measures each member's step time with
:func:`multispike.train.measure_step_seconds` (the Trainer's own step on a copy) and plans with
:func:`multispike.train.equal_epoch_plan`. Each phase writes the Trainer's ``log.jsonl`` and ``summary.json``
under ``<out>/train_logs/<table>/<phase>/``; its record in the result JSON names the log (``trainer_log``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
from torch import nn

from benchmarks.evidence.profiles import CIFAR_MEAN, CIFAR_STD
from benchmarks.evidence.provenance import TRAINER
from multispike.data import Augment, TensorLoader
from multispike.metrics.prefix import prefix_accuracy
from multispike.train import NonFiniteError, Trainer, TrainConfig, TrainingInterrupted
from multispike.train.budget import equal_epoch_plan, measure_step_seconds
from multispike.train.precision import exact_fp32

if TYPE_CHECKING:
    from benchmarks.evidence.run_context import Context
    from benchmarks.evidence.table_run import TableRun

#: Files a phase folder may hold (written by the Trainer); an older run's copies are removed before a phase.
_PHASE_FILES = ("log.jsonl", "summary.json", "timesteps.txt", "config.json")


@dataclass
class TrainSpec:
    """One training phase. ``loss``: ``ce`` on the time mean of the output, ``tet`` on the per-step outputs."""

    epochs: float
    lr: float
    opt: str = "sgd"                 # sgd (momentum 0.9, nesterov) | adam
    weight_decay: float = 5e-4       # on conv/linear weights only (not BN, biases, thresholds, t, alpha, leak)
    loss: str = "ce"
    amp: bool = False                # bf16 autocast
    channels_last: bool = False
    warmup_epochs: float = 0.0
    log_quantizers: bool = False     # record QAC T_l per epoch (the Trainer logs them; copied into the record)
    min_steps: int = 10              # a phase takes at least min(this, planned) steps before its allotment stops it
    freeze_bn: bool = False          # keep BatchNorm in eval mode (the converted ANN's running statistics)
    quant_opt: str | None = None     # QAT: optimizer of the QAC quantizers' (t, α) (None: same as the rest)
    quant_lr: float | None = None    # QAT: its learning rate (None: lr); cosine-scheduled like the rest
    latency_weight: float = 0.0      # QAT: λ of multispike's latency term λ·Σ_l w_l·t_l (0: cross-entropy only)
    latency_per_layer: str = "uniform"   # QAT: w_l = 1 (uniform) or the synaptic MACs, mean 1 (macs)


class LimitedLoader:
    """At most ``max_batches`` batches of ``loader`` per pass (dry runs); forwards ``set_epoch``/``epoch``."""

    def __init__(self, loader: Any, max_batches: int) -> None:
        self.loader, self.max_batches = loader, int(max_batches)
        self.batch_size = getattr(loader, "batch_size", None)

    def __len__(self) -> int:
        return min(len(self.loader), self.max_batches)

    def __iter__(self) -> Iterator:
        for b, batch in enumerate(self.loader):
            if b >= self.max_batches:
                break
            yield batch

    @property
    def epoch(self) -> int | None:
        return getattr(self.loader, "epoch", None)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)


def _limited(loader: Any, ctx: "Context") -> Any:
    mb = ctx.profile.max_batches
    return LimitedLoader(loader, mb) if mb and len(loader) > mb else loader


def _has_quantizers(model: nn.Module) -> bool:
    from multispike.quant.latency import quantizer_parameters
    return bool(quantizer_parameters(model))


def phase_config(spec: TrainSpec, model: nn.Module, *, name: str, out: Path, device: torch.device, seed: int,
                 steps_per_epoch: int, time_budget_s: float, min_steps: int, batch_size: int = 1) -> TrainConfig:
    """The :class:`~multispike.train.TrainConfig` of one phase (see the module docstring for the mapping)."""
    if spec.loss not in ("ce", "tet"):
        raise ValueError(f"TrainSpec.loss must be 'ce' or 'tet', got {spec.loss!r}")
    if spec.opt not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {spec.opt!r}; use 'sgd' or 'adam'")
    T = int(getattr(model, "T", 1) or 1)
    if spec.loss == "tet":
        mode, loss = "snn", "tet"
    elif spec.latency_weight or _has_quantizers(model):
        mode, loss = "qat", "ce"
    elif T > 1 and hasattr(model, "forward_sequence"):
        mode, loss = "snn", "ce_mean"        # CE on the time mean of forward_sequence (= model(x) of the zoo)
    else:
        mode, loss = "ann", "ce"
    planned = max(1, int(round(spec.epochs * steps_per_epoch)))
    cfg = TrainConfig(
        model=type(model).__name__, dataset="evidence", timesteps=T, mode=mode, loss=loss,
        epochs=max(1, math.ceil(planned / steps_per_epoch)), max_steps=planned,
        batch_size=int(batch_size),
        opt=spec.opt, lr=spec.lr, momentum=0.9, nesterov=spec.opt == "sgd", weight_decay=spec.weight_decay,
        decay_norm_and_bias=False, neuron_weight_decay=0.0, quant_weight_decay=0.0,
        quant_opt=spec.quant_opt, quant_lr=spec.quant_lr,
        latency_weight=spec.latency_weight, latency_per_layer=spec.latency_per_layer,
        sched="cosine", warmup_epochs=min(spec.warmup_epochs, float(max(1, math.ceil(spec.epochs)))),
        amp="bf16" if spec.amp else "none", channels_last=spec.channels_last, freeze_bn=spec.freeze_bn,
        time_budget_s=max(1e-9, float(time_budget_s)), budget_min_steps=min_steps, budget_schedule=True,
        out=str(out), seed=seed, device=str(device), save_checkpoints=False, progress=False, keep_checkpoints=1,
    )
    return cfg.validate()


def _phase_dir(ctx: "Context", table: str, name: str) -> Path:
    """``<out>/train_logs/<table>/<name>`` (``-2``, ``-3``... when the name repeats in this process), emptied of an
    older run's files."""
    used = getattr(ctx, "phase_dirs", None)
    if used is None:
        used = ctx.phase_dirs = set()
    base = Path(ctx.out_dir) / "train_logs" / table / name
    path, k = base, 1
    while str(path) in used:
        k += 1
        path = base.with_name(f"{name}-{k}")
    used.add(str(path))
    for f in _PHASE_FILES:
        (path / f).unlink(missing_ok=True)
    return path


def train_phase(model: nn.Module, loader: TensorLoader | Iterable, spec: TrainSpec, *, name: str, ctx: "Context",
                allot_s: float, table: str = "phase") -> dict:
    """Train ``model`` in place with :class:`multispike.train.Trainer` under a time allotment; returns the phase
    record (JSON-ready). ``model`` is left in eval mode and contiguous memory format.

    The record keeps the fields of the suite's result files (``steps_planned``, ``steps_run``, ``epochs_run``,
    ``cuts``, ``epoch_loss``, ...) and adds ``trainer``, ``trainer_log`` (the Trainer's ``log.jsonl``, relative to
    the output folder) and ``stop_reason``. A diverged phase (NaN/Inf) is recorded with ``status: diverged``.
    """
    from benchmarks.evidence.run_context import Interrupted

    device = ctx.device
    loader = _limited(loader, ctx)
    spe = len(loader)
    if spe < 1:
        raise ValueError(f"phase {name}: the training loader yields no batch")
    planned = max(1, int(round(spec.epochs * spe)))
    hard_left = ctx.hard_deadline - time.perf_counter()
    hard_limited = hard_left <= allot_s
    # An expired deadline becomes a 1 ns budget (not 1 ms: a warmed-up tiny step is faster than that, and the
    # phase would run on past its guaranteed step).
    budget = max(min(allot_s, hard_left), 1e-9)
    # The hard deadline of the run overrides a phase's minimum step count (as the allotment does not).
    min_steps = 1 if hard_limited else min(planned, spec.min_steps)
    out = _phase_dir(ctx, table, name)
    seed = int(torch.initial_seed()) % 2**31
    cfg = phase_config(spec, model, name=name, out=out, device=device, seed=seed, steps_per_epoch=spe,
                       time_budget_s=budget, min_steps=min_steps, batch_size=getattr(loader, "batch_size", None) or 1)
    tf32 = device.type == "cuda" and bool(getattr(ctx.profile, "tf32", False))
    record: dict[str, Any] = {
        "name": name, "trainer": f"{TRAINER}.Trainer", "opt": spec.opt, "lr": spec.lr,
        "weight_decay": spec.weight_decay, "loss": spec.loss, "trainer_mode": cfg.mode,
        "trainer_loss": cfg.resolved_loss(), "batch_size": getattr(loader, "batch_size", None),
        "steps_per_epoch": spe, "epochs_planned": spec.epochs, "steps_planned": planned,
        "precision": "bf16 autocast" if spec.amp else ("tf32" if tf32 else "fp32"),
        "channels_last": spec.channels_last, "allotted_s": round(allot_s, 2), "cuts": [], "epoch_loss": [],
        "epoch_train_acc": [], "status": "ok", "freeze_bn": bool(spec.freeze_bn)}
    if spec.log_quantizers:
        record["quantizers_per_epoch"] = []
    if spec.quant_opt or spec.quant_lr is not None:
        record.update(quant_opt=spec.quant_opt or spec.opt, quant_lr=spec.quant_lr)
    if spec.latency_weight:
        record.update(latency_weight=spec.latency_weight, latency_per_layer=spec.latency_per_layer,
                      latency_term_per_epoch=[])
    t0 = time.perf_counter()
    trainer = Trainer(model, loader, None, cfg, model_name=name)
    record["param_groups"] = [{"name": g.get("name", str(i)), "params": sum(p.numel() for p in g["params"]),
                               "lr": g.get("base_lr", g["lr"]), "weight_decay": g["weight_decay"]}
                              for i, g in enumerate(trainer.optimizer.param_groups)]
    quiet = contextlib.redirect_stdout(io.StringIO()) if getattr(ctx, "quiet", False) else contextlib.nullcontext()
    try:
        with quiet:
            trainer.fit()
    except NonFiniteError as exc:
        record["status"] = "diverged"
        record["cuts"].append({"at_step": trainer.step, "reason": f"non-finite training state: {exc}"[:300],
                               "steps_before": planned, "steps_after": trainer.step})
    except TrainingInterrupted as exc:
        import signal
        try:
            sig = signal.Signals(exc.signum).name
        except ValueError:
            sig = str(exc.signum)
        raise Interrupted(f"received signal {sig} during phase {name} (the Trainer stopped after its step)") from None
    finally:
        reg = trainer.regulariser
        if reg is not None:
            record["latency_layer_weights"] = reg.weights if reg.ready else None
            reg.close()
    for h in trainer.history:
        record["epoch_loss"].append(round(float(h["train_loss"]), 5))
        record["epoch_train_acc"].append(round(100.0 * float(h["train_acc"]), 3))
        if spec.log_quantizers and h.get("qac_layers"):
            record["quantizers_per_epoch"].append([{"layer": r["layer"], "T": r["T"], "t": round(r["t"], 4),
                                                    "alpha": round(r["alpha"], 4)} for r in h["qac_layers"]])
        if spec.latency_weight and h.get("latency_term") is not None:
            record["latency_term_per_epoch"].append(round(float(h["latency_term"]), 6))
    step = trainer.step
    if trainer.stop_reason == "time_budget" and step < planned:
        reason = ("hard deadline of the run reached" if hard_limited else
                  "time allotment of the phase reached (the Trainer's time_budget_s; the cosine followed the "
                  "elapsed time)")
        record["cuts"].append({"at_step": step, "reason": reason, "steps_before": planned, "steps_after": step,
                               "sec_per_step": round((time.perf_counter() - t0) / max(1, step), 5)})
    model.eval()
    if spec.channels_last:
        model.to(memory_format=torch.contiguous_format)
    record.update(steps_run=step, epochs_run=round(step / spe, 3), seconds=round(time.perf_counter() - t0, 2),
                  stop_reason=trainer.stop_reason)
    try:
        record["trainer_log"] = str((out / "log.jsonl").relative_to(ctx.out_dir))
    except ValueError:
        record["trainer_log"] = str(out / "log.jsonl")
    last = record["epoch_loss"][-1] if record["epoch_loss"] else "n/a"
    ctx.log(f"  [{name}] {record['epochs_run']:g}/{spec.epochs:g} epochs in {record['seconds']:.1f} s "
            f"(allotted {allot_s:.1f} s), last loss {last}" + (f", {len(record['cuts'])} cut(s)" if record["cuts"]
                                                             else ""))
    return record


def step_seconds(model: nn.Module, loader: Iterable, spec: TrainSpec, ctx: "Context", steps: int = 3) -> float:
    """Seconds per training step of ``model`` under ``spec``: :func:`multispike.train.measure_step_seconds` (the
    Trainer's own step on a copy; ``model`` and the loader's epoch are left as they were)."""
    loader = _limited(loader, ctx)
    cfg = phase_config(spec, model, name="probe", out=Path(getattr(ctx, "out_dir", ".")) / "train_logs" / "probe",
                       device=ctx.device, seed=0, steps_per_epoch=max(1, len(loader)), time_budget_s=1.0,
                       min_steps=0)
    return measure_step_seconds(model, loader, cfg, steps=steps)


def plan_equal_epochs(table: "TableRun", group: str, members: list[tuple[str, nn.Module, Any, TrainSpec]],
                      epochs: float, *, slack: float = 1.5, repeats: int = 1) -> tuple[float, dict[str, float]]:
    """Give every member of a compared group the same number of epochs within the group's allotment.

    ``members``: ``(name, model, loader, spec)``. Each member's speed is measured with :func:`step_seconds`; the
    common epoch count comes from :func:`multispike.train.equal_epoch_plan` (fractional epochs allowed, at least
    ``min_steps`` steps each). Returns it and a per-member allotment (its expected time × ``slack``), so the
    Trainer's time guard only cuts a member when its speed was badly mis-measured (recorded).
    ``repeats``: every member is trained that many times (e.g. once per seed) within the allotment.
    """
    ctx = table.ctx
    allot = table.planner.allot(group)
    t0 = time.perf_counter()
    if t0 > ctx.hard_deadline:  # out of time: no probing; train_phase will stop each member after its first step
        plan = {"allotted_s": round(allot, 2), "planned_epochs": epochs, "common_epochs": None, "cut": True,
                "reason": "hard deadline of the run reached before this group started"}
        table.extra.setdefault("equal_epoch_plans", {})[group] = plan
        return min(float(epochs), 1.0), {name: 0.0 for name, *_ in members}
    times = {name: (step_seconds(model, loader, spec, ctx), len(_limited(loader, ctx)))
             for name, model, loader, spec in members}
    min_steps = max(spec.min_steps for *_, spec in members)
    budget = max(0.0, allot - (time.perf_counter() - t0))
    p = equal_epoch_plan(times, epochs, budget, repeats=repeats, min_steps=min_steps, slack=slack)
    plan = {"allotted_s": round(allot, 2), **p.to_dict(), "probe_s": round(time.perf_counter() - t0, 2)}
    table.extra.setdefault("equal_epoch_plans", {})[group] = plan
    ctx.log(f"  plan {group}: {p.epochs:.3g} epochs each (planned {epochs:g}, group allotment {allot:.1f} s)")
    return p.epochs, p.allowance_s


def test_accuracy(model: nn.Module, loader: Iterable, ctx: "Context", *, prefix: bool = False) -> dict:
    """Top-1 accuracy (%) of the time-mean output, in exact fp32, by the package's one prefix evaluator
    (:func:`multispike.metrics.prefix.prefix_accuracy`); ``prefix=True`` also returns the accuracy of the
    cumulative mean after every step (only meaningful for causal networks). Leaves ``model`` in eval mode."""
    with exact_fp32(ctx.device):
        res = prefix_accuracy(model, loader, max_batches=ctx.profile.max_batches or None)
    model.eval()
    out = {"accuracy": 100.0 * res["acc"], "n": res["samples"]}
    if prefix:
        out["prefix"] = [100.0 * a for a in res["acc_per_t"]]
    return out


test_accuracy.__test__ = False   # not a pytest test (the name starts with "test")


def loaders(ctx: "Context", train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
            *, batch: int | None = None, seed: int = 0, augment: bool = True) -> tuple[TensorLoader, TensorLoader]:
    """CIFAR train loader (crop 4 + flip, drop_last) and test loader, with the data on the run's device."""
    p = ctx.profile
    train = TensorLoader(train_x, train_y, batch or p.batch_size, shuffle=True, drop_last=True, seed=seed,
                         augment=Augment(crop_padding=4, hflip=True) if augment else None, mean=CIFAR_MEAN,
                         std=CIFAR_STD, device=ctx.device)
    test = TensorLoader(test_x, test_y, p.eval_batch, shuffle=False, mean=CIFAR_MEAN, std=CIFAR_STD,
                        device=ctx.device)
    return train, test
