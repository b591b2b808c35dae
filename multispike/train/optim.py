"""Optimizers, parameter groups and per-iteration learning-rate schedules.

Parameter groups
    :func:`build_param_groups` splits a model's parameters into

    * ``"neuron"``: thresholds, leaks and T-GIM parameters, chosen by name patterns (default
      :data:`DEFAULT_NEURON_PARAM_PATTERNS`). The M-LIF recipes train θ with its own learning rate, sometimes
      a fixed one (algorithms.md §8.3), so this group has its own ``lr``, ``weight_decay`` and a flag saying
      whether the schedule applies to it;
    * ``"no_decay"``: biases and normalisation parameters, when ``decay_norm_and_bias=False`` (QCFS-C's
      ``regular_set`` puts BN in a group without weight decay);
    * ``"bias"``: biases and normalisation parameters, when ``bias_lr_scale != 1`` (airbench94 trains BN biases
      at 64x the lr; ``bias_lr_scope="norm"`` limits the group to normalisation layers' parameters, as airbench94
      does). Their weight decay is divided by the scale, so the decay per step (lr·wd) equals the
      weights' (or is 0 with ``decay_norm_and_bias=False``);
    * ``"default"``: everything else.

Schedules
    :class:`LRSchedule` maps the global optimizer step ``s`` (0-based, per iteration) to a multiplicative
    factor ``f(s)`` of each group's base lr::

        warm-up (s < W):  f = w0 + (1 − w0)·s/W                  w0 = warmup_lr / lr
        constant:         f = 1
        step:             f = γ^⌊e / decay_epochs⌋                e = s / steps_per_epoch (fractional epoch)
        multistep:        f = γ^{#(milestones ≤ e)}
        cosine:           f = m + (1 − m)·½·(1 + cos(π·(s − W)/(S − W)))   m = min_lr / lr, S = total steps
        linear:           f = 1 − (1 − m)·(s − W)/(S − W)      (with the warm-up: airbench94's triangle)

    The schedule is a pure function of ``s``, so resuming only needs the step count.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from .._errors import ParameterError

__all__ = ["DEFAULT_NEURON_PARAM_PATTERNS", "OPTIMIZERS", "SCHEDULES", "match_neuron_param", "build_param_groups",
           "build_optimizer", "LRSchedule", "CompositeOptimizer", "build_training_optimizer"]

#: Parameter-name patterns of the neuron group. A pattern without a dot is matched (fnmatch) against the
#: parameter's own attribute name (the text after the last dot); a pattern with a dot against the full name.
#: ``mu`` is the LM-HT T-GIM parameter (Ω = 2σ(μ)/T) and is matched exactly, so ``mul``/``summary`` do not.
DEFAULT_NEURON_PARAM_PATTERNS: tuple[str, ...] = ("*v_threshold*", "*threshold*", "*leak*", "*tgim*", "mu")

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine", "linear")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def match_neuron_param(name: str, patterns: Sequence[str] = DEFAULT_NEURON_PARAM_PATTERNS) -> bool:
    """Whether parameter ``name`` (as in ``model.named_parameters()``) belongs to the neuron group."""
    leaf = name.rsplit(".", 1)[-1]
    for pat in patterns:
        if fnmatch.fnmatchcase(name if "." in pat else leaf, pat):
            return True
    return False


def build_param_groups(model: nn.Module, lr: float, weight_decay: float, *, neuron_lr: float | None = None,
                       neuron_weight_decay: float | None = None, neuron_lr_scheduled: bool = True,
                       neuron_patterns: Sequence[str] = DEFAULT_NEURON_PARAM_PATTERNS,
                       decay_norm_and_bias: bool = True, bias_lr_scale: float = 1.0, bias_lr_scope: str = "all",
                       exclude: Iterable[torch.Tensor] = ()) -> list[dict]:
    """Split ``model``'s trainable parameters into optimizer groups.

    Every group carries ``name`` (``"default"``, ``"no_decay"``, ``"bias"`` or ``"neuron"``), ``base_lr`` and ``scheduled``
    entries used by :class:`LRSchedule`. Empty groups are dropped.

    Args:
        lr: base learning rate of the weights.
        weight_decay: weight decay of the weights.
        neuron_lr: learning rate of the neuron group (thresholds, leaks, T-GIM); ``None`` means ``lr``.
        neuron_weight_decay: its weight decay; ``None`` means ``weight_decay``.
        neuron_lr_scheduled: if False the neuron group keeps ``neuron_lr`` for the whole run (M-LIF's "θ-lr
            fixed at 0.01").
        neuron_patterns: name patterns, see :func:`match_neuron_param`.
        decay_norm_and_bias: if False, biases and normalisation weights get no weight decay.
        bias_lr_scale: lr multiplier of biases and normalisation parameters (their own ``"bias"`` group, weight
            decay ``weight_decay / bias_lr_scale`` so that lr·wd stays the weights'); 1 keeps them with the weights.
        bias_lr_scope: ``"all"``: ``bias_lr_scale`` applies to every bias and normalisation parameter; ``"norm"``:
            to normalisation layers' parameters only (airbench94: a conv's bias, such as its whitening stem's,
            trains at the weights' rate).
        exclude: parameters to leave out (they go to a group the caller builds, e.g. QAT's ``"quant"`` group).

    Example::

        groups = build_param_groups(model, lr=1e-4, weight_decay=0.0, neuron_lr=1e-2, neuron_lr_scheduled=False)
        opt = build_optimizer("adam", groups, lr=1e-4)
    """
    if not isinstance(neuron_patterns, (list, tuple)) or not all(isinstance(p, str) for p in neuron_patterns):
        raise TypeError(f"neuron_patterns must be a list of strings (fnmatch patterns), got {neuron_patterns!r}")
    if not (isinstance(bias_lr_scale, (int, float)) and math.isfinite(bias_lr_scale) and bias_lr_scale > 0):
        raise ValueError(f"bias_lr_scale must be a finite number > 0, got {bias_lr_scale!r}")
    if bias_lr_scope not in ("all", "norm"):
        raise ValueError(f"bias_lr_scope must be 'all' or 'norm', got {bias_lr_scope!r}")
    split_biases = bias_lr_scale != 1.0
    norm_params: set[int] = set()
    if not decay_norm_and_bias or split_biases:
        for module in model.modules():
            if isinstance(module, _NORM_TYPES):
                norm_params.update(id(p) for p in module.parameters(recurse=False))
    default, no_decay, biases, neuron = [], [], [], []
    exclude = list(exclude)
    seen: set[int] = {id(p) for p in exclude}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if match_neuron_param(name, neuron_patterns):
            neuron.append(p)
        elif split_biases and (id(p) in norm_params or (bias_lr_scope == "all"
                                                         and (name.endswith("bias") or p.dim() <= 1))):
            biases.append(p)
        elif not decay_norm_and_bias and (id(p) in norm_params or name.endswith("bias") or p.dim() <= 1):
            no_decay.append(p)
        else:
            default.append(p)
    n_lr = lr if neuron_lr is None else neuron_lr
    n_wd = weight_decay if neuron_weight_decay is None else neuron_weight_decay
    groups = [
        dict(params=default, name="default", lr=lr, base_lr=lr, weight_decay=weight_decay, scheduled=True),
        dict(params=no_decay, name="no_decay", lr=lr, base_lr=lr, weight_decay=0.0, scheduled=True),
        dict(params=biases, name="bias", lr=lr * bias_lr_scale, base_lr=lr * bias_lr_scale,
             weight_decay=weight_decay / bias_lr_scale if decay_norm_and_bias else 0.0, scheduled=True),
        dict(params=neuron, name="neuron", lr=n_lr, base_lr=n_lr, weight_decay=n_wd, scheduled=neuron_lr_scheduled),
    ]
    groups = [g for g in groups if g["params"]]
    if not groups and not exclude:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return groups


def build_optimizer(name: str, params: Iterable, lr: float, *, momentum: float = 0.9, nesterov: bool = False,
                    weight_decay: float = 0.0, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8
                    ) -> torch.optim.Optimizer:
    """Build ``sgd`` (momentum, optional Nesterov), ``adam`` or ``adamw``.

    ``params`` may be plain parameters or the groups of :func:`build_param_groups` (their own ``lr`` and
    ``weight_decay`` win over the arguments).
    """
    if not (isinstance(lr, (int, float)) and lr >= 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    name = name.lower()
    if name == "sgd":
        if nesterov and momentum <= 0:
            raise ParameterError(f"Nesterov SGD needs momentum > 0, got {{momentum}}={momentum}; set {{momentum}} 0.9 "
                                 f"or drop {{nesterov}}", "momentum", "nesterov")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(betas)!r}")
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


@dataclass
class LRSchedule:
    """Per-iteration learning-rate schedule with linear warm-up (see the module docstring for the formulas).

    Args:
        kind: ``constant``, ``step``, ``multistep``, ``cosine`` or ``linear``.
        lr: the reference (default-group) base lr; ``warmup_lr`` and ``min_lr`` are absolute values for it and
            scale proportionally for groups with another base lr.
        steps_per_epoch: optimizer steps per epoch (> 0).
        epochs: total epochs (cosine length).
        warmup_epochs: linear warm-up length in (fractional) epochs; 0 disables it.
        warmup_lr: lr at step 0 of the warm-up.
        milestones: epochs at which ``multistep`` multiplies by ``decay_rate``.
        decay_epochs: period of ``step``.
        decay_rate: γ of ``step``/``multistep``.
        min_lr: final lr of ``cosine`` and ``linear``.
        max_steps: cap on the total optimizer steps (a fractional number of epochs); the cosine then spans
            ``min(epochs * steps_per_epoch, max_steps)`` steps and still ends at ``min_lr``.

    Example::

        sched = LRSchedule("cosine", lr=0.1, steps_per_epoch=100, epochs=30, warmup_epochs=1, warmup_lr=1e-3)
        sched.apply(optimizer, step)     # call before optimizer.step() of global step `step`
    """

    kind: str
    lr: float
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    milestones: Sequence[float] = field(default_factory=tuple)
    decay_epochs: float = 30.0
    decay_rate: float = 0.1
    min_lr: float = 0.0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch} (is the training set "
                             f"smaller than one batch?)")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.kind == "step" and self.decay_epochs <= 0:
            raise ValueError(f"the step schedule needs decay_epochs > 0, got {self.decay_epochs}")
        if self.kind == "multistep":
            ms = list(self.milestones)
            if not ms or any(b <= a for a, b in zip(ms, ms[1:])) or ms[0] <= 0:
                raise ValueError(f"the multistep schedule needs increasing positive milestones (epochs), got {ms}")
        if self.lr <= 0 and (self.warmup_epochs > 0 or self.kind in ("cosine", "linear")):
            raise ValueError("warm-up, cosine and linear schedules need lr > 0 (they are defined relative to lr)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or None), got {self.max_steps}")
        self.warmup_steps = int(round(self.warmup_epochs * self.steps_per_epoch))
        self.total_steps = self.epochs * self.steps_per_epoch
        if self.max_steps is not None:
            self.total_steps = min(self.total_steps, int(self.max_steps))
            self.warmup_steps = min(self.warmup_steps, self.total_steps)

    def factor(self, step: int) -> float:
        """Multiplicative factor of the base lr at global optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            w0 = self.warmup_lr / self.lr
            return w0 + (1.0 - w0) * step / self.warmup_steps
        epoch = step / self.steps_per_epoch
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.decay_rate ** math.floor(epoch / self.decay_epochs + 1e-9)
        if self.kind == "multistep":
            return self.decay_rate ** sum(1 for m in self.milestones if epoch >= m)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        m = self.min_lr / self.lr
        if self.kind == "linear":
            return 1.0 - (1.0 - m) * progress
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr_at(self, step: int, base_lr: float | None = None) -> float:
        """Learning rate of a group with base lr ``base_lr`` (default: the reference ``lr``) at ``step``."""
        return (self.lr if base_lr is None else base_lr) * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every scheduled group's lr for ``step``; returns the reference lr."""
        f = self.factor(step)
        for group in optimizer.param_groups:
            base = group.setdefault("base_lr", group["lr"])
            if group.get("scheduled", True):
                group["lr"] = base * f
        return self.lr * f

    def state_dict(self) -> dict:
        """Plain-JSON description (the schedule itself is stateless; the step lives in the checkpoint)."""
        return dict(kind=self.kind, lr=self.lr, steps_per_epoch=self.steps_per_epoch, epochs=self.epochs,
                    warmup_epochs=self.warmup_epochs, warmup_lr=self.warmup_lr, milestones=list(self.milestones),
                    decay_epochs=self.decay_epochs, decay_rate=self.decay_rate, min_lr=self.min_lr,
                    max_steps=self.max_steps)


class CompositeOptimizer:
    """Several optimizers stepped together and seen as one: ``param_groups`` is the concatenation of theirs (the
    same dicts, so :meth:`LRSchedule.apply` sets every group's lr), and ``state_dict`` is one torch-style dict
    whose parameter indices run on across the optimizers (the checkpoint format stores it unchanged).

    QAT uses it when the quantizers' (t, α) have another optimizer than the weights (``quant_opt``, e.g. Adam for
    (t, α) beside SGD for the weights).
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:
        out: dict = {}
        for o in self.optimizers:
            out.update(o.state)
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        if closure is not None:
            raise ValueError("CompositeOptimizer.step does not take a closure")
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for k, o in enumerate(self.optimizers):
            sd = o.state_dict()
            for idx, s in sd["state"].items():
                state[int(idx) + offset] = s
            for g in sd["param_groups"]:
                groups.append({**g, "params": [int(i) + offset for i in g["params"]], "optimizer_index": k})
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"CompositeOptimizer: the state has {len(groups)} parameter groups, this optimizer "
                             f"{len(self.param_groups)}")
        offset, start = 0, 0
        for k, o in enumerate(self.optimizers):
            mine = groups[start:start + len(o.param_groups)]
            start += len(o.param_groups)
            if any(g.get("optimizer_index", k) != k for g in mine):
                raise ValueError("CompositeOptimizer: the state's groups belong to other optimizers (was it saved "
                                 "with another quant_opt?)")
            n = sum(len(g["params"]) for g in mine)
            sub_groups = [{**{key: v for key, v in g.items() if key != "optimizer_index"},
                           "params": [int(i) - offset for i in g["params"]]} for g in mine]
            sub_state = {int(i) - offset: v for i, v in state_dict["state"].items() if offset <= int(i) < offset + n}
            o.load_state_dict({"state": sub_state, "param_groups": sub_groups})
            offset += n


def build_training_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer | CompositeOptimizer:
    """The optimizer of a training run from its config (a :class:`~multispike.train.config.TrainConfig`).

    Weights, biases and neuron parameters are grouped by :func:`build_param_groups`. The learnable pairs of QAC
    quantizers ((t or n, α or d); :func:`multispike.quant.latency.quantizer_parameters`) form their own ``"quant"``
    group with ``quant_lr`` (default ``neuron_lr``, else ``lr``), ``quant_weight_decay`` (default
    ``neuron_weight_decay``, else ``weight_decay``) and ``quant_lr_scheduled`` (default ``neuron_lr_scheduled``).
    When ``quant_opt`` differs from ``opt`` that group has an optimizer of its own and a
    :class:`CompositeOptimizer` is returned.
    """
    from ..quant.latency import quantizer_parameters

    quant = quantizer_parameters(model)
    quant = [p for p in quant if p.requires_grad]
    groups = build_param_groups(model, cfg.lr, cfg.weight_decay, neuron_lr=cfg.neuron_lr,
                                neuron_weight_decay=cfg.neuron_weight_decay,
                                neuron_lr_scheduled=cfg.neuron_lr_scheduled,
                                neuron_patterns=tuple(cfg.neuron_param_patterns),
                                decay_norm_and_bias=cfg.decay_norm_and_bias,
                                bias_lr_scale=getattr(cfg, "bias_lr_scale", 1.0),
                                bias_lr_scope=getattr(cfg, "bias_lr_scope", "all"), exclude=quant)
    kw = dict(momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, betas=cfg.betas,
              eps=cfg.eps)
    if not quant:
        return build_optimizer(cfg.opt, groups, cfg.lr, **kw)
    q_lr = next(v for v in (getattr(cfg, "quant_lr", None), cfg.neuron_lr, cfg.lr) if v is not None)
    q_wd = next(v for v in (getattr(cfg, "quant_weight_decay", None), cfg.neuron_weight_decay, cfg.weight_decay)
                if v is not None)
    q_sched = getattr(cfg, "quant_lr_scheduled", None)
    q_sched = cfg.neuron_lr_scheduled if q_sched is None else q_sched
    q_group = dict(params=quant, name="quant", lr=q_lr, base_lr=q_lr, weight_decay=q_wd, scheduled=q_sched)
    q_opt = getattr(cfg, "quant_opt", None) or cfg.opt
    if q_opt == cfg.opt or not groups:
        if not groups:
            return build_optimizer(q_opt, [q_group], q_lr, **kw)
        return build_optimizer(cfg.opt, [*groups, q_group], cfg.lr, **kw)
    return CompositeOptimizer([build_optimizer(cfg.opt, groups, cfg.lr, **kw),
                               build_optimizer(q_opt, [q_group], q_lr, **kw)])
