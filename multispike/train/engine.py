"""The training engine: ANN, quantization-aware, direct SNN (BPTT/STBP) and hybrid training.

Modes (``TrainConfig.mode``):

* ``ann`` - plain cross-entropy on ``model(x)`` (``[B, K]`` logits).
* ``qat`` - the same loop; every epoch the log records each quantizer's ``timesteps`` (T_l) and
  ``bit_width`` (any module with those attributes, e.g. QAC's quantizers) and their mean, and for QAC
  quantizers ``qac_layers`` (T_l, continuous t, α) plus the readable table ``<out>/timesteps.txt``. With
  ``latency_weight`` λ > 0 the loss is ``CE + λ·Σ_l w_l·t_l``
  (:class:`~multispike.quant.latency.LatencyRegulariser`; ``train_loss`` logs the CE alone, ``latency_term`` the
  penalty); (t, α) have their own optimizer settings (``quant_opt``, ``quant_lr``;
  :func:`multispike.train.optim.build_training_optimizer`).
* ``snn`` - BPTT/STBP on ``model.forward_sequence(x)`` (``[T, B, K]``): CE on the time mean (LM-HT's recipe,
  algorithms.md §2.5) or TET (§7.6).
* any mode with ``distill_from`` - knowledge distillation from a frozen teacher network (e.g. the float ANN of
  a quantized twin): ``loss = (1 − α)·task + α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ))``
  (:func:`~multispike.train.losses.distillation_loss`); ``train_loss`` still logs the task loss alone.
* ``hybrid`` - load an ANN checkpoint, rebuild that ANN from the config stored in it, turn it into an SNN with
  a caller-supplied hook ``convert(ann_model, config) -> snn_model`` (LM-HT §2.6, M-LIF §5.6), then train
  like ``snn``.

Every batch: forward, loss, backward, optional gradient clipping, one optimizer step with the
per-iteration lr, an optional EMA update of the weights, then ``multispike.reset_net(model)`` so no neuron
state leaks into the next batch (and before every evaluation batch). Evaluation reports the accuracy of the
cumulative-mean prediction ``argmax_k (1/t)·Σ_{τ≤t} O(τ)`` for every prefix t ≤ T
(:func:`multispike.metrics.prefix_correct`), on the EMA weights when ``ema_decay`` is set and with flip
test-time augmentation when ``tta_flip`` is set.

Speed features (the CPU speed recipe, ``configs/speedrun/``): ``amp: bf16`` autocasts on CPU as on CUDA,
``channels_last`` converts the model (the loader converts the batches), ``time_budget_s`` stops the run
cleanly at a wall-clock limit (the lr schedule follows the elapsed fraction of the budget when that is ahead
of the step count, ``budget_schedule``; ``budget_min_steps`` guarantees a few steps under a tiny budget),
``log_every_steps`` adds step records to ``log.jsonl``. ``max_steps`` trains a fractional number of epochs (the
cosine spans exactly those steps), ``tf32`` sets CUDA's TF32 for training while the final evaluation always runs
in exact float32 (:func:`multispike.train.precision.exact_fp32`), and ``save_checkpoints: false`` keeps only
``log.jsonl``/``summary.json`` for callers that hold the model in memory (the evidence suite, which plans many
short phases with :mod:`multispike.train.budget`).
With ``ema_decay`` the final checkpoint holds the averaged weights (its meta says ``"weights": "ema"``), so
``multispike convert``/``eval`` use the network that was evaluated; intermediate checkpoints hold the online
weights and the average lives beside them in ``checkpoints/ema.safetensors`` for ``--resume``.

Reproducibility: seeds ``seed + rank``; the data order is a function of ``(seed, epoch)`` (the loader's
``set_epoch``); checkpoints store the generator states of every rank, the step and the position inside the
epoch, so ``--resume`` after a kill reaches the same weights bit for bit as a run that was never
interrupted (same world size and thread count; checked by the tests).

Example (the whole job from a config is :func:`multispike.train.run_training`; the Trainer alone)::

    trainer = Trainer(model, train_loader, test_loader, resolve_config(overrides={"model": "vgg_small"}))
    summary = trainer.fit()                      # or trainer.fit(resume=load_checkpoint("runs/x"))
    summary["final_acc"], summary["final_acc_per_t"]

Size (over 450 lines): one :class:`Trainer`: step, epoch, evaluation, EMA, checkpoint save/resume and the
divergence/signal guards share its state; the parts that do not (losses, optimizers, guards, checkpoint I/O,
distributed) are already their own modules.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..metrics.prefix import prefix_correct, sequence_outputs
from ..neurons.base import reset_net
from .checkpoint import (Checkpoint, CheckpointError, atomic_write_text, capture_rng_state, load_model_state,
                         restore_rng_state, save_checkpoint)
from .config import ConfigError, TrainConfig, config_conflicts
from .guards import (NonFiniteError, RunLock, StopSignals, TrainingInterrupted, check_finite_state,
                     nonfinite_entries)
from .ema import ModelEMA
from .distributed import (DistInfo, all_gather_object, all_reduce_sum, barrier, init_distributed, seed_everything,
                          sync_bn_stats, unwrap_model, wrap_model)
from .losses import build_loss, distillation_loss
from .optim import LRSchedule, build_training_optimizer
from .precision import exact_fp32, set_tf32

__all__ = ["Trainer", "prefix_correct", "quantizer_report", "EXIT_AFTER_STEPS_ENV", "EMA_FILE"]

#: The EMA weights of the newest checkpoint, beside it (see the module docstring).
EMA_FILE = "ema.safetensors"

#: Test hook: when set to N, the process calls ``os._exit(75)`` right after optimizer step N (after any
#: checkpoint of that step) - an abrupt death without cleanup, like a SIGKILL, at a reproducible point.
EXIT_AFTER_STEPS_ENV = "MULTISPIKE_TEST_EXIT_AFTER_STEPS"


# ----------------------------------------------------------------------------------------------------
# Metrics helpers
# ----------------------------------------------------------------------------------------------------
def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().tolist()
    return value


def quantizer_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {"timesteps": T_l, "bit_width": b}}`` for every module exposing either attribute."""
    report = {}
    for name, module in unwrap_model(model).named_modules():
        entry = {}
        for attr in ("timesteps", "bit_width"):
            try:
                value = getattr(module, attr)
            except AttributeError:
                continue
            except Exception as exc:  # noqa: BLE001 - a property that cannot be evaluated yet: report it
                entry[attr] = f"unavailable ({type(exc).__name__}: {exc})"
                continue
            entry[attr] = _scalar(value)
        if entry and not isinstance(module, (nn.Sequential, nn.ModuleList)):
            report[name or "<root>"] = entry
    return report


def _mean_numeric(values: Iterable[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(nums) / len(nums) if nums else None


class _SequenceForward(nn.Module):
    """Calls ``model.forward_sequence`` from ``forward``, so DDP's hooks see the call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_sequence(x)


# ----------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------
class Trainer:
    """Runs the training loop of one process (rank) on a built model and loaders.

    Args:
        model: the network (time-major zoo model, or any module; ``forward_sequence`` is needed for the
            ``ce_mean``/``tet`` losses and enables per-prefix evaluation).
        train_loader: iterable of ``(x, y)`` batches with ``__len__`` and ``set_epoch(e)`` (e.g.
            :class:`multispike.data.TensorLoader`); the order must depend only on (seed, epoch, rank).
        eval_loader: evaluation batches (or None).
        config: the resolved :class:`TrainConfig`.
        dist: process placement (default: detect torchrun via :func:`init_distributed`).
        model_name: recorded in checkpoints (default ``config.model``).

    Attributes:
        step: optimizer steps completed.
        epoch: the epoch being (or next to be) trained, 0-based.
    """

    def __init__(self, model: nn.Module, train_loader: Any, eval_loader: Any, config: TrainConfig,
                 dist: DistInfo | None = None, model_name: str | None = None,
                 teacher: nn.Module | None = None) -> None:
        self.cfg = config
        self.dist = dist if dist is not None else init_distributed(config.device)
        self.model_name = model_name or config.model or type(model).__name__
        self.train_loader, self.eval_loader = train_loader, eval_loader
        self.loss_name = config.resolved_loss()
        self.sequence_loss = self.loss_name in ("ce_mean", "tet")
        if self.sequence_loss and not hasattr(model, "forward_sequence"):
            raise TypeError(f"loss {self.loss_name!r} needs per-step outputs, but {type(model).__name__} has no "
                            f"forward_sequence(x) -> [T, B, classes]; use loss 'ce' or a zoo model")
        self.per_step_eval = config.mode in ("snn", "hybrid") and hasattr(model, "forward_sequence")
        self.model = model.to(self.dist.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # training-memory options; the defaults leave a model's own settings alone
        if config.spike_storage != "float":
            from ..layers import set_spike_storage
            set_spike_storage(self.model, config.spike_storage)
        if config.recompute_bn:
            from ..layers import set_recompute_bn
            set_recompute_bn(self.model)
        inner = _SequenceForward(self.model) if self.sequence_loss else self.model
        self.net = wrap_model(inner, self.dist, sync_bn=config.sync_bn)
        if config.sync_bn:  # SyncBatchNorm conversion builds new modules: keep self.model pointing at them
            self.model = unwrap_model(self.net).model if self.sequence_loss else unwrap_model(self.net)
        self.loss_fn = build_loss(self.loss_name, config.label_smoothing, config.tet_lambda, config.tet_phi)
        # knowledge distillation: a frozen teacher (distill_from); never trained, never checkpointed with the run
        self.teacher = None
        if teacher is not None:
            self.teacher = teacher.to(self.dist.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        # QAC quantizers' (t, α) get their own group (and optimizer, with quant_opt): train/optim.py
        self.optimizer = build_training_optimizer(self.model, config)
        self.freeze_schedule = _freeze_schedule(self.model, config.freeze_after)
        # QAT's optional latency term λ·Σ w_l·t_l (multispike's addition to QAC; quant/qac.py)
        self.regulariser = None
        if config.latency_weight > 0:
            from ..quant.latency import LatencyRegulariser
            self.regulariser = LatencyRegulariser(self.model, config.latency_weight, config.latency_per_layer)
        # QAT: the T_l are fixed for the last timestep_freeze_fraction of the schedule (quant/latency.py)
        self.timestep_fix: dict | None = None
        if config.timestep_freeze_fraction:
            from ..quant.qac import QACQuantizer
            if not any(isinstance(m, QACQuantizer) for m in self.model.modules()):
                raise ConfigError(f"{{timestep_freeze_fraction}} fixes the T_l of QAC quantizers, but "
                                  f"{type(self.model).__name__} has none (QAT with prepare_qat / neuron qac makes them)",
                                  "timestep_freeze_fraction")
        self.steps_per_epoch = len(train_loader)
        self.schedule = LRSchedule(config.sched, config.lr, self.steps_per_epoch, config.epochs,
                                   warmup_epochs=self._warmup_epochs(config), warmup_lr=config.warmup_lr,
                                   milestones=tuple(config.milestones), decay_epochs=config.decay_epochs,
                                   decay_rate=config.decay_rate, min_lr=config.min_lr,
                                   max_steps=config.max_steps)
        cuda = self.dist.device.type == "cuda"
        if cuda and config.tf32 is not None:
            set_tf32(config.tf32)
        if config.amp == "fp16" and not cuda:
            if self.dist.is_primary:
                warnings.warn(f"amp='fp16' ignored: float16 autocast is only used on CUDA (device is "
                              f"{self.dist.device}); use amp='bf16' on CPU", stacklevel=2)
        # bf16 autocast works on CPU too (oneDNN; several times faster on CPUs with AVX512-BF16/AMX)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16 if cuda else None}.get(config.amp)
        # lookahead sets its own decay per update (ema_warmup does not apply)
        self.ema = ModelEMA(self.model, config.ema_decay, config.ema_warmup and config.ema_mode == "average") \
            if config.ema_decay else None
        self._elapsed_before = 0.0      # training seconds of earlier processes of this run (resume)
        self._t_fit: float | None = None
        self.stop_reason: str | None = None
        self._stopped_at_batch: int | None = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and config.amp == "fp16")
        self.step = 0
        self.epoch = 0
        self.best_acc: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict] = []
        self.out = Path(config.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.log_path = self.out / "log.jsonl"
        self._resume_batch = 0
        self._resume_rng: dict | None = None
        self._epoch_sums = torch.zeros(3, dtype=torch.float64)   # loss·n, correct, n (this rank, this epoch)
        self._signals: StopSignals | None = None   # set while fit() runs: SIGTERM/SIGINT -> checkpoint + stop
        self._synced_stop = 0                        # DDP: the stop request as all ranks saw it this step
        self._tensorboard = None
        if config.tensorboard and self.dist.is_primary:  # fails here, before any training, if tensorboard is absent
            from .tensorboard import TensorBoardLogger
            self._tensorboard = TensorBoardLogger(config.tensorboard)
        exit_after = os.environ.get(EXIT_AFTER_STEPS_ENV)
        self._exit_after = int(exit_after) if exit_after else None

    # -- bookkeeping -----------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)

    def elapsed(self) -> float:
        """Wall-clock seconds this run has spent in :meth:`fit` (over resumes)."""
        now = time.perf_counter() - self._t_fit if self._t_fit is not None else 0.0
        return self._elapsed_before + now

    def _schedule_step(self) -> float:
        """The step the lr schedule is evaluated at: with a time budget, ahead of ``step`` when time runs out."""
        budget = self.cfg.time_budget_s
        if budget is None or not self.cfg.budget_schedule:
            return self.step
        total = self.schedule.total_steps
        ahead = max(self.step, int(self.elapsed() / budget * total))
        floor = min(self.cfg.budget_min_steps, total)
        if floor:   # the steps budget_min_steps guarantees still get a whole schedule (never squeezed below them)
            ahead = min(ahead, max(self.step, self.step * total / floor))
        return ahead

    def _steps_done(self) -> bool:
        """Whether ``max_steps`` optimizer steps have run (the same on every rank)."""
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps

    def _stop_now(self) -> str | None:
        """The reason to stop before the planned end (``max_steps`` or ``time_budget``), else None."""
        if self._steps_done():
            return "max_steps"
        return "time_budget" if self._out_of_time() else None

    def _out_of_time(self) -> bool:
        budget = self.cfg.time_budget_s
        if budget is None or self.step < self.cfg.budget_min_steps:
            return False
        over = torch.tensor([1.0 if self.elapsed() >= budget else 0.0], dtype=torch.float64)
        if self.dist.world_size > 1:   # every rank must stop after the same step
            over = all_reduce_sum(over, self.dist)
        return bool(over.item() > 0)

    @property
    def eval_model(self) -> nn.Module:
        """The network evaluation uses: the EMA average when enabled, else the online model."""
        return self.ema.module if self.ema is not None else self.model

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to ``log.jsonl`` (rank 0 only)."""
        if not self.dist.is_primary:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tensorboard is not None:
            self._tensorboard.log_record(record)
            if record.get("event") == "summary":
                self._tensorboard.close()

    def _print(self, text: str) -> None:
        if self.dist.is_primary:
            from tqdm import tqdm
            tqdm.write(text, file=sys.stdout)

    def _warmup_epochs(self, config: TrainConfig) -> float:
        """``warmup_epochs``, or ``warmup_fraction`` of the schedule's steps (``max_steps`` caps the schedule)."""
        if config.warmup_fraction is None:
            return config.warmup_epochs
        total = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        return config.warmup_fraction * total / self.steps_per_epoch

    def lookahead_decay(self) -> float:
        """``ema_mode="lookahead"``: the decay of the next update, ``ema_decay·(s/S)³`` at schedule step ``s`` of
        ``S`` (airbench94: the slow weights barely lag early and pull hardest at the end)."""
        total = max(self.schedule.total_steps, 1)
        frac = min(self._schedule_step() / total, 1.0)
        return float(self.cfg.ema_decay) * frac ** 3

    # -- one step ----------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch; returns ``(loss, correct count)`` (detached, this rank).

        The lr of step ``self.step`` is set first; neurons are reset after the step.
        """
        x = x.to(self.dist.device, non_blocking=True)
        y = y.to(self.dist.device, non_blocking=True)
        if self.cfg.channels_last and x.dim() == 4:   # a no-op when the loader already converted the batch
            x = x.contiguous(memory_format=torch.channels_last)
        self._maybe_fix_timesteps(x)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.net(x)
        out = out.float()
        task_loss = self.loss_fn(out, y)
        loss = task_loss
        if self.teacher is not None:
            with torch.no_grad(), self._autocast():
                teacher_out = self.teacher(x)
            alpha = float(self.cfg.distill_weight)
            kd = distillation_loss(out, teacher_out.float(), self.cfg.distill_temperature)
            loss = (1.0 - alpha) * task_loss + alpha * kd if alpha < 1.0 else kd
            reset_net(self.teacher)
        if self.regulariser is not None:
            loss = loss + self.regulariser()
        if not self._loss_finite(loss):
            what = loss.item() if not torch.isfinite(loss) else "on another rank"
            raise NonFiniteError(f"training diverged: non-finite loss {what} at step {self.step} (epoch "
                                 f"{self.epoch + 1}); nothing was checkpointed from this state. Lower {{lr}}, enable "
                                 f"{{clip_grad}}, or check the data; then {{resume}} from the last good checkpoint",
                                 "lr", "clip_grad", "resume")
        self.scaler.scale(loss).backward()
        for params, epochs in self.freeze_schedule:
            if self.epoch >= epochs:   # no gradient: SGD/Adam skip the tensor (no momentum, no weight decay)
                for p in params:
                    p.grad = None
        if self.cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.schedule.apply(self.optimizer, self._schedule_step())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        reset_net(self.model)
        self.step += 1
        if self.ema is not None and self.step % self.cfg.ema_every == 0:
            if self.cfg.ema_mode == "lookahead":
                self.ema.update(self.model, decay=self.lookahead_decay())
                self.ema.copy_to(self.model)
            else:
                self.ema.update(self.model)
        logits = out.mean(0) if out.dim() == 3 else out
        return task_loss.detach(), (logits.argmax(-1) == y).sum()

    def _timesteps_fixed(self) -> bool:
        from ..quant.qac import QACQuantizer
        return any(m.is_fixed for m in self.model.modules() if isinstance(m, QACQuantizer))

    def _maybe_fix_timesteps(self, x: torch.Tensor) -> None:
        """QAT with ``timestep_freeze_fraction`` f: once the schedule passes 1 − f, fix every QAC layer's T_l
        (rounded, lowered to ``timestep_budget``) in the model and its EMA, log it, and train on."""
        frac = self.cfg.timestep_freeze_fraction
        if not frac or self.timestep_fix is not None:
            return
        # floor: a short run still trains its last step(s) with the fixed T_l
        due = self._schedule_step() >= math.floor((1.0 - frac) * max(self.schedule.total_steps, 1))
        if self.dist.world_size > 1:   # the time-based schedule differs per rank: fix on every rank at once
            due = bool(all_reduce_sum([float(due)], self.dist)[0] > 0)
        if not due:
            return
        from ..quant.latency import fix_timesteps, quantizer_macs
        weights = None
        if self.cfg.latency_per_layer == "macs":
            if self.regulariser is not None:
                weights = self.regulariser.weights
            else:
                macs = quantizer_macs(self.model, x[:2].to(self.dist.device))
                total = sum(macs.values()) or 1.0
                weights = {n: v / total for n, v in macs.items()}
        record = fix_timesteps(self.model, self.cfg.timestep_budget, weights)
        if self.ema is not None:
            from ..quant.qac import QACQuantizer
            for name, m in self.ema.module.named_modules():
                if isinstance(m, QACQuantizer):
                    m.fix_timesteps(record["layers"][name]["T"])
        record.update(event="timesteps_fixed", step=self.step, epoch=self.epoch + 1,
                      weighting=self.cfg.latency_per_layer)
        self.timestep_fix = record
        self.log(record)
        budget = f" (budget {record['budget']:g}; lowered {', '.join(record['lowered']) or 'none'})" \
            if record["budget"] is not None else ""
        self._print(f"step {self.step}: T_l fixed at " + " ".join(str(v["T"]) for v in record["layers"].values())
                    + f", mean {record['mean_T']:.3g} (rounded t: {record['mean_T_rounded']:.3g}){budget}")

    # -- epochs ------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        """Train one epoch (from ``self._resume_batch`` when resuming mid-epoch); returns its metrics."""
        from tqdm import tqdm

        self.epoch = epoch
        self.model.train()
        if self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        start = self._resume_batch
        it = iter(self.train_loader)
        # Skipping by iterating replays the loader's own generators exactly; the global RNG is restored
        # afterwards, at the point where the checkpoint captured it.
        for _ in range(start):
            next(it)
        if self._resume_rng is not None:
            restore_rng_state(self._resume_rng)
            self._resume_rng = None
        self._resume_batch = 0
        bar = tqdm(total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                   disable=not (self.cfg.progress and self.dist.is_primary), dynamic_ncols=True, leave=False)
        t0, seen = time.perf_counter(), 0
        for batch_idx, (x, y) in enumerate(it, start=start):
            loss, correct = self.train_step(x, y)
            n = y.shape[0]
            seen += n
            self._epoch_sums += torch.tensor([loss.item() * n, correct.item(), n], dtype=torch.float64)
            ips = seen * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.3g}",
                            img_s=f"{ips:.1f}")
            last_in_epoch = batch_idx + 1 == self.steps_per_epoch
            every = self.cfg.checkpoint_every_steps
            if every and self.step % every == 0 and not last_in_epoch:
                self.save(epoch=epoch, next_batch=batch_idx + 1)
            if self._exit_after is not None and self.step >= self._exit_after:
                bar.close()
                os._exit(75)
            signum = self._stop_requested(synced=True)
            if signum:
                bar.close()
                path = self.save(epoch=epoch, next_batch=batch_idx + 1)
                raise TrainingInterrupted(signum, self.out, path)
            every_log = self.cfg.log_every_steps
            if every_log and self.step % every_log == 0:
                self.log({"event": "step", "epoch": epoch + 1, "step": self.step, "loss": loss.item(),
                          "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": ips,
                          "elapsed_s": round(self.elapsed(), 3)})
            if not last_in_epoch:
                reason = self._stop_now()
                if reason is not None:
                    self.stop_reason = reason
                    self._stopped_at_batch = batch_idx + 1
                    break
        bar.close()
        elapsed = time.perf_counter() - t0
        sums = all_reduce_sum(self._epoch_sums, self.dist)
        self._epoch_sums.zero_()
        n = max(sums[2].item(), 1.0)
        return {"train_loss": sums[0].item() / n, "train_acc": sums[1].item() / n, "train_samples": int(sums[2]),
                "train_time_s": elapsed, "images_per_s": seen * self.dist.world_size / max(elapsed, 1e-9)}

    @torch.no_grad()
    def evaluate(self, loader: Any = None, full_precision: bool = False) -> dict:
        """Accuracy of the time-mean prediction, accuracy at every prefix t ≤ T, and the CE of the time mean.

        Under DDP each rank evaluates its shard and the counts are summed. ``full_precision`` skips the AMP
        autocast and, on CUDA, TF32 (the final evaluation of :meth:`fit` uses it, so reported accuracies are
        exact float32 numbers).
        """
        with (exact_fp32(self.dist.device) if full_precision else contextlib.nullcontext()):
            return self._evaluate(loader, full_precision)

    def _evaluate(self, loader: Any, full_precision: bool) -> dict:
        import torch.nn.functional as F
        from tqdm import tqdm

        loader = self.eval_loader if loader is None else loader
        if loader is None:
            return {}
        model = self.eval_model
        was_training = model.training
        model.eval()
        correct: torch.Tensor | None = None
        loss_sum, count = 0.0, 0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc="eval", disable=not (self.cfg.progress and self.dist.is_primary),
                   dynamic_ncols=True, leave=False)
        for x, y in bar:
            x = x.to(self.dist.device, non_blocking=True)
            y = y.to(self.dist.device, non_blocking=True)
            if self.cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with (contextlib.nullcontext() if full_precision else self._autocast()):
                out = sequence_outputs(model, x, tta_flip=self.cfg.tta_flip, tta_translate=self.cfg.tta_translate,
                                       per_step=self.per_step_eval)
            c = prefix_correct(out, y).cpu().double()
            correct = c if correct is None else correct + c
            loss_sum += F.cross_entropy(out.mean(0), y, reduction="sum").item()
            count += y.shape[0]
        reset_net(model)
        model.train(was_training)
        if correct is None:
            correct = torch.zeros(1, dtype=torch.float64)
        # All ranks must agree on T for the reduction; it is a property of the model, so they do.
        totals = all_reduce_sum(torch.cat([correct, torch.tensor([loss_sum, count], dtype=torch.float64)]),
                                self.dist)
        n = max(totals[-1].item(), 1.0)
        per_t = (totals[:-2] / n).tolist()
        return {"eval_acc": per_t[-1], "eval_acc_per_t": per_t, "eval_loss": totals[-2].item() / n,
                "eval_samples": int(totals[-1]), "eval_time_s": time.perf_counter() - t0,
                "eval_weights": "ema" if self.ema is not None else "online", "eval_tta_flip": self.cfg.tta_flip,
                "eval_tta_translate": self.cfg.tta_translate,
                "eval_precision": "float32" if full_precision or self.amp_dtype is None else str(self.amp_dtype)}

    # -- checkpoints -------------------------------------------------------------------------------------
    def _meta(self, epoch: int, next_batch: int) -> dict:
        rng = all_gather_object(capture_rng_state(), self.dist)
        # Partial epoch metrics, summed over ranks; only rank 0 restores them on resume.
        sums = all_reduce_sum(self._epoch_sums, self.dist).tolist()
        return {
            "model": self.model_name,
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
            "rng": rng,
            "next_epoch": epoch,
            "next_batch": next_batch,
            "epoch_sums": sums,
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "torch_version": torch.__version__,
            "elapsed_s": self.elapsed(),
            "stop_reason": self.stop_reason,
            "ema_updates": self.ema.updates if self.ema is not None else None,
        }

    def save(self, epoch: int, next_batch: int = 0, best: bool = False, final_ema: bool = False) -> Path | None:
        """Checkpoint (collective: every rank must call it; rank 0 writes). Returns the JSON path (rank 0).

        Refuses (:class:`~multispike.train.guards.NonFiniteError`) to write a model with NaN/Inf parameters or
        buffers, so a diverged state is never checkpointed, never ``best`` and never resumed from.

        Args:
            epoch: the epoch to continue with (``next_batch == 0``: the epoch after the completed one).
            next_batch: batches of ``epoch`` already done (mid-epoch checkpoint).
            final_ema: the model holds the EMA weights (end of training): mark the checkpoint so.
        """
        self._check_finite(f"at step {self.step} (epoch {epoch + (1 if next_batch else 0)})")
        if not self.cfg.save_checkpoints:   # the caller keeps the model in memory (config save_checkpoints)
            return None
        meta = self._meta(epoch, next_batch)
        path = None
        if final_ema:
            meta["weights"] = "ema"
        if self.dist.is_primary:
            completed = epoch if next_batch == 0 else epoch + next_batch / self.steps_per_epoch
            meta["epochs_completed"] = completed
            if self.ema is not None and not final_ema:
                from safetensors.torch import save as st_save

                from .checkpoint import atomic_write_bytes

                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.ema.state_dict().items()}
                atomic_write_bytes(self.ckpt_dir / EMA_FILE, st_save(tensors, metadata={"step": str(self.step)}))
                meta["ema_file"] = EMA_FILE
            path = save_checkpoint(self.ckpt_dir, self.model, self.optimizer, meta, epoch=epoch, step=self.step,
                                   keep=self.cfg.keep_checkpoints, best=best)
        barrier(self.dist)
        return path

    def _check_finite(self, where: str) -> None:
        """Stop with :class:`NonFiniteError` if a parameter or buffer is NaN/Inf on any rank (collective)."""
        bad = nonfinite_entries(list(self.model.named_parameters()) + list(self.model.named_buffers()))
        if self.dist.world_size > 1:   # every rank must raise together, or the others hang in the next collective
            if not int(all_reduce_sum([float(bool(bad))], self.dist)[0]):
                return
        elif not bad:
            return
        last = self.ckpt_dir / "last.json"
        resume = (f"the last good checkpoint is {last} ({{resume}})" if last.exists() else
                  "no checkpoint was written yet")
        raise NonFiniteError(f"training diverged {where}: non-finite values in "
                             f"{', '.join(bad) if bad else 'the model on another rank'}. Nothing was checkpointed "
                             f"from this state; {resume}. Lower {{lr}}, enable {{clip_grad}}, freeze BatchNorm "
                             f"({{freeze_bn}}) or check the data.", "lr", "clip_grad", "freeze_bn", "resume")

    def _loss_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank. Under DDP one collective per step also shares the stop
        request, so all ranks raise (or stop) at the same step instead of leaving the others in a collective."""
        finite = bool(torch.isfinite(loss))
        if self.dist.world_size > 1:
            signum = self._signals.requested if self._signals is not None else None
            flags = all_reduce_sum([float(not finite), float(signum or 0)], self.dist)
            finite = not bool(flags[0])
            self._synced_stop = int(signum or 15) if flags[1] else 0
        return finite

    def _stop_requested(self, synced: bool = False) -> int:
        """The signal number if SIGTERM/SIGINT asked this run to stop, else 0.

        Under DDP every rank must agree: ``synced=True`` uses the flag shared in this step's
        :meth:`_loss_finite`; otherwise one collective shares it now.
        """
        signum = self._signals.requested if self._signals is not None else None
        if self.dist.world_size > 1:
            if synced:
                return self._synced_stop
            return int(signum or 15) if all_reduce_sum([float(signum or 0)], self.dist)[0] else 0
        return int(signum or 0)

    def load(self, ckpt: Checkpoint) -> None:
        """Restore model, optimizer, scaler, step, epoch position and (same world size) RNG states."""
        meta = ckpt.meta
        saved_model = meta.get("model")
        if saved_model is not None and saved_model != self.model_name:
            raise CheckpointError(f"checkpoint {ckpt.path} is for model {saved_model!r}, but this run builds "
                                  f"{self.model_name!r}; use {{model}} {saved_model} or another checkpoint",
                                  "model")
        conflicts = config_conflicts(meta.get("config", {}), self.cfg)
        if conflicts:
            raise CheckpointError(f"cannot resume from {ckpt.path}: the config conflicts with the checkpoint's in "
                                  f"{len(conflicts)} key(s): " + "; ".join(conflicts) +
                                  ". Use the original values (see config.json of that run) or start a new {out}.",
                                  "out")
        check_finite_state(ckpt.model_state, f"checkpoint {ckpt.path}")
        load_model_state(self.model, ckpt.model_state, source=f"checkpoint {ckpt.path}")
        self._elapsed_before = float(meta.get("elapsed_s") or 0.0)
        if self.ema is not None:
            if meta.get("weights") == "ema":   # the final checkpoint of a finished run: its weights are the EMA
                self.ema.load_state_dict(ckpt.model_state, int(meta.get("ema_updates") or 0))
            elif meta.get("ema_file"):
                from safetensors import safe_open

                ema_path = ckpt.path.parent / meta["ema_file"] if ckpt.path.is_file() else \
                    Path(ckpt.path) / meta["ema_file"]
                if not ema_path.is_file():
                    raise CheckpointError(f"checkpoint {ckpt.path} needs its EMA weights {ema_path}, which is missing")
                with safe_open(str(ema_path), "pt") as f:
                    saved_step = int((f.metadata() or {}).get("step", -1))
                    state = {k: f.get_tensor(k) for k in f.keys()}
                if saved_step != int(meta["step"]):
                    raise CheckpointError(f"{ema_path} holds the EMA of step {saved_step}, the checkpoint is of step "
                                          f"{meta['step']}: only the newest checkpoint of an EMA run can be resumed")
                self.ema.load_state_dict(state, int(meta.get("ema_updates") or 0))
            else:
                warnings.warn(f"checkpoint {ckpt.path} has no EMA state; the average restarts from its weights",
                              stacklevel=2)
                self.ema = ModelEMA(self.model, self.cfg.ema_decay,
                                    self.cfg.ema_warmup and self.cfg.ema_mode == "average")
        if ckpt.optimizer_state is None:
            raise CheckpointError(f"checkpoint {ckpt.path} holds no optimizer state (weights only); it can "
                                  f"initialise a model but not resume a run")
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        saved_groups = ckpt.optimizer_state["param_groups"]
        if len(saved_groups) != len(fresh) or any(len(a["params"]) != len(b["params"]) for a, b in
                                                  zip(saved_groups, self.optimizer.param_groups)):
            raise CheckpointError(f"checkpoint {ckpt.path}: optimizer parameter groups do not match this run "
                                  f"(different neuron_param_patterns or decay_norm_and_bias?)")
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        for group, hyper in zip(self.optimizer.param_groups, fresh):
            group.update(hyper)   # the current config's hyper-parameters win; buffers come from the file
        if meta.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])
        self.epoch = int(meta["next_epoch"])
        self._resume_batch = int(meta.get("next_batch", 0))
        if self._resume_batch and int(meta.get("world_size", 1)) == self.dist.world_size and \
                meta["scheduler"].get("steps_per_epoch") != self.steps_per_epoch:
            raise CheckpointError(f"checkpoint {ckpt.path} was taken mid-epoch with {meta['scheduler']['steps_per_epoch']}"
                                  f" steps per epoch, this run has {self.steps_per_epoch}; the data differ")
        self.best_acc, self.best_epoch = meta.get("best_acc"), meta.get("best_epoch")
        if self.dist.is_primary and meta.get("epoch_sums") is not None:
            self._epoch_sums = torch.tensor(meta["epoch_sums"], dtype=torch.float64)
        rng = meta.get("rng") or []
        if len(rng) == self.dist.world_size:
            self._resume_rng = rng[self.dist.rank]
        else:
            warnings.warn(f"checkpoint was written by {len(rng)} process(es), this run has {self.dist.world_size}: "
                          f"random streams are re-seeded, so the run continues correctly but not bit-identically",
                          stacklevel=2)
            seed_everything(self.cfg.seed + 1000 * self.step, self.dist.rank)
            if self._resume_batch:
                warnings.warn("mid-epoch resume with another world size: the rest of this epoch uses the new "
                              "sharding from the checkpointed batch index on", stacklevel=2)

    # -- the loop ----------------------------------------------------------------------------------------
    def _prepare_log_for_resume(self) -> None:
        """Drop log lines of epochs that will be re-run (written after the checkpoint we resume from)."""
        if not self.dist.is_primary or not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if rec.get("event") == "epoch" and rec.get("epoch", 0) < self.epoch + 1:
                kept.append(line)
            elif rec.get("event") == "timesteps_fixed" and rec.get("step", 0) <= self.step:
                kept.append(line)   # the fix the checkpoint's fixed_T buffers hold: its record stays with the run
                self.timestep_fix = rec
        atomic_write_text(self.log_path, "".join(k + "\n" for k in kept))
        self.history = [r for r in map(json.loads, kept) if r.get("event") == "epoch"]

    def fit(self, resume: Checkpoint | None = None) -> dict:
        """Train ``config.epochs`` epochs (continuing from ``resume``); returns the summary record.

        Rank 0 holds the run folder's :class:`~multispike.train.guards.RunLock` meanwhile. SIGTERM/SIGINT
        write a resumable checkpoint after the current step and raise
        :class:`~multispike.train.guards.TrainingInterrupted`; NaN/Inf in the loss, a parameter or a buffer
        raises :class:`~multispike.train.guards.NonFiniteError` without checkpointing that state.
        """
        lock = RunLock(self.out) if self.dist.is_primary else contextlib.nullcontext()
        with lock, StopSignals(announce=self.dist.is_primary) as signals:
            self._signals = signals
            try:
                return self._fit(resume)
            finally:
                self._signals = None

    def _fit(self, resume: Checkpoint | None) -> dict:
        cfg = self.cfg
        if resume is not None:
            self.load(resume)
            self._prepare_log_for_resume()
            self._print(f"resumed from {resume.path} at epoch {self.epoch + 1}, batch {self._resume_batch}, "
                        f"step {self.step}")
        if cfg.timestep_freeze_fraction and self.timestep_fix is None and self._timesteps_fixed():
            self.timestep_fix = {"resumed": True}   # fixed already (checkpoint buffers), its log record not found
        t_start = time.perf_counter()
        self._t_fit = t_start
        final_eval: dict = {}
        if self.stop_reason is None and self.epoch < cfg.epochs:
            self.stop_reason = self._stop_now()   # resumed a run whose budget is spent: only evaluate
        for epoch in range(self.epoch, cfg.epochs):
            if self.stop_reason is not None:
                break
            self._stopped_at_batch = None
            record: dict[str, Any] = {"event": "epoch", "epoch": epoch + 1, "epochs": cfg.epochs}
            record.update(self.train_epoch(epoch))
            sync_bn_stats(self.model, self.dist, cfg.dist_bn)
            self._check_finite(f"in epoch {epoch + 1} (step {self.step})")
            if self.ema is not None:
                sync_bn_stats(self.ema.module, self.dist, cfg.dist_bn)
            record.update(step=self.step, lr=self.optimizer.param_groups[0]["lr"],
                          lr_groups={g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)},
                          elapsed_s=round(self.elapsed(), 3))
            if self.stop_reason is None and epoch + 1 < cfg.epochs:
                self.stop_reason = self._stop_now()
            if self.stop_reason is not None:
                record["stop_reason"] = self.stop_reason
            is_last = epoch + 1 == cfg.epochs or self.stop_reason is not None
            best = False
            if self.eval_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or is_last):
                final_eval = self.evaluate(full_precision=is_last)
                record.update(final_eval)
                if self.best_acc is None or final_eval["eval_acc"] > self.best_acc:
                    self.best_acc, self.best_epoch, best = final_eval["eval_acc"], epoch + 1, True
            quant = quantizer_report(self.model)
            if quant:  # QAT: per-layer T_l and bit widths, and their mean (QAC's "T (avg)")
                record["quantizers"] = quant
                record["mean_timesteps"] = _mean_numeric(q.get("timesteps") for q in quant.values())
                record["mean_bit_width"] = _mean_numeric(q.get("bit_width") for q in quant.values())
                self._record_qac(record)
            self.log(record)
            self.history.append(record)
            self._print(self._epoch_line(record))
            stopped_mid = self._stopped_at_batch is not None
            next_epoch, next_batch = (epoch, self._stopped_at_batch) if stopped_mid else (epoch + 1, 0)
            if self.ema is not None and is_last:
                # the deployable result is the average: the final checkpoint holds it (meta weights="ema")
                self.model.load_state_dict(self.ema.state_dict())
                path = self.save(epoch=next_epoch, next_batch=next_batch, best=best, final_ema=True)
            else:
                path = self.save(epoch=next_epoch, next_batch=next_batch, best=best)
            self.epoch = next_epoch
            signum = self._stop_requested()
            if signum and not is_last:
                raise TrainingInterrupted(signum, self.out, path)
        if not final_eval:   # nothing evaluated in this process (e.g. resumed a finished run)
            if self.history and "eval_acc" in self.history[-1]:
                final_eval = self.history[-1]
            elif self.eval_loader is not None:
                final_eval = self.evaluate()
        summary = self._summary(final_eval, time.perf_counter() - t_start)
        self.log(summary)
        if self.dist.is_primary:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return summary

    def _record_qac(self, record: dict) -> None:
        """QAT: each QAC layer's T_l, continuous t and α (``qac_layers``), the latency term, and the readable
        per-epoch table ``<out>/timesteps.txt`` (rank 0)."""
        from ..quant.qac import quantizer_summary
        from ..quant.latency import format_timestep_table

        rows = [{"layer": r["layer"], "T": r["T"], "t": r["t"], "alpha": r["alpha"]}
                for r in quantizer_summary(self.model) if "t" in r]
        if not rows:
            return
        record["qac_layers"] = rows
        if self.regulariser is not None:
            with torch.no_grad():
                record["latency_term"] = float(self.regulariser())
            record["latency"] = self.regulariser.describe()
        if self.dist.is_primary:
            epochs = [{"epoch": r["epoch"], "layers": r["qac_layers"]} for r in [*self.history, record]
                      if r.get("qac_layers")]
            text = ("per-layer T_l (continuous t) at the end of each epoch; alpha = clip = SNN threshold\n"
                    + format_timestep_table(epochs) + "\n")
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "timesteps.txt", text)

    def _epoch_line(self, r: Mapping[str, Any]) -> str:
        text = (f"epoch {r['epoch']}/{r['epochs']}  loss {r['train_loss']:.4f}  train acc {100 * r['train_acc']:.2f}%"
                f"  lr {r['lr']:.3g}  {r['images_per_s']:.1f} img/s")
        if "eval_acc" in r:
            per_t = " ".join(f"{100 * a:.2f}" for a in r["eval_acc_per_t"])
            text += f"  eval acc {100 * r['eval_acc']:.2f}%"
            if len(r["eval_acc_per_t"]) > 1:
                text += f"  (t=1..{len(r['eval_acc_per_t'])}: {per_t})"
        if r.get("mean_timesteps") is not None:
            text += f"  mean T_l {r['mean_timesteps']:.3g}"
        return text

    def _summary(self, final_eval: Mapping[str, Any], elapsed: float) -> dict:
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "event": "summary", "model": self.model_name, "mode": self.cfg.mode, "loss": self.loss_name,
            "dataset": self.cfg.dataset, "timesteps": getattr(self.model, "T", self.cfg.timesteps), "epochs": self.cfg.epochs,
            "steps": self.step, "params": n_params, "world_size": self.dist.world_size,
            "device": str(self.dist.device), "torch_version": torch.__version__,
            "final_acc": final_eval.get("eval_acc"), "final_acc_per_t": final_eval.get("eval_acc_per_t"),
            "best_acc": self.best_acc, "best_epoch": self.best_epoch, "time_s": elapsed,
            "final_train_loss": self.history[-1]["train_loss"] if self.history else None,
            "elapsed_s": self.elapsed(), "time_budget_s": self.cfg.time_budget_s, "stop_reason": self.stop_reason,
            "epochs_completed": self.epoch if not getattr(self, "_stopped_at_batch", None) else
            self.epoch + self._stopped_at_batch / self.steps_per_epoch,
            "weights": "ema" if self.ema is not None else "online", "tta_flip": self.cfg.tta_flip,
            "tta_translate": self.cfg.tta_translate,
            "amp": self.cfg.amp if self.amp_dtype is not None else "none",
            **({"timestep_fix": self.timestep_fix} if self.timestep_fix is not None else {}),
        }


def _freeze_schedule(model: nn.Module, freeze_after: Mapping[str, int]) -> list[tuple[list[nn.Parameter], int]]:
    """``freeze_after`` resolved to ``(parameters, epochs)`` pairs: the trainable parameters whose name matches each
    fnmatch pattern (the full dotted name, or the last component for a pattern without a dot). Freezing drops their
    gradients after backward rather than setting ``requires_grad``, so a DDP reducer's bucket layout never changes."""
    from fnmatch import fnmatchcase

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = []
    for pattern, epochs in freeze_after.items():
        params = [p for n, p in named if fnmatchcase(n if "." in pattern else n.rsplit(".", 1)[-1], pattern)]
        if not params:
            raise ConfigError(f"{{freeze_after}} {pattern!r} matches no trainable parameter of {type(model).__name__}"
                              f" (names such as {', '.join(n for n, _ in named[:4])})", "freeze_after")
        out.append((params, int(epochs)))
    return out
