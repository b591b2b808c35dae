"""Calibration of the initial membrane v(0) and the threshold θ of a converted SNN (algorithms.md §4.5).

All weights stay frozen. The learnables are ``v_l(0)`` (per channel or per layer) and ``θ_l`` (per layer),
initialised from the conversion (θ = α, v(0) = θ/2). They are trained with Adam on::

    𝓛 = ½ · mean_{batch, classes} ( (1/T_L)·Σ_t o_SNN(t) − o_ANN )²

on unlabeled images, where ``o_ANN`` is the quantized ANN's logits (``target="quantized"``, default) or the
float ANN's (``target="float"``: the same ANN with every quantizer replaced by ReLU). Gradients flow by BPTT
through the unrolled SNN and the averaging alignment, with a surrogate H′ (triangle, γ = 1) and the reset
**not** detached, which keeps the (1 + s(t−1)) factor of QAC eq. (44).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from .._validate import check_choice
from ..neurons.base import reset_net
from ..neurons.if_lif import BaseNeuron
from ..neurons.surrogate import SurrogateFunction, Triangle, get_surrogate
from ..quant.qac import QACQuantizer
from ..quant.qcfs import QCFS

__all__ = ["calibrate", "CalibrationReport", "spiking_neurons", "float_reference", "TARGETS", "V_INIT_SHAPES"]

TARGETS = ("quantized", "float")
V_INIT_SHAPES = ("channel", "layer")
_THETA_MIN_FRACTION = 1e-3  # θ is kept >= this fraction of its converted value (θ must stay > 0)


@dataclass
class CalibrationReport:
    """Before/after numbers of :func:`calibrate` (JSON-ready with :meth:`to_dict`).

    ``loss_*``: the calibration loss ½·mean((o_SNN − o_ANN)²) over the data; ``accuracy_*``: top-1 of the SNN
    (``None`` without labels); ``reference_accuracy``: top-1 of the target ANN; ``layers``: per spiking layer,
    θ and the mean v(0) before and after.
    """

    model: str
    target: str
    v_init_shape: str
    epochs: int
    lr: float
    surrogate: str
    surrogate_form: str
    batches: int
    samples: int
    loss_before: float
    loss_after: float = float("nan")
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    reference_accuracy: float | None = None
    epoch_losses: list[float] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    reverted: bool = False  # calibration raised the loss, so the converted v(0) and θ were restored

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        acc = ""
        if self.accuracy_before is not None:
            acc = f", SNN accuracy {100 * self.accuracy_before:.2f}% -> {100 * self.accuracy_after:.2f}%"
            if self.reference_accuracy is not None:
                acc += f" (ANN {100 * self.reference_accuracy:.2f}%)"
        return (f"calibration of {self.model} ({self.target} target, v_init per {self.v_init_shape}, {self.epochs} "
                f"epochs, lr {self.lr:g}): loss {self.loss_before:.6g} -> {self.loss_after:.6g}{acc}")


def spiking_neurons(model: nn.Module) -> list[tuple[str, BaseNeuron]]:
    """The threshold neurons (IF/LIF family, with ``v_threshold`` and ``v_init``) of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseNeuron)]


def float_reference(ann: nn.Module) -> nn.Module:
    """A copy of ``ann`` with every quantizer (QACQuantizer, QCFS) replaced by ``nn.ReLU`` - the float ANN."""
    ref = copy.deepcopy(ann)
    for name, m in list(ref.named_modules()):
        if name and isinstance(m, (QACQuantizer, QCFS)):
            parent_name, _, attr = name.rpartition(".")
            setattr(ref.get_submodule(parent_name) if parent_name else ref, attr, nn.ReLU())
    return ref


def _split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], y
    raise TypeError(f"calibrate: each batch must be a tensor of images or a (images, labels) pair, got "
                    f"{type(batch).__name__}")


def _logits(out: torch.Tensor, ref: torch.Tensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring SNN and ANN outputs to the same ``[B, ...]`` shape (a leading time axis is averaged)."""
    if out.shape == ref.shape:
        return out, ref
    if out.dim() == ref.dim() + 1 and out.shape[1:] == ref.shape:
        return out.mean(0), ref
    if out.dim() == ref.dim() and out.shape[1:] == ref.shape[1:]:
        return out.mean(0), ref.mean(0)
    raise ValueError(f"calibrate: {owner} output shape {tuple(out.shape)} does not match the ANN's "
                     f"{tuple(ref.shape)}; the SNN must return logits [B, K] or per-step logits [T, B, K]")


def _channel_shape(step_shape: torch.Size, per: str) -> tuple[int, ...]:
    # Per-step input [B, C, ...]: one value per channel (dim 1), broadcast over the remaining dims.
    if per == "layer" or len(step_shape) < 2:
        return ()
    return (step_shape[1],) + (1,) * (len(step_shape) - 2)


def calibrate(snn: nn.Module, ann: nn.Module, data_iter: Iterable, epochs: int = 10, lr: float = 1e-3,
              target: str = "quantized", v_init_shape: str = "channel",
              surrogate: SurrogateFunction | str | None = None, surrogate_form: str = "normalized",
              learn_threshold: bool = True, learn_v_init: bool = True, eval_iter: Iterable | None = None,
              add_time_dim: bool = False, device: torch.device | str | None = None) -> CalibrationReport:
    """Learn v(0) and θ of every spiking layer of ``snn`` so its time-mean output matches ``ann`` (§4.5).

    ``snn`` is modified in place (only ``v_init`` and ``v_threshold`` of its neurons change; afterwards they are
    buffers again, as after conversion). The weights of both networks are never updated.

    Args:
        snn: a converted SNN, e.g. from :func:`multispike.convert.mixed_timestep.to_mixed_timestep_snn`.
        ann: the quantized ANN it was converted from (the teacher).
        data_iter: unlabeled images: an iterable of input batches or ``(images, labels)`` pairs (a DataLoader, a
            list; a one-shot iterator is cached on its first pass). Labels, if present, only feed the accuracy.
        epochs: passes over ``data_iter`` ("a few dozen" in the paper).
        lr: Adam learning rate (the paper does not state one; 1e-3 [inferred]).
        target: ``"quantized"`` (default: ``ann`` as given, it must contain QAC/QCFS quantizers) or
            ``"float"`` (``ann`` with every quantizer replaced by ReLU).
        v_init_shape: ``"channel"`` (one v(0) per channel of each layer, default) or ``"layer"`` (a scalar).
        surrogate: spike surrogate for the backward pass (default ``Triangle(1.0)``, §9).
        surrogate_form: ``"normalized"`` (``x = m/θ − 1``, default: the width scales with each layer's θ, and θ
            gets the spike-path gradient) or ``"difference"`` (``x = m − θ``).
        learn_threshold, learn_v_init: which of the two to learn.
        eval_iter: data for the before/after loss and accuracy (default: ``data_iter``).
        add_time_dim: feed ``x.unsqueeze(0)`` (a ``[1, B, ...]`` sequence) to both networks instead of ``x``.
        device: where to run (default: the SNN's device).

    Returns:
        A :class:`CalibrationReport`.

    Raises:
        ValueError: ``snn`` has no spiking layers, bad arguments, or ``target="quantized"`` with an ANN that
            has no quantizer.

    Example::

        >>> report = calibrate(snn, qat_model, loader, epochs=20)      # doctest: +SKIP
        >>> print(report)                                             # doctest: +SKIP
    """
    name = type(snn).__name__
    check_choice(target, "target", TARGETS, "calibrate")
    check_choice(v_init_shape, "v_init_shape", V_INIT_SHAPES, "calibrate")
    check_choice(surrogate_form, "surrogate_form", ("normalized", "difference"), "calibrate")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"calibrate: epochs must be an integer >= 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"calibrate: lr must be a finite number > 0, got {lr!r}")
    if not (learn_threshold or learn_v_init):
        raise ValueError("calibrate: nothing to learn - set learn_threshold and/or learn_v_init")
    neurons = spiking_neurons(snn)
    if not neurons:
        raise ValueError(f"calibrate: {name} has no spiking layers (no IF/LIF neuron with a threshold and an initial "
                         f"membrane); convert the ANN first, e.g. with to_mixed_timestep_snn()")
    has_quantizer = any(isinstance(m, (QACQuantizer, QCFS)) for m in ann.modules())
    if target == "quantized" and not has_quantizer:
        raise ValueError(f"calibrate: target='quantized' needs the quantized ANN, but {type(ann).__name__} has no "
                         f"QACQuantizer or QCFS; pass the QAT model or use target='float'")
    teacher = float_reference(ann) if target == "float" else ann
    surrogate = get_surrogate(surrogate, default=Triangle(1.0))
    if device is None:
        p = next((t for t in [*snn.parameters(), *snn.buffers()] if t.is_floating_point()), None)
        device = p.device if p is not None else torch.device("cpu")
    if iter(data_iter) is data_iter:  # a one-shot iterator: cache it so every epoch sees the same batches
        data_iter = list(data_iter)
    eval_data = data_iter if eval_iter is None else eval_iter
    if iter(eval_data) is eval_data:
        eval_data = list(eval_data)

    def prepare(batch):
        x, y = _split_batch(batch)
        x = x.to(device)
        if add_time_dim:
            x = x.unsqueeze(0)
        return x, (None if y is None else y.to(device))

    # --- freeze everything, remember the state to restore ---------------------------------------------------
    snn_flags = {id(p): p.requires_grad for p in snn.parameters()}
    ann_flags = {id(p): p.requires_grad for p in teacher.parameters()}
    modes = (snn.training, teacher.training)
    saved = [(m, m.surrogate_function, m.surrogate_form, m.detach_reset,
              {a: getattr(m, a) for a in ("v_threshold", "v_init")}) for _, m in neurons]
    for p in [*snn.parameters(), *teacher.parameters()]:
        p.requires_grad_(False)
    snn.eval()
    teacher.eval()

    @torch.no_grad()
    def evaluate() -> tuple[float, float | None, float | None, int, int]:
        total, n, correct, ref_correct, labelled, batches = 0.0, 0, 0, 0, 0, 0
        for batch in eval_data:
            x, y = prepare(batch)
            reset_net(snn)
            o, r = _logits(snn(x), teacher(x), name)
            total += 0.5 * float(((o - r) ** 2).mean()) * o.shape[0]
            n += o.shape[0]
            batches += 1
            if y is not None:
                correct += int((o.argmax(-1) == y).sum())
                ref_correct += int((r.argmax(-1) == y).sum())
                labelled += int(y.numel())
        if n == 0:
            raise ValueError("calibrate: the evaluation data yielded no batch")
        acc = correct / labelled if labelled else None
        ref_acc = ref_correct / labelled if labelled else None
        return total / n, acc, ref_acc, batches, n

    try:
        loss_before, acc_before, ref_acc, batches, samples = evaluate()
        # Per-step input shapes of every neuron, for per-channel v(0).
        shapes: dict[int, torch.Size] = {}

        def record_shape(mod: nn.Module, inp: tuple) -> None:  # a pre-hook must return None
            shapes.setdefault(id(mod), inp[0].shape[1:] if mod.step_mode == "m" else inp[0].shape)

        hooks = [m.register_forward_pre_hook(record_shape) for _, m in neurons]
        try:
            with torch.no_grad():
                first = next(iter(data_iter), None)
                if first is None:
                    raise ValueError("calibrate: data_iter yielded no batch")
                reset_net(snn)
                snn(prepare(first)[0])
        finally:
            for h in hooks:
                h.remove()

        layer_rows, learnables = [], []
        # Converted values, restored if calibration ends worse than it started (e.g. an already exact SNN).
        initial = {id(m): (m.v_threshold.detach().clone(), m.v_init.detach().clone()) for _, m in neurons}
        for lname, m in neurons:
            row = {"layer": lname, "theta_before": float(m.v_threshold.detach().mean()),
                   "v_init_before": float(m.v_init.detach().mean())}
            if learn_threshold:
                theta = nn.Parameter(m.v_threshold.detach().clone())
                m.v_threshold = theta  # nn.Module turns the buffer into a parameter
                learnables.append(theta)
            if learn_v_init:
                step_shape = shapes.get(id(m))
                if step_shape is None:
                    raise ValueError(f"calibrate: spiking layer {lname!r} of {name} never ran on the first batch; it "
                                     f"cannot be calibrated")
                shape = _channel_shape(step_shape, v_init_shape)
                v0 = m.v_init.detach()
                v0 = v0.mean() if v0.numel() > 1 and v_init_shape == "layer" else v0
                v = nn.Parameter(torch.zeros(shape, dtype=v0.dtype, device=v0.device) + v0)
                m.v_init = v
                learnables.append(v)
            m.surrogate_function = surrogate
            m.surrogate_form = surrogate_form
            m.detach_reset = False  # keeps the (1 + s) factor of QAC eq. (44)
            layer_rows.append(row)
        theta_floor = {id(m): _THETA_MIN_FRACTION * float(m.v_threshold.detach().abs().min()) for _, m in neurons}

        optimizer = torch.optim.Adam(learnables, lr=lr)
        epoch_losses = []
        for _ in range(epochs):
            total, n = 0.0, 0
            for batch in data_iter:
                x, _ = prepare(batch)
                with torch.no_grad():
                    ref = teacher(x)
                reset_net(snn)
                o, r = _logits(snn(x), ref, name)
                loss = 0.5 * ((o - r) ** 2).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for _, m in neurons:
                        if learn_threshold:
                            m.v_threshold.clamp_(min=theta_floor[id(m)])
                total += float(loss.detach()) * o.shape[0]
                n += o.shape[0]
            epoch_losses.append(total / max(n, 1))
    finally:
        # Learned values become buffers again; surrogate settings and requires_grad flags are restored.
        for m, sur, form, det, originals in saved:
            for attr, original in originals.items():
                learned = getattr(m, attr)
                if learned is original:
                    continue
                if isinstance(original, nn.Parameter):
                    # A neuron built with a learnable θ keeps its Parameter object (optimizers may hold it).
                    with torch.no_grad():
                        if original.shape == learned.shape:
                            original.copy_(learned)
                            setattr(m, attr, original)
                        else:
                            setattr(m, attr, nn.Parameter(learned.detach().clone(),
                                                          requires_grad=original.requires_grad))
                else:
                    del m._parameters[attr]
                    m.register_buffer(attr, learned.detach().clone())
            m.surrogate_function, m.surrogate_form, m.detach_reset = sur, form, det
        for p in snn.parameters():
            p.requires_grad_(snn_flags.get(id(p), True))
        for p in teacher.parameters():
            p.requires_grad_(ann_flags.get(id(p), True))
        snn.train(modes[0])
        teacher.train(modes[1])
        reset_net(snn)

    snn.eval()
    teacher.eval()
    loss_after, acc_after, _, _, _ = evaluate()
    reverted = loss_after > loss_before
    if reverted:
        with torch.no_grad():
            for _, m in neurons:
                theta0, v0 = initial[id(m)]
                for attr, value in (("v_threshold", theta0), ("v_init", v0)):
                    current = getattr(m, attr)
                    if current.shape == value.shape:
                        current.copy_(value)
                    elif isinstance(current, nn.Parameter):
                        setattr(m, attr, nn.Parameter(value.clone(), requires_grad=current.requires_grad))
                    else:
                        m.register_buffer(attr, value.clone())
        loss_after, acc_after = loss_before, acc_before
    snn.train(modes[0])
    teacher.train(modes[1])
    for row, (_, m) in zip(layer_rows, neurons):
        row.update(theta_after=float(m.v_threshold.detach().mean()), v_init_after=float(m.v_init.detach().mean()),
                   v_init_shape=list(m.v_init.shape))
    sur_name = f"{type(surrogate).__name__}({surrogate.alpha:g})"
    return CalibrationReport(model=name, target=target, v_init_shape=v_init_shape, epochs=epochs, lr=float(lr),
                             surrogate=sur_name, surrogate_form=surrogate_form, batches=batches, samples=samples,
                             loss_before=loss_before, loss_after=loss_after, accuracy_before=acc_before,
                             accuracy_after=acc_after, reference_accuracy=ref_acc, epoch_losses=epoch_losses,
                             layers=layer_rows, reverted=reverted)
