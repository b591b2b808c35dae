"""Log-quantized ANN activation (LQ-ANN), the baseline of the one-hot M-LIF paper (algorithms.md §5.4).

Forward (``b`` bits, per-layer scale α > 0, ``y = o/α``)::

    e    = ⌊log₂ y + ½⌉                       # round in the log domain (half up, §0)
    õ    = 0                 if o <= 0 or e <= 1 − 2^b     (underflow to zero)
         = α                 if e >= 0                     (saturates at the top level α)
         = α·2^e             otherwise

This is ``α·2^{clip(⌊log₂(o/α)⌉, 1−2^b, 1)}`` of §5.4 read with the *Miyashita et al. (2016)* clip that
MLIF-C implements (``QuantizeActivation``, ``quant_id='log'``): exponents at or below the lower bound become
the value 0, exponents at or above the upper bound 1 become ``1 − 1 = 0``. Read as an ordinary clip the
formula would give ``2^b + 1`` non-zero levels up to ``2α`` and never output zero for ``o > 0``, which does
not fit in b bits. The exact levels are therefore::

    {0} ∪ {α·2^e : e = 2 − 2^b, …, −1, 0}          # 2^b codes, 2^b − 1 of them non-zero
    b = 1: {0, α}    b = 2: {0, α/4, α/2, α}    b = 3: {0, α/64, …, α/2, α}

Decision edges sit at the geometric midpoints ``α·2^{e−½}``: ``o >= α·2^{−½}`` gives α, and
``o < α·2^{3/2−2^b}`` gives 0.

Backward (straight-through, :func:`log_quant`): ``∂õ/∂o = s(y)`` and ``∂õ/∂α = Q(y) − y·s(y)``, where ``Q`` is
the quantizer in units of α and ``s`` is 1 everywhere (``ste="identity"``: MLIF-C's ``out.data = quantize(x)``)
or ``1{0 < y < 2^{½}}`` (``ste="clipped"``: no gradient where the exponent was clipped from above, the QCFS
convention). α is initialised from a percentile of the activations (MLIF-C: the running maximum over 16 or
128 batches of the per-batch 99.7th percentile, rule ``k = 1 + round(0.01·q·(n−1))`` with ``kthvalue``).

Relation to M-LIF at T = 1 (§5.4) - an exact identity. Write the ``S = 2^b − 1`` non-zero levels as
``c·2^s`` with ``c = α·2^{2−2^b}`` (the lowest level) and ``s = 0..S−1``; level ``c·2^s`` is taken on
``[√2^{-1}·c·2^s, √2·c·2^s)`` (half-up rounding in the log domain), i.e. on ``[θ·2^s, θ·2^{s+1})`` with
``θ = c/√2 = α·2^{3/2−2^b}``, the top level from ``θ·2^{S−1}`` up and 0 below θ. That is a one-hot M-LIF layer
with ``S = 2^b − 1`` lanes, threshold θ, ``lane_bounds="floor"``, ``fire_ge=True`` and a spike worth
``√2·θ·2^s = c·2^s`` (its payload scale), at T = 1 - value by value, not only "in spirit". With fewer lanes
(e.g. the paper's S = 2 against b = 2) the M-LIF layer drops the lowest LQ levels; with more it adds levels below
the LQ underflow. :func:`mlif_lq_parameters` gives θ and c; this module computes the LQ decision on
``r = x/θ`` against the powers of two with exactly the arithmetic of the M-LIF kernels (``x/θ >= 2^k``), so the
two agree bit for bit, ties on an edge included (both round up). In exact arithmetic this is
``⌊log₂(x/α) + ½⌋``; the module no longer evaluates ``log2``, whose rounding within an ulp of an edge is not
the M-LIF's.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator

import torch
from torch import nn

from ..neurons.base import check_positive_int, reset_net

__all__ = ["LogQuant", "log_quant", "log_quant_levels", "kth_percentile", "calibrate_log_quant", "LOG_QUANT_STES",
           "mlif_lq_parameters", "log_quant_lanes"]

LOG_QUANT_STES = ("identity", "clipped")


def kth_percentile(t: torch.Tensor, q: float) -> float:
    """The q-th percentile by the rule of MLIF-C/DIET-SNN: the k-th smallest value with
    ``k = 1 + round(0.01·q·(n−1))`` (Python's ``round``, as in the source), over all elements of ``t``.

    Example::

        >>> kth_percentile(torch.arange(1.0, 1001.0), 99.7)    # k = 1 + round(996.003) = 997
        997.0
    """
    if not isinstance(t, torch.Tensor) or t.numel() == 0:
        raise ValueError("kth_percentile: need a non-empty tensor")
    q = float(q)
    if not (0.0 <= q <= 100.0):
        raise ValueError(f"kth_percentile: q must be a percentage in [0, 100], got {q}")
    flat = t.detach().reshape(-1)
    k = 1 + round(0.01 * q * (flat.numel() - 1))
    return float(flat.kthvalue(k).values)


def _check_bits(bits) -> int:
    return check_positive_int(bits, "LogQuant bits", minimum=1, fix="Use b >= 1 bits (the paper compares 2, 3, 4).")


def log_quant_lanes(bits: int) -> int:
    """The number of non-zero LQ levels, ``2^b − 1``: the lane count S of the M-LIF layer equal to a b-bit LQ."""
    return 2 ** _check_bits(bits) - 1


def mlif_lq_parameters(alpha: float | torch.Tensor, lanes: int, scaled: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(θ, c)`` of the one-hot M-LIF layer (S lanes, floor bounds, fire on ≥) equal to a log quantizer of scale
    α with S non-zero levels ``α·2^{1−S}, …, α/2, α`` (§5.4): ``θ = α·2^{1/2−S}`` (lowest edge), ``c = α·2^{1−S}``
    (lowest level, = √2·θ). For a b-bit :class:`LogQuant`, ``S = 2^b − 1`` makes it exact. With ``scaled=True``
    (lanes worth ``2^{s−S+1}``, edges at ``2^{s−S+1}·θ``): ``θ = α/√2`` and ``c = α``.

    Both are computed here, once, with tensor arithmetic in α's dtype: :func:`log_quant` and the M-LIF
    initialisation then use the very same θ, so their edge decisions agree bit for bit.

    Example::

        >>> theta, c = mlif_lq_parameters(torch.tensor(1.0), lanes=3)      # b = 2: levels 1/4, 1/2, 1
        >>> round(float(theta), 6), float(c)
        (0.176777, 0.25)
    """
    S = check_positive_int(lanes, "lanes", minimum=1, fix="Use S >= 1 lanes.")
    a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha))
    # α·2^{1/2−S} = (α·2^{−S})·√2 rounds differently from α·(2^{1/2−S}); fix one expression for everyone.
    theta = a * (2.0 ** (0.5 - S))
    c = a * (2.0 ** (1 - S))
    if scaled:
        up = 2.0 ** (S - 1)
        return theta * up, c * up
    return theta, c


class _LogRoundSTE(torch.autograd.Function):
    """``Q(y)`` in units of α with a straight-through backward ``s(y)``. The forward decides on ``r = x/θ``
    (passed in, no gradient): ``2^{k+1−S}`` for ``2^k <= r < 2^{k+1}``, 1 from ``2^{S−1}`` up, 0 below 1."""

    @staticmethod
    def forward(ctx, y, r, lanes: int, ste: str):
        ctx.save_for_backward(y)
        ctx.ste = ste
        out = torch.zeros_like(y)
        for k in range(lanes):          # nested edges: the last one passed wins (the M-LIF's floor lanes)
            out = torch.where(r >= float(2 ** k), torch.full_like(y, 2.0 ** (k + 1 - lanes)), out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        if ctx.ste == "identity":
            return grad, None, None, None
        inside = (y > 0) & (y < math.sqrt(2.0))           # the exponent is not clipped from above
        return grad * inside.to(grad.dtype), None, None, None


def log_quant(x: torch.Tensor, alpha: float | torch.Tensor, bits: int, ste: str = "identity") -> torch.Tensor:
    """Functional log quantizer ``α·Q(x/α)`` (see the module docstring for levels and gradients).

    Example::

        >>> log_quant(torch.tensor([0.0, 0.05, 0.2, 0.3, 0.6, 0.8, 5.0]), alpha=1.0, bits=2).tolist()
        [0.0, 0.0, 0.25, 0.25, 0.5, 1.0, 1.0]
    """
    bits = _check_bits(bits)
    if ste not in LOG_QUANT_STES:
        raise ValueError(f"log_quant: ste must be one of {LOG_QUANT_STES}, got {ste!r}")
    a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha), dtype=x.dtype, device=x.device)
    if not torch.compiler.is_compiling() and not bool((a > 0).all()):
        raise ValueError(f"log_quant: alpha must be > 0, got {a.detach()}; calibrate it on data "
                         f"(calibrate_log_quant) or pass a positive scale")
    S = 2 ** bits - 1
    theta, _ = mlif_lq_parameters(a.detach(), S)
    r = x.detach() / theta.to(x.dtype)
    return a * _LogRoundSTE.apply(x / a, r, S, ste)


def log_quant_levels(bits: int, alpha: float = 1.0) -> list[float]:
    """The ``2^b`` output levels, ascending: ``[0, α·2^{2−2^b}, …, α/2, α]``."""
    bits = _check_bits(bits)
    return [0.0] + [alpha * 2.0 ** e for e in range(2 - 2 ** bits, 1)]


class LogQuant(nn.Module):
    """Log-quantized activation (LQ-ANN, §5.4) with a per-layer scale α set from a percentile.

    Args:
        bits: b >= 1; ``2^b`` levels ``{0} ∪ {α·2^e : e = 2−2^b..0}``.
        alpha: initial α > 0 (overwritten by calibration).
        learnable: learn α (gradient ``Q(y) − y·s(y)``); MLIF-C keeps it fixed.
        ste: ``"identity"`` (MLIF-C) or ``"clipped"`` straight-through gradient.
        percentile: q of the calibration rule (99.7 in MLIF-C).

    Calibration (MLIF-C ``mode=1``): inside ``with lq.calibration():`` the module passes its input through
    unchanged and records the running maximum of the per-batch q-th percentile; on exit α takes that value.
    :func:`calibrate_log_quant` does this for every ``LogQuant`` of a model over a few batches.

    Example::

        >>> lq = LogQuant(bits=2)
        >>> with lq.calibration():
        ...     _ = lq(torch.arange(0.0, 1001.0))       # P99.7 = 997
        >>> float(lq.alpha)
        997.0
    """

    def __init__(self, bits: int = 2, alpha: float = 1.0, learnable: bool = False, ste: str = "identity",
                 percentile: float = 99.7) -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        if ste not in LOG_QUANT_STES:
            raise ValueError(f"LogQuant: ste must be one of {LOG_QUANT_STES}, got {ste!r}")
        self.ste = ste
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)
                and alpha > 0):
            raise ValueError(f"LogQuant: alpha must be a finite number > 0, got {alpha!r}")
        if not (0.0 < float(percentile) <= 100.0):
            raise ValueError(f"LogQuant: percentile must be in (0, 100], got {percentile!r}")
        self.percentile = float(percentile)
        a = torch.tensor(float(alpha))
        if learnable:
            self.alpha = nn.Parameter(a)
        else:
            self.register_buffer("alpha", a)
        self.calibrating = False
        self._calib_max: float | None = None

    @property
    def levels(self) -> list[float]:
        """The current output levels (ascending)."""
        return log_quant_levels(self.bits, float(self.alpha.detach()))

    @contextlib.contextmanager
    def calibration(self) -> Iterator["LogQuant"]:
        """Record percentiles instead of quantizing; set α to their running maximum on exit."""
        self.calibrating, self._calib_max = True, None
        try:
            yield self
        finally:
            self.calibrating = False
            if self._calib_max is not None:
                if not self._calib_max > 0:
                    raise ValueError(f"LogQuant: the {self.percentile}th percentile of the calibration activations "
                                     f"is {self._calib_max} <= 0 (a dead layer?); α must be > 0 - set it by hand")
                with torch.no_grad():
                    self.alpha.fill_(self._calib_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            # Rectify like the quantized forward does (it maps x <= 0 to 0), so a LogQuant used in place of a
            # ReLU calibrates - and feeds later layers - post-ReLU activations, not signed pre-activations.
            x = x.clamp(min=0)
            p = kth_percentile(x, self.percentile)
            self._calib_max = p if self._calib_max is None else max(self._calib_max, p)
            return x
        return log_quant(x, self.alpha.to(x.dtype), self.bits, self.ste)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, alpha={float(self.alpha.detach()):.4g}, ste={self.ste!r}, "
                f"percentile={self.percentile}")


@torch.no_grad()
def calibrate_log_quant(model: nn.Module, data: Iterable, num_batches: int = 16) -> dict[str, float]:
    """Set α of every :class:`LogQuant` in ``model`` from ``num_batches`` batches of ``data`` (eval mode).

    Args:
        data: iterable of input batches or ``(input, label)`` pairs, in the model's input format.
        num_batches: MLIF-C uses 16 (CIFAR ResNet20), 4 (CIFAR VGG16) or 128 (ImageNet).

    Returns:
        ``{module name: α}``.
    """
    num_batches = check_positive_int(num_batches, "num_batches", fix="Use at least one calibration batch.")
    quants = {n: m for n, m in model.named_modules() if isinstance(m, LogQuant)}
    if not quants:
        raise ValueError(f"calibrate_log_quant: {type(model).__name__} has no LogQuant module")
    was_training = model.training
    model.eval()
    seen = 0
    with contextlib.ExitStack() as stack:
        for q in quants.values():
            stack.enter_context(q.calibration())
        try:
            for batch in data:
                if seen >= num_batches:
                    break
                reset_net(model)
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
        finally:
            model.train(was_training)
    if seen == 0:
        raise ValueError("calibrate_log_quant: the calibration data yielded no batch")
    return {n: float(q.alpha) for n, q in quants.items()}
