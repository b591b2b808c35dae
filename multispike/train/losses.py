"""Training losses for time-major network outputs ``O ∈ R^{T×B×K}``.

* :func:`ce_on_mean` - cross-entropy on the time mean, ``CE(mean_t O(t), y)``: the LM-HT direct and hybrid
  recipe (algorithms.md §2.5) and the usual rate-coded readout.
* :func:`tet_loss` - Temporal Efficient Training (Deng et al. 2022; TET-C ``functions.py``, algorithms.md §7.6):
  ``L = (1 − λ)·(1/T)·Σ_t CE(O(t), y) + λ·MSE(O, φ)`` with ``φ = 1.0`` and ``λ = 1e-3`` by default. The
  MSE term pulls every logit towards φ (TET-C: ``MSELoss(outputs, zeros.fill_(φ))`` over all T·B·K entries).
  Prediction is still made from ``mean_t O(t)``.

* :func:`distillation_loss` - knowledge distillation (Hinton et al. 2015):
  ``τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ))`` per sample, averaged over the batch; the trainer mixes it with the
  task loss as ``(1 − α)·task + α·KD`` (``distill_from``/``distill_weight``/``distill_temperature``).

The first two accept ``label_smoothing`` (PyTorch's definition: the target distribution is
``(1 − ε)·onehot(y) + ε/K``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ce_on_mean", "tet_loss", "distillation_loss", "CEOnMean", "TETLoss", "build_loss", "LOSSES"]

LOSSES = ("ce", "ce_mean", "tet")


def _check_outputs(outputs: torch.Tensor, target: torch.Tensor, owner: str) -> None:
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 3:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(f"{owner}: expected time-major logits [T, B, classes], got {shape}. Use the model's "
                         f"forward_sequence(x) (not forward(x), which already averages over time).")
    if target.dim() != 1 or target.shape[0] != outputs.shape[1]:
        raise ValueError(f"{owner}: targets must be class indices of shape [B={outputs.shape[1]}], "
                         f"got shape {tuple(target.shape)}")


def _check_smoothing(label_smoothing: float) -> float:
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    return float(label_smoothing)


def ce_on_mean(outputs: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on the time-mean logits: ``CE(mean_t O(t), y)``.

    Args:
        outputs: per-step logits ``[T, B, K]``.
        target: class indices ``[B]``.
        label_smoothing: ε in ``[0, 1)``.

    Example::

        loss = ce_on_mean(model.forward_sequence(x), y)
    """
    _check_outputs(outputs, target, "ce_on_mean")
    return F.cross_entropy(outputs.mean(0), target, label_smoothing=_check_smoothing(label_smoothing))


def tet_loss(outputs: torch.Tensor, target: torch.Tensor, lam: float = 1e-3, phi: float = 1.0,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """TET loss ``(1 − λ)·(1/T)·Σ_t CE(O(t), y) + λ·MSE(O, φ)``.

    Args:
        outputs: per-step logits ``[T, B, K]``.
        target: class indices ``[B]``.
        lam: λ_T in ``[0, 1]`` (TET-C default 1e-3); ``lam=0`` is the plain per-step CE mean.
        phi: φ, the constant the MSE regulariser pulls every logit towards (TET-C default 1.0).
        label_smoothing: ε in ``[0, 1)`` applied to every per-step CE.

    Example::

        loss = tet_loss(model.forward_sequence(x), y)          # λ = 1e-3, φ = 1
        pred = model.forward_sequence(x).mean(0).argmax(-1)    # predict from the time mean
    """
    _check_outputs(outputs, target, "tet_loss")
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"tet_loss: lam (λ_T) must be in [0, 1], got {lam!r} (the paper's default is 1e-3)")
    T, B = outputs.shape[:2]
    # One CE call over the merged T·B batch with mean reduction is exactly (1/T)·Σ_t CE_t, since every
    # step has the same B samples.
    per_step = F.cross_entropy(outputs.flatten(0, 1), target.repeat(T), label_smoothing=_check_smoothing(
        label_smoothing))
    loss = (1.0 - lam) * per_step
    if lam > 0:
        loss = loss + lam * F.mse_loss(outputs, torch.full_like(outputs, float(phi)))
    return loss


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Knowledge-distillation term ``τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ))``, mean over the batch.

    Args:
        student: logits ``[B, K]``, or time-major ``[T, B, K]`` (the time mean is the prediction, as in
            :func:`ce_on_mean`).
        teacher: logits ``[B, K]`` or ``[T, B, K]`` of the frozen teacher (no gradient flows into them).
        temperature: τ > 0; the τ² factor keeps the gradient size independent of τ.

    Example::

        kd = distillation_loss(student(x), teacher(x).detach(), temperature=4.0)
    """
    if not float(temperature) > 0:
        raise ValueError(f"distillation_loss: temperature must be > 0, got {temperature!r}")
    student = student.mean(0) if student.dim() == 3 else student
    teacher = teacher.mean(0) if teacher.dim() == 3 else teacher
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"distillation_loss: student and teacher logits must both be [B, classes] (or time-major "
                         f"[T, B, classes]); got {tuple(student.shape)} and {tuple(teacher.shape)} - was the teacher "
                         f"trained on the same classes?")
    tau = float(temperature)
    log_p_student = F.log_softmax(student.float() / tau, dim=-1)
    log_p_teacher = F.log_softmax(teacher.detach().float() / tau, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * tau * tau


class CEOnMean(nn.Module):
    """Module form of :func:`ce_on_mean`."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = _check_smoothing(label_smoothing)

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ce_on_mean(outputs, target, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


class TETLoss(nn.Module):
    """Module form of :func:`tet_loss`."""

    def __init__(self, lam: float = 1e-3, phi: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"TETLoss: lam (λ_T) must be in [0, 1], got {lam!r}")
        self.lam, self.phi = float(lam), float(phi)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return tet_loss(outputs, target, self.lam, self.phi, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, phi={self.phi}, label_smoothing={self.label_smoothing}"


class _PlainCE(nn.Module):
    """CE on ``[B, K]`` logits (ANN / QAT training)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = _check_smoothing(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)


def build_loss(name: str, label_smoothing: float = 0.0, tet_lambda: float = 1e-3, tet_phi: float = 1.0) -> nn.Module:
    """Build a loss by name.

    Args:
        name: ``"ce"`` (plain CE on ``[B, K]`` logits, for ANN/QAT), ``"ce_mean"`` (CE on the time mean of
            ``[T, B, K]``) or ``"tet"``.
    """
    if name == "ce":
        return _PlainCE(label_smoothing)
    if name == "ce_mean":
        return CEOnMean(label_smoothing)
    if name == "tet":
        return TETLoss(tet_lambda, tet_phi, label_smoothing)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
