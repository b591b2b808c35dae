"""QAC quantizer with learnable per-layer timesteps (algorithms.md §4.1-§4.3).

The quantizer is QCFS with ϑ = α, Q = T and φ = ½ (round half up, §0)::

    Q(x) = (α/T) · clip(⌊x·T/α + ½⌋, 0, T)          # T+1 output values {0, d, 2d, …, α}, d = α/T

Two of the three linked quantities (levels T = 2ⁿ or t, step d, clip α; ``α = d·T``) are learnable, the
third is derived. Each parameterisation is a gradient rule of one ``torch.autograd.Function`` whose parameter
gradients are exactly the straight-through results of the table in §4.1 (``r = Q(x) − x``)::

    case  learnable  derived        0 ≤ x ≤ α               x > α
    n_d      (n, d)  α = d·T        (0, r/d)                (ln2·T·d, T)
    n_alpha  (n, α)  d = α/T        (−ln2·r, r/α)           (0, 1)
    d_alpha  (d, α)  T = α/d        (r/d, 0)                (0, 1)
    t_alpha  (t, α)  d = α/t        (−r/t, r/α)             (0, 1)

All parameter gradients are 0 for x < 0; the input gradient is 1 on [0, α] and 0 outside (STE/PACT).

The continuous level count (t, 2ⁿ or α/d) becomes the integer per-layer timestep
``T_l = max(1, round(t))`` (round half up) or ``ceil(t)`` (§4.2); the forward pass uses T_l and the
backward pass is straight-through (dT/dt = 1), so the table is evaluated at T_l. In the two cases that
learn the step d (``n_d``, ``d_alpha``) the step is exact and the clip actually used is ``α = d·T_l``.

Latency term (multispike's addition, not in the QAC paper): :class:`multispike.quant.latency.LatencyRegulariser`
adds ``λ·Σ_l w_l·t_l`` (w_l = 1, or the synaptic MACs feeding layer l normalised to mean 1) with its exact gradient
through every parameterisation; with cross-entropy alone (QAC's Alg. 1) the learned t stay near their start.
Turning a ReLU network into a quantized one (§4.3 step 1) is :func:`multispike.quant.qat.prepare_qat`.

Size (over 450 lines): the four parameterisations are four autograd functions (each with its closed-form gradient
of the table above, fused and reference paths) that share one quantizer module; splitting them apart would separate
each gradient from the module that selects it. QAT preparation and the latency term are their own modules.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from .qcfs import QCFS

__all__ = ["QACQuantizer", "PARAMETERISATIONS", "T_ROUNDING", "timesteps_from_continuous", "qac_quantize",
           "quantizer_summary", "average_timestep", "AverageTimestep", "is_timestep_layer"]

PARAMETERISATIONS = ("t_alpha", "n_d", "n_alpha", "d_alpha")
T_ROUNDING = ("round", "ceil")

# Lower bounds that keep the derived quantities finite (α > 0, d > 0) during training.
_ALPHA_MIN = 1e-6
_STEP_MIN = 1e-8
_LN2 = math.log(2.0)


def timesteps_from_continuous(value: float, t_to_T: str = "round", t_max: int = 64) -> int:
    """Integer timestep ``T_l`` from a continuous level count (§4.2).

    ``round`` is round half up (``⌊v + ½⌋``, §0: 2.5 -> 3), ``ceil`` is ``⌈v⌉``; ``v`` is first clamped
    to ``[1, t_max]``, so the result is always in ``[1, t_max]``.
    """
    if t_to_T not in T_ROUNDING:
        raise ValueError(f"QAC: t_to_T must be one of {T_ROUNDING}, got {t_to_T!r}")
    if not math.isfinite(value):
        raise ValueError(f"QAC: the continuous timestep must be finite, got {value!r}; lower the learning rate "
                         f"of the quantizer parameters")
    v = min(max(float(value), 1.0), float(t_max))
    T = math.floor(v + 0.5) if t_to_T == "round" else math.ceil(v)
    return int(min(max(T, 1), t_max))


def qac_quantize(x: torch.Tensor, alpha: torch.Tensor | float, T: int) -> torch.Tensor:
    """Forward value of the quantizer, ``(α/T)·clip(⌊x·T/α + ½⌋, 0, T)``, without any gradient rule.

    The product is formed as ``level·α/T`` (the integer level times α first), the way an IF neuron's
    time-averaged payload ``(Σ_t θ·s(t))/T`` is formed, so the two agree bit for bit whenever the partial sums
    ``j·α`` are exact in floating point (e.g. α = 1.5 or 2.0).
    """
    levels = torch.clamp(torch.floor(x * T / alpha + 0.5), 0, T)
    return levels * alpha / T


def _regions(x: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the table's columns: inside ``0 ≤ x ≤ α`` and above ``x > α`` (below gets nothing)."""
    inside = (x >= 0) & (x <= alpha)
    above = x > alpha
    return inside.to(x.dtype), above.to(x.dtype)


def _save_meta(ctx, p1: torch.Tensor, p2: torch.Tensor) -> None:
    # Only shape/dtype of the parameters are kept (not the tensors), so the module may project its
    # parameters in place between forward and backward without tripping autograd's version check.
    ctx.meta = ((p1.shape, p1.dtype), (p2.shape, p2.dtype))


def _param_grad(ctx, index: int, per_element: torch.Tensor) -> torch.Tensor | None:
    """Reduce an elementwise gradient to the shape and dtype of the ``index``-th parameter (1 or 2)."""
    if not ctx.needs_input_grad[index]:
        return None
    shape, dtype = ctx.meta[index - 1]
    return per_element.sum().reshape(shape).to(dtype)


def _fused_ok(x: torch.Tensor, clip: torch.Tensor) -> bool:
    """Use the one-pass C++ kernels (dense float32/bf16 CPU input, one clip value, not while compiling)."""
    if clip.numel() != 1 or clip.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    from ..kernels import quant_cpp   # lazily: importing the neurons must not import the kernels
    return quant_cpp.quantizer_kernels_available(x)


def _fused_forward(ctx, x: torch.Tensor, clip: torch.Tensor, T: int) -> torch.Tensor:
    """Forward through the fused kernel; saves only ``x`` and the clip's value (the backward recomputes the
    level). The clip is kept as a number, not the tensor: the module projects its parameters in place on its
    next call, which may come before this backward (a quantizer used twice in one graph)."""
    from ..kernels import quant_cpp
    ctx.fused = True
    ctx.clip = clip.item()
    ctx.save_for_backward(x)
    return quant_cpp.qac_forward(x, ctx.clip, T)


def _fused_sums(ctx, g: torch.Tensor, T: int) -> tuple[torch.Tensor, float, float, float]:
    """(∂L/∂x, Σ_inside g·r, Σ_above g, clip) with ``r = q − x``: every parameterisation's gradient is a
    combination of the two sums."""
    from ..kernels import quant_cpp
    (x,) = ctx.saved_tensors
    c = ctx.clip
    gx, s_r, s_above = quant_cpp.qac_backward(x, g.contiguous(), c, T)
    return gx, s_r, s_above, c


def _scalar_grad(ctx, index: int, value: float) -> torch.Tensor | None:
    if not ctx.needs_input_grad[index]:
        return None
    shape, dtype = ctx.meta[index - 1]
    return torch.tensor(value, dtype=dtype).reshape(shape)


class _Case(NamedTuple):
    """One parameterisation's gradient rule (a row of the §4.1 table) for the shared autograd function.

    ``scale``: which parameter (1 or 2) sets the quantizer's scale ``p``; ``learns_step``: ``p`` is the step d
    (clip ``α = d·T_l``) rather than the clip α itself. ``fused(T, s_r, s_above, p)`` gives the two parameter
    gradients from the fused kernel's sums (``Σ_inside g·r``, ``Σ_above g``; ``p`` as a float);
    ``reference(T, g, inside, above, r, p)`` the two per-element gradients of the Python path (``p`` a tensor).
    """
    scale: int
    learns_step: bool
    fused: Callable[[int, float, float, float], tuple[float, float]]
    reference: Callable[..., tuple[torch.Tensor, torch.Tensor]]


_CASES: dict[str, _Case] = {
    # Case 4, learnable (t, α): ∂Q/∂t = −r/T_l, ∂Q/∂α = r/α inside; (0, 1) above.
    "t_alpha": _Case(2, False, lambda T, s_r, s_above, a: (-s_r / T, s_r / a + s_above),
                     lambda T, g, inside, above, r, a: (g * inside * (-r / T), g * (inside * r / a + above))),
    # Case 2, learnable (n, α), T = 2ⁿ: ∂Q/∂n = −ln2·r, ∂Q/∂α = r/α inside; (0, 1) above.
    "n_alpha": _Case(2, False, lambda T, s_r, s_above, a: (-_LN2 * s_r, s_r / a + s_above),
                     lambda T, g, inside, above, r, a: (g * inside * (-_LN2 * r), g * (inside * r / a + above))),
    # Case 1, learnable (n, d), α = d·2ⁿ: ∂Q/∂n = 0, ∂Q/∂d = r/d inside; (ln2·T·d, T) above.
    "n_d": _Case(2, True, lambda T, s_r, s_above, d: (s_above * _LN2 * T * d, s_r / d + s_above * T),
                 lambda T, g, inside, above, r, d: (g * above * (_LN2 * T * d), g * (inside * r / d + above * T))),
    # Case 3, learnable (d, α), T = α/d: ∂Q/∂d = r/d, ∂Q/∂α = 0 inside; (0, 1) above.
    "d_alpha": _Case(1, True, lambda T, s_r, s_above, d: (s_r / d, s_above),
                     lambda T, g, inside, above, r, d: (g * inside * r / d, g * above)),
}


class _QACFunction(torch.autograd.Function):
    """Q(x) with the straight-through gradients of one parameterisation: ``apply(x, p1, p2, T, case)``.

    The four parameterisations differ only in their gradient formulas (:data:`_CASES`); the forward value,
    the fused-kernel dispatch and the reductions to the parameters' shapes are the same for all.
    """

    @staticmethod
    def forward(ctx, x, p1, p2, T: int, case: _Case):
        ctx.T = T
        ctx.case = case
        _save_meta(ctx, p1, p2)
        scale = (p1, p2)[case.scale - 1].detach()
        if _fused_ok(x, scale):
            if not case.learns_step:
                return _fused_forward(ctx, x, scale, T)
            ctx.step = scale.to(torch.float32).item()
            return _fused_forward(ctx, x, scale.to(torch.float32) * T, T)
        ctx.fused = False
        p = scale.to(x.dtype, copy=True)   # a copy: an in-place projection before backward must not alter it
        q = qac_quantize(x, p * T if case.learns_step else p, T)
        ctx.save_for_backward(x, q, p)
        return q

    @staticmethod
    def backward(ctx, g):
        T, case = ctx.T, ctx.case
        if ctx.fused:
            gx, s_r, s_above, clip = _fused_sums(ctx, g, T)
            g1, g2 = case.fused(T, s_r, s_above, ctx.step if case.learns_step else clip)
            return gx, _scalar_grad(ctx, 1, g1), _scalar_grad(ctx, 2, g2), None, None
        x, q, p = ctx.saved_tensors
        inside, above = _regions(x, p * T if case.learns_step else p)
        e1, e2 = case.reference(T, g, inside, above, q - x, p)
        return g * inside, _param_grad(ctx, 1, e1), _param_grad(ctx, 2, e2), None, None


class QACQuantizer(nn.Module):
    """QAC activation quantizer with a learnable clip and a learnable per-layer timestep (§4.1, §4.2).

    ``Q(x) = (α/T_l)·clip(⌊x·T_l/α + ½⌋, 0, T_l)``, where ``T_l`` is the integer timestep this layer will
    run for after conversion (:func:`multispike.convert.mixed_timestep.to_mixed_timestep_snn`).

    Args:
        param: which pair is learnable - ``"t_alpha"`` (case 4, used by QAC for all results),
            ``"n_d"`` (case 1), ``"n_alpha"`` (case 2) or ``"d_alpha"`` (case 3).
        alpha: initial clip α > 0 (QCFS default 8.0).
        t: initial continuous timestep in ``[1, t_max]`` (default 4.0); cases 1-2 start from ``n = log₂ t``,
            cases 1 and 3 from ``d = α/t``.
        t_to_T: ``"round"`` (round half up, default) or ``"ceil"``: how the continuous level count becomes
            the integer ``T_l`` (straight-through in backward).
        t_max: upper bound of ``T_l`` (64); also bounds case 3's ``d ≥ α/t_max`` so ``T = α/d`` stays finite.

    In training mode every forward first projects the parameters back into their valid range
    (``t ∈ [1, t_max]``, ``n ∈ [0, log₂ t_max]``, ``α > 0``, ``α/t_max ≤ d ≤ α`` in case 3), i.e. projected
    gradient descent; :meth:`project_` does the same on demand.

    Example::

        >>> import torch
        >>> q = QACQuantizer(alpha=1.0, t=4.0)
        >>> q(torch.tensor([-0.3, 0.1, 0.2, 0.9, 3.0])).tolist()
        [0.0, 0.0, 0.25, 1.0, 1.0]
        >>> q.timesteps, q.bit_width, q.alpha
        (4, 2.0, 1.0)
    """

    timestep_layer = True  # marks modules that quantizer_summary / average_timestep report

    def __init__(self, param: str = "t_alpha", alpha: float = 8.0, t: float = 4.0, t_to_T: str = "round",
                 t_max: int = 64) -> None:
        super().__init__()
        if param not in PARAMETERISATIONS:
            raise ValueError(f"QACQuantizer: param must be one of {PARAMETERISATIONS}, got {param!r} "
                             f"('t_alpha' is the paper's case 4)")
        if t_to_T not in T_ROUNDING:
            raise ValueError(f"QACQuantizer: t_to_T must be one of {T_ROUNDING}, got {t_to_T!r}")
        if isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1:
            raise ValueError(f"QACQuantizer: t_max must be an integer >= 1, got {t_max!r}")
        alpha = float(alpha)
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"QACQuantizer: alpha must be a finite number > 0, got {alpha!r} (QCFS uses 8.0)")
        t = float(t)
        if not (math.isfinite(t) and 1.0 <= t <= t_max):
            raise ValueError(f"QACQuantizer: t must be in [1, t_max={t_max}] (a layer runs at least one timestep), "
                             f"got {t!r}; use t >= 1 or raise t_max")
        self.param = param
        self.t_to_T = t_to_T
        self.t_max = t_max
        if param == "t_alpha":
            self.t = nn.Parameter(torch.tensor(t))
            self.clip = nn.Parameter(torch.tensor(alpha))
        elif param == "n_alpha":
            self.n = nn.Parameter(torch.tensor(math.log2(t)))
            self.clip = nn.Parameter(torch.tensor(alpha))
        elif param == "n_d":
            self.n = nn.Parameter(torch.tensor(math.log2(t)))
            self.d = nn.Parameter(torch.tensor(alpha / t))
        else:  # d_alpha
            self.d = nn.Parameter(torch.tensor(alpha / t))
            self.clip = nn.Parameter(torch.tensor(alpha))
        # 0: T_l = round(t) follows the learnable pair; k >= 1: T_l is fixed at k (fix_timesteps) and the
        # parameter that only sets the level count gets no gradient. Saved with the model, so a fixed layer
        # stays fixed through checkpoints, EMA copies and conversion.
        self.register_buffer("fixed_T", torch.zeros((), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # checkpoints written before fixed_T existed load as "not fixed"
        state_dict.setdefault(prefix + "fixed_T", torch.zeros((), dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # --- fixing the timestep (the end of QAT) ---------------------------------------------------------------
    @property
    def is_fixed(self) -> bool:
        """Whether ``T_l`` is fixed (:meth:`fix_timesteps`) instead of following the learnable pair."""
        return int(self.fixed_T) > 0

    def _level_parameter(self) -> nn.Parameter:
        """The parameter that only sets the level count once the scale is known: ``t`` or ``n`` (cases 4, 2, 1;
        case 1's clip is ``d·T_l``), or α in case 3 (``T = α/d``, the clip is ``d·T_l``)."""
        p1, p2 = self.learnable_pair()
        return p2 if self.param == "d_alpha" else p1

    @torch.no_grad()
    def fix_timesteps(self, T: int | None = None) -> int:
        """Fix this layer's timestep at ``T`` (default: the current ``T_l``) and return it.

        From now on the forward pass uses ``T`` whatever the learnable pair says, the level parameter (``t``,
        ``n``, or α in case 3) is set to represent ``T`` exactly and gets no gradient, and
        :meth:`continuous_t` is the constant ``T`` (the latency term no longer pulls on it). The scale
        parameter (α, or the step d) keeps learning, so the weights and clip adapt to the final ``T`` - the
        fine-tuning phase of mixed-precision training with learned bit widths.
        """
        T = self.timesteps if T is None else T
        if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= self.t_max:
            raise ValueError(f"QACQuantizer.fix_timesteps: T must be an integer in [1, t_max={self.t_max}], got {T!r}")
        level = self._level_parameter()
        if self.param == "t_alpha":
            level.fill_(float(T))
        elif self.param in ("n_alpha", "n_d"):
            level.fill_(math.log2(T))
        else:   # d_alpha: α = d·T
            level.copy_(self.d.detach() * T)
        self.fixed_T.fill_(T)
        return T

    def unfix_timesteps(self) -> None:
        """Let ``T_l`` follow the learnable pair again (undoes :meth:`fix_timesteps`)."""
        self.fixed_T.zero_()

    # --- the learnable pair, in the order the autograd functions take them -------------------------------
    def learnable_pair(self) -> tuple[nn.Parameter, nn.Parameter]:
        """The two learnable parameters ``(p1, p2)`` of this parameterisation, e.g. ``(t, α)`` for case 4."""
        return {"t_alpha": (getattr(self, "t", None), getattr(self, "clip", None)),
                "n_alpha": (getattr(self, "n", None), getattr(self, "clip", None)),
                "n_d": (getattr(self, "n", None), getattr(self, "d", None)),
                "d_alpha": (getattr(self, "d", None), getattr(self, "clip", None))}[self.param]

    @torch.no_grad()
    def project_(self) -> None:
        """Project the learnable parameters back into their valid range, in place."""
        if self.param in ("t_alpha", "n_alpha", "d_alpha"):
            self.clip.clamp_(min=_ALPHA_MIN)
        if self.param == "t_alpha":
            self.t.clamp_(1.0, float(self.t_max))
        if self.param in ("n_alpha", "n_d"):
            self.n.clamp_(0.0, math.log2(self.t_max))
        if self.param == "n_d":
            self.d.clamp_(min=_STEP_MIN)
        if self.param == "d_alpha" and self.is_fixed:   # α no longer sets T: only keep the step positive
            self.d.clamp_(min=_STEP_MIN)
        elif self.param == "d_alpha":
            # Case 3 diverges as d -> 0 (T = α/d -> ∞, the paper's "INF"): keep T = α/d in [1, t_max].
            a = float(self.clip)
            self.d.clamp_(a / self.t_max, a)

    # --- derived quantities -------------------------------------------------------------------------------
    @property
    def continuous_timesteps(self) -> float:
        """The continuous level count before rounding: ``t``, ``2ⁿ`` or ``α/d`` (``T_l`` once fixed)."""
        if self.is_fixed:
            return float(self.fixed_T)
        if self.param == "t_alpha":
            return float(self.t.detach())
        if self.param in ("n_alpha", "n_d"):
            return 2.0 ** float(self.n.detach())
        return float(self.clip.detach()) / max(float(self.d.detach()), _STEP_MIN)

    def continuous_t(self) -> torch.Tensor:
        """The continuous level count as a differentiable function of the learnable pair:
        ``t`` (case 4), ``2ⁿ`` (cases 1-2) or ``α/d`` (case 3). Scalar tensor with the autograd graph; this
        is what :class:`LatencyRegulariser` penalises (``∂/∂t = 1``, ``∂/∂n = ln2·2ⁿ``, ``∂/∂α = 1/d``,
        ``∂/∂d = −α/d²``). Once fixed (:meth:`fix_timesteps`): the constant ``T_l``, without a graph."""
        if self.is_fixed:
            return self.fixed_T.to(self.learnable_pair()[0].dtype)
        if self.param == "t_alpha":
            return self.t
        if self.param in ("n_alpha", "n_d"):
            return torch.exp2(self.n)
        return self.clip / self.d

    @property
    def timesteps(self) -> int:
        """The integer timestep ``T_l`` this layer runs for (``max(1, round(t))`` or ``ceil``; or the fixed one)."""
        if self.is_fixed:
            return int(self.fixed_T)
        return timesteps_from_continuous(self.continuous_timesteps, self.t_to_T, self.t_max)

    @property
    def bit_width(self) -> float:
        """``n_l = log₂ T_l`` (can be non-integer)."""
        return math.log2(self.timesteps)

    def alpha_tensor(self) -> torch.Tensor:
        """The clip α actually used (``d·T_l`` when d is learnable), as a detached tensor in the params' dtype."""
        if self.param in ("n_d", "d_alpha"):
            return self.d.detach() * self.timesteps
        return self.clip.detach().clone()

    @property
    def alpha(self) -> float:
        """The clip α actually used - the threshold θ_l of the converted IF neuron."""
        return float(self.alpha_tensor())

    @property
    def threshold(self) -> torch.Tensor:
        """α as a detached tensor - the name QCFS uses for its clip ϑ, so code written for QCFS
        (``module.threshold``) reads the clip of either quantizer."""
        return self.alpha_tensor()

    @property
    def step(self) -> float:
        """Quantization step ``d = α/T_l``."""
        return self.alpha / self.timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.project_()
        p1, p2 = self.learnable_pair()
        if self.is_fixed:   # the level parameter no longer matters: no gradient reaches it
            level = self._level_parameter()
            p1, p2 = (p.detach() if p is level else p for p in (p1, p2))
        return _QACFunction.apply(x, p1, p2, self.timesteps, _CASES[self.param])

    def extra_repr(self) -> str:
        fixed = ", fixed" if self.is_fixed else ""
        return (f"param={self.param!r}, T={self.timesteps}{fixed} (t={self.continuous_timesteps:.4g}), "
                f"alpha={self.alpha:.4g}, t_to_T={self.t_to_T!r}, t_max={self.t_max}")


# ----------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------
def is_timestep_layer(module: nn.Module) -> bool:
    """Whether ``module`` has its own timestep: a QACQuantizer, a QCFS (T = levels) or an AlignedNeuron."""
    return isinstance(module, QCFS) or bool(getattr(type(module), "timestep_layer", False))


def _layer_T_alpha(module: nn.Module) -> tuple[int, float]:
    if isinstance(module, QCFS):
        return module.levels, float(module.threshold.detach())
    return int(module.timesteps), float(module.alpha)


def quantizer_summary(model: nn.Module) -> list[dict]:
    """One JSON-ready dict per timestep layer of ``model``, in module order.

    Works on a QAT model (QACQuantizer, QCFS) and on a converted mixed-timestep SNN (AlignedNeuron).
    Keys: ``layer`` (module name), ``kind``, ``T`` (integer T_l), ``bit_width`` (log₂ T_l), ``alpha``
    (clip α, equal to the SNN threshold θ_l) and, for QAC quantizers, ``t`` (the continuous value),
    ``param`` and ``fixed`` (:meth:`QACQuantizer.fix_timesteps`). The training engine logs this every epoch.
    """
    rows = []
    for name, m in model.named_modules():
        if not is_timestep_layer(m):
            continue
        T, alpha = _layer_T_alpha(m)
        row = {"layer": name or type(m).__name__, "kind": type(m).__name__, "T": T, "bit_width": math.log2(T),
               "alpha": alpha}
        if isinstance(m, QACQuantizer):
            row.update(t=m.continuous_timesteps, param=m.param, fixed=m.is_fixed)
        rows.append(row)
    return rows


class AverageTimestep(NamedTuple):
    """``plain``: arithmetic mean of T_l over timestep layers (the paper's "T", e.g. 2.33);
    ``op_weighted``: ``Σ T_l·ops_l / Σ ops_l`` (None when no op counts were given)."""

    plain: float
    op_weighted: float | None = None


def average_timestep(model: nn.Module, weighted_by_ops: Mapping[str, float] | Sequence[float] | None = None
                     ) -> AverageTimestep:
    """Average timestep of ``model``'s quantized/spiking layers (§4.2).

    Args:
        model: a QAT model or a converted mixed-timestep SNN.
        weighted_by_ops: per-layer operation counts (e.g. MACs of the synaptic op feeding each layer, at
            one timestep), either a mapping from the layer names of :func:`quantizer_summary` to counts or a
            sequence in that order.

    Example::

        >>> from torch import nn
        >>> net = nn.Sequential(QACQuantizer(t=2.0), QACQuantizer(t=3.0), QACQuantizer(t=2.0))
        >>> average_timestep(net, weighted_by_ops=[1.0, 2.0, 1.0])
        AverageTimestep(plain=2.3333333333333335, op_weighted=2.5)
    """
    rows = quantizer_summary(model)
    if not rows:
        raise ValueError(f"average_timestep: {type(model).__name__} has no quantized or spiking layers "
                         f"(QACQuantizer, QCFS or AlignedNeuron); run prepare_qat() or convert it first")
    Ts = [r["T"] for r in rows]
    plain = sum(Ts) / len(Ts)
    if weighted_by_ops is None:
        return AverageTimestep(plain, None)
    if isinstance(weighted_by_ops, Mapping):
        missing = [r["layer"] for r in rows if r["layer"] not in weighted_by_ops]
        if missing:
            raise ValueError(f"average_timestep: weighted_by_ops lacks op counts for layers {missing}; "
                             f"give one count per layer of quantizer_summary(model)")
        ops = [float(weighted_by_ops[r["layer"]]) for r in rows]
    else:
        ops = [float(v) for v in weighted_by_ops]
        if len(ops) != len(rows):
            raise ValueError(f"average_timestep: got {len(ops)} op counts for {len(rows)} timestep layers; give "
                             f"one per layer, in the order of quantizer_summary(model)")
    if any(not math.isfinite(o) or o < 0 for o in ops) or sum(ops) <= 0:
        raise ValueError(f"average_timestep: op counts must be finite, >= 0 and not all 0, got {ops}")
    return AverageTimestep(plain, sum(T * o for T, o in zip(Ts, ops)) / sum(ops))


# Names that moved to their own modules; the old spelling ``multispike.quant.qac.<name>`` still works and warns.
# Resolved on first use (not imported here) because those modules import this one.
_MOVED = {**dict.fromkeys(("LATENCY_WEIGHTINGS", "LatencyRegulariser", "quantizer_macs", "quantizer_parameters",
                           "format_timestep_table"), "latency"),
          **dict.fromkeys(("prepare_qat", "QATReport", "find_functional_activations", "UNSUPPORTED_ACTIVATIONS"), "qat")}


def __getattr__(name: str):
    where = _MOVED.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    import warnings as _warnings

    _warnings.warn(f"multispike.quant.qac.{name} moved to multispike.quant.{where}.{name}; import it from there",
                   DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(f"{__package__}.{where}"), name)
