"""Planning training under a wall-clock budget: per-phase seeds, measured step times and equal-epoch plans.

A study that compares several networks "with equal epochs" inside a fixed time (the evidence suite in
``benchmarks/evidence``) needs three things the :class:`~multispike.train.Trainer` alone does not decide:

* :func:`phase_seed` - a seed per named phase, so a phase draws the same numbers whatever ran before it;
* :func:`measure_step_seconds` - the seconds one optimizer step of a network takes, measured with the Trainer's
  own :meth:`~multispike.train.Trainer.train_step` on a copy (the network and the loader are left untouched);
* :func:`equal_epoch_plan` - the one (fractional) epoch count every member of a compared group gets so that the
  whole group fits its time, and a time allowance per member.

Each member is then trained by the Trainer with ``max_steps = round(epochs * steps_per_epoch)`` (the cosine
spans exactly those steps) and ``time_budget_s`` = its allowance as a guard against a mis-measured speed.

Example::

    sec = {name: (measure_step_seconds(m, loader, cfg), len(loader)) for name, m in members.items()}
    plan = equal_epoch_plan(sec, epochs=3, seconds=120)
    plan.epochs, plan.allowance_s["lmht"]
"""
from __future__ import annotations

import copy
import dataclasses
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from torch import nn

from .precision import synchronize

__all__ = ["phase_seed", "measure_step_seconds", "EqualEpochPlan", "equal_epoch_plan"]


def phase_seed(base: int, name: str) -> int:
    """A seed for the phase called ``name``: ``base * 1_000_003 + crc32(name) mod 1_000_003``.

    Deterministic and independent of what ran before, so a phase draws the same numbers whether it runs alone
    or after others (e.g. one evidence table alone or all of them in one process)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"phase_seed: the phase name must be a non-empty string, got {name!r}")
    return int(base) * 1_000_003 + zlib.crc32(name.encode()) % 1_000_003


def measure_step_seconds(model: nn.Module, loader: Iterable, config: Any, steps: int = 3) -> float:
    """Seconds per optimizer step of ``model`` trained with ``config`` (a :class:`~multispike.train.TrainConfig`).

    Runs :meth:`Trainer.train_step <multispike.train.Trainer.train_step>` on a deep copy of the model: one untimed
    warm-up step (one-off costs such as cuDNN autotuning), then ``steps`` timed ones, passing over ``loader``
    several times if it has fewer batches. ``model`` is left unchanged and a loader with ``epoch``/``set_epoch``
    gets its epoch back, so the measurement does not shift the data order of the real run.

    Raises:
        ValueError: ``steps < 1`` or the loader yields no batch.
    """
    from .engine import Trainer

    if steps < 1:
        raise ValueError(f"measure_step_seconds: steps must be >= 1, got {steps}")
    if hasattr(loader, "__len__") and len(loader) == 0:
        raise ValueError("measure_step_seconds: the loader yielded no batch")
    cfg = dataclasses.replace(config, save_checkpoints=False, progress=False, tensorboard=None, ema_decay=None,
                              time_budget_s=None, max_steps=None)
    probe = copy.deepcopy(model)
    epoch = getattr(loader, "epoch", None)
    trainer = Trainer(probe, loader, None, cfg, model_name="step-time probe")
    trainer.model.train()
    t = None
    done = b = 0
    try:
        while done < steps:
            before = b
            for x, y in loader:
                trainer.train_step(x, y)
                if b == 0:
                    synchronize(trainer.dist.device)
                    t = time.perf_counter()
                else:
                    done += 1
                b += 1
                if done >= steps:
                    break
            if b == before:
                raise ValueError("measure_step_seconds: the loader yielded no batch")
        synchronize(trainer.dist.device)
        return (time.perf_counter() - t) / done
    finally:
        if trainer.regulariser is not None and hasattr(trainer.regulariser, "close"):
            trainer.regulariser.close()
        if epoch is not None and hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        del trainer, probe


@dataclass
class EqualEpochPlan:
    """The result of :func:`equal_epoch_plan` (JSON-ready with :meth:`to_dict`)."""

    epochs: float                       # the common (fractional) epoch count
    planned_epochs: float               # what was asked for
    seconds: float                      # the group's time
    repeats: int
    allowance_s: dict[str, float]       # per member: expected time x slack + 2 s (a guard, not a target)
    members: dict[str, dict]            # per member: sec_per_step, steps_per_epoch

    @property
    def cut(self) -> bool:
        """Whether the time made the plan shorter than asked."""
        return self.epochs < self.planned_epochs

    def to_dict(self) -> dict:
        return {"planned_epochs": self.planned_epochs, "common_epochs": round(self.epochs, 4),
                "repeats": self.repeats, "cut": self.cut,
                "members": {k: {"sec_per_step": round(v["sec_per_step"], 5), "steps_per_epoch": v["steps_per_epoch"]}
                            for k, v in self.members.items()}}


def equal_epoch_plan(step_times: Mapping[str, tuple[float, int]], epochs: float, seconds: float, *,
                     repeats: int = 1, min_steps: int = 10, slack: float = 1.5) -> EqualEpochPlan:
    """One epoch count for every member of a compared group, so that all of them fit in ``seconds``.

    Args:
        step_times: ``{member: (seconds per step, steps per epoch)}``.
        epochs: the planned (maximum) epochs.
        seconds: the group's time.
        repeats: each member is trained that many times (e.g. once per seed) within ``seconds``.
        min_steps: every member gets at least ``min(min_steps, steps per epoch)`` steps, budget or not.
        slack: a member's allowance is its expected time times ``slack`` (plus 2 s), so the Trainer's time guard
            only cuts a member whose speed was badly mis-measured.

    Returns:
        ``common = min(epochs, seconds / (repeats · Σ_m sec_m · spe_m))``, raised to the ``min_steps`` floor.
    """
    if not step_times:
        raise ValueError("equal_epoch_plan: no members")
    if epochs <= 0 or repeats < 1:
        raise ValueError(f"equal_epoch_plan: need epochs > 0 and repeats >= 1, got {epochs} and {repeats}")
    for name, (sec, spe) in step_times.items():
        if not (sec > 0 and spe >= 1):
            raise ValueError(f"equal_epoch_plan: member {name!r} needs seconds per step > 0 and steps per epoch "
                             f">= 1, got {sec} and {spe}")
    per_epoch = sum(sec * spe for sec, spe in step_times.values())
    common = min(float(epochs), max(0.0, seconds) / max(per_epoch * repeats, 1e-9))
    floor = max(min(min_steps, spe) / spe for _, spe in step_times.values())
    common = max(common, min(float(epochs), floor))
    allow = {name: common * spe * sec * slack + 2.0 for name, (sec, spe) in step_times.items()}
    members = {name: {"sec_per_step": sec, "steps_per_epoch": spe} for name, (sec, spe) in step_times.items()}
    return EqualEpochPlan(common, float(epochs), float(seconds), repeats, allow, members)
