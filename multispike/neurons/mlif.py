"""One-hot multi-level LIF (M-LIF) neuron: binary-weighted spike lanes with at most one lane firing
per step (algorithms.md §5.1-§5.3, §5.6, §9 item 5).

A neuron has one membrane ``u`` and ``S`` output lanes with weights ``2^s``. With ``r = u/θ``::

    o_s = 1  iff  2^s < r <= 2^{s+1}     (0 <= s < S-1)         lane_bounds="paper"  (MLIF-P eq. 8)
    o_s = 1  iff  2^s <= r < 2^{s+1}                              lane_bounds="floor"  (MLIF-C fast kernel)
    o_{S-1} = 1  iff  r > 2^{S-1}  (resp. >=)                     the top lane is open above
    payload  o = Σ_s 2^s·o_s ∈ {0, 1, 2, 4, ..., 2^{S-1}}

The lowest edge (does any lane fire?) is ``r > 1`` or, with ``fire_ge=True``, ``r >= 1``. The merged payload
is what the next synaptic op consumes (``W·Σ 2^s o_s = W·o``); the lane tensor ``[T, B, S, ...]`` is returned
on request for statistics. :class:`OneHotMLIF` can scale what it sends by a *payload scale* ``c`` (a spike on
lane s is then worth ``c·2^s``; the dynamics, edges and reset stay in membrane units): ``c = 1`` is the paper's
direct-training convention, ``c = √2·θ`` makes a T = 1 layer equal to a log-quantized activation (§5.4, see
:func:`multispike.convert.mlif_init.mlif_hybrid_init`). The *scaled* variant (transformers) emits ``2^{s-S+1}`` with edges at
``2^{s-S+1}·θ``; it equals ``2^{-(S-1)}·M-LIF(θ/2^{S-1})`` exactly, forward and backward.

Membrane update (post-reset membrane ``v``, merged payload ``o``)::

    soft, reset_leak=True  (MLIF-C static CNNs):  m(t) = β·v(t-1) + I(t);   v(t) = m(t) − θ·o(t)
    soft, reset_leak=False (MLIF-P eq. 6):         u(t) = β·u(t-1) + I(t) − θ·o(t-1)   (reset not leaked)
    hard (MLIF-C DVS / transformers):              m(t) = β·v(t-1) + I(t);   v(t) = m(t)·(1 − Σ_s o_s(t))
    decay_input=True (SpikingJelly LIF, SDT):      m(t) = v(t-1) + (I(t) − v(t-1))·(1 − β)     (τ = 1/(1 − β))

Surrogate gradients (§5.3). With ``g_k(u) = (1/(2^kθ))·h'(u/(2^kθ) − 1)`` (``h'`` the triangle
``γ·max(0, 1−|x|)`` or the sigmoid' ``α·σ(αx)(1−σ(αx))``), the per-lane window derivative is
``∂o_s/∂u = g_s − g_{s+1}`` (``paper_difference``, default), ``g_s + g_{s+1}`` (``code_sum``, the sign slip of
MLIF-C's CNN/DVS code) or the difference with *unscaled* widths ``h'(u/θ − 2^k)/θ`` (``fast_unscaled``, MLIF-C's
fast transformer kernel); the top lane has no falling edge. The merged payload uses the telescoped sum
``∂o/∂u = g_0 + Σ_{s>=1} 2^{s-1} g_s`` (paper). Every window is written in ``r = u/θ``, so θ receives its
gradient by autograd through the normalisation (and through a non-detached soft reset).

Size (over 450 lines): the one-hot M-LIF family (§5.1-§5.4): lanes, payload, the multi-step function with its
surrogates, the T = 1 closed form and the module, kept together so an option is added in one file.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .._dispatch import get_kernel, register_kernel, resolve_backend
from .._validate import check_choice as _check_choice
from .params import MLIFParameters
from .base import MemoryModule, _finite_number, check_positive_int, check_sequence
from .if_lif import LIFState
from .surrogate import Sigmoid, SurrogateFunction, Triangle

__all__ = ["OneHotMLIF", "mlif_multistep", "mlif_payload", "mlif_lanes", "mlif_closed_form", "MLIFExtras",
           "MLIF_SURROGATES", "MLIF_RESETS", "LANE_BOUNDS", "SURROGATE_SHAPES"]

MLIF_SURROGATES = ("paper_difference", "code_sum", "fast_unscaled")
MLIF_RESETS = ("soft", "hard")
LANE_BOUNDS = ("paper", "floor")
SURROGATE_SHAPES = ("triangle", "sigmoid")


class MLIFExtras(NamedTuple):
    """Optional outputs of :func:`mlif_multistep`: the lane tensor ``[T, B, S, ...]`` and the post-reset
    membrane ``[T, B, ...]`` (``None`` unless requested)."""

    lanes_seq: torch.Tensor | None = None
    v_seq: torch.Tensor | None = None


class _Window(NamedTuple):
    """Static configuration of the lane function (hashable; kept on the autograd context)."""

    lanes: int
    floor: bool          # lane_bounds == "floor"
    fire_ge: bool
    sign: float          # −1: falling edge subtracted (paper, fast); +1: added (code_sum)
    unscaled: bool       # fast_unscaled: h'(r − 2^k) instead of h'(r/2^k − 1)/2^k
    shape: SurrogateFunction


# ----------------------------------------------------------------------------------------------- validation
def _check_lanes(lanes, owner: str) -> int:
    return check_positive_int(lanes, f"{owner}: lanes (S)", minimum=1,
                              fix="An M-LIF neuron needs S >= 1 spike lanes; S = 1 is the plain LIF.")


def _make_shape(shape, gamma: float, alpha: float, owner: str) -> SurrogateFunction:
    if isinstance(shape, SurrogateFunction):
        return shape
    _check_choice(shape, "surrogate shape", SURROGATE_SHAPES, owner)
    if shape == "triangle":
        # DIET/M-LIF triangle on the normalised argument: h'(x) = γ·max(0, 1 − |x|) (area γ).
        return Triangle(gamma=_finite_number(gamma, "gamma", owner, positive=True), form="diet")
    return Sigmoid(alpha=_finite_number(alpha, "alpha", owner, positive=True))


def _check_threshold(theta, owner: str) -> None:
    if isinstance(theta, torch.Tensor):
        if torch.compiler.is_compiling():
            return
        if theta.numel() == 1:   # the usual learnable scalar: one read instead of two reductions
            value = theta.item()
            ok = math.isfinite(value) and value > 0
        else:
            ok = bool(torch.isfinite(theta).all()) and bool((theta > 0).all())
        if not ok:
            raise ValueError(f"{owner}: v_threshold must be finite and > 0 everywhere, got {theta.detach()}; a "
                             f"learned threshold that went negative needs a smaller threshold learning rate")
    else:
        _finite_number(theta, "v_threshold", owner, positive=True)


def _window(lanes: int, lane_bounds: str, fire_ge: bool, surrogate: str, shape: SurrogateFunction) -> _Window:
    return _Window(lanes=lanes, floor=lane_bounds == "floor", fire_ge=bool(fire_ge),
                   sign=1.0 if surrogate == "code_sum" else -1.0, unscaled=surrogate == "fast_unscaled",
                   shape=shape)


# ----------------------------------------------------------------------------------------------- lane function
def _edges(r: torch.Tensor, cfg: _Window) -> list[torch.Tensor]:
    """``cmp_k``: is ``r`` above edge ``2^k`` (k = 0: any lane fires)? Nested, since the edges increase."""
    above = [(r >= 1.0) if cfg.fire_ge else (r > 1.0)]
    for k in range(1, cfg.lanes):
        edge = float(2 ** k)
        above.append((r >= edge) if cfg.floor else (r > edge))
    return above


def _lane_sum(r: torch.Tensor, weights, cfg: _Window) -> torch.Tensor:
    """Forward of ``Σ_s w_s·o_s(r)``; ``weights`` is a tuple of floats or a tensor with the lane dim at 1."""
    above = _edges(r, cfg)
    if isinstance(weights, torch.Tensor):
        out = torch.where(above[0], weights[:, 0], torch.zeros((), dtype=r.dtype, device=r.device))
        for k in range(1, cfg.lanes):
            out = torch.where(above[k], weights[:, k], out)
        return out.to(r.dtype)
    out = above[0].to(r.dtype) * weights[0] if weights[0] != 1.0 else above[0].to(r.dtype)
    for k in range(1, cfg.lanes):
        out = torch.where(above[k], weights[k], out)
    return out


def _window_grad(r: torch.Tensor, weights, cfg: _Window) -> torch.Tensor:
    """``Σ_s w_s·∂o_s/∂r`` = ``Σ_k c_k·φ_k(r)`` with ``c_k = w_k + sign·w_{k−1}`` (per-lane windows summed).

    ``φ_k(r) = h'(r/2^k − 1)/2^k`` (edge k in units of θ) or ``h'(r − 2^k)`` for ``fast_unscaled``.
    With ``w_s = 2^s`` and ``sign = −1`` this is the telescoped ``φ_0 + Σ_{k>=1} 2^{k−1}φ_k`` of §5.3.
    """
    total = None
    for k in range(cfg.lanes):
        if isinstance(weights, torch.Tensor):
            c = weights[:, k] if k == 0 else weights[:, k] + cfg.sign * weights[:, k - 1]
        else:
            c = weights[k] if k == 0 else weights[k] + cfg.sign * weights[k - 1]
            if c == 0.0:
                continue
        if cfg.unscaled:
            phi = cfg.shape.derivative(r - float(2 ** k))
        else:
            scale = 2.0 ** -k
            phi = cfg.shape.derivative(r * scale - 1.0)
            if k:
                phi = phi * scale
        term = phi * c if not (isinstance(c, float) and c == 1.0) else phi
        total = term if total is None else total + term
    return total if total is not None else torch.zeros_like(r)


class _LaneSumFn(torch.autograd.Function):
    """Merged payload ``Σ_s w_s·o_s(r)``: exact step forward, telescoped window derivative backward."""

    @staticmethod
    def forward(ctx, r, weights_tensor, weights_const, cfg):
        weights = weights_tensor if weights_tensor is not None else weights_const
        ctx.save_for_backward(r, weights_tensor)
        ctx.weights_const = weights_const
        ctx.cfg = cfg
        return _lane_sum(r, weights, cfg)

    @staticmethod
    def backward(ctx, grad_out):
        r, weights_tensor = ctx.saved_tensors
        weights = weights_tensor if weights_tensor is not None else ctx.weights_const
        return grad_out * _window_grad(r, weights, ctx.cfg), None, None, None


class _LanesFn(torch.autograd.Function):
    """One-hot lanes ``[B, S, ...]`` from ``r [B, ...]``; backward applies each lane's window derivative."""

    @staticmethod
    def forward(ctx, r, cfg):
        ctx.save_for_backward(r)
        ctx.cfg = cfg
        above = _edges(r, cfg)
        lanes = [above[s] & ~above[s + 1] for s in range(cfg.lanes - 1)] + [above[-1]]
        return torch.stack(lanes, dim=1).to(r.dtype)

    @staticmethod
    def backward(ctx, grad_lanes):
        (r,) = ctx.saved_tensors
        return _window_grad(r, grad_lanes, ctx.cfg), None


def _resolve_window(lanes, lane_bounds, fire_ge, surrogate, shape, gamma, alpha, owner) -> _Window:
    S = _check_lanes(lanes, owner)
    _check_choice(lane_bounds, "lane_bounds", LANE_BOUNDS, owner)
    _check_choice(surrogate, "surrogate", MLIF_SURROGATES, owner)
    return _window(S, lane_bounds, fire_ge, surrogate, _make_shape(shape, gamma, alpha, owner))


def mlif_payload(r: torch.Tensor, lanes: int = 3, *, lane_bounds: str = "paper", fire_ge: bool = False,
                 surrogate: str = "paper_difference", shape: str | SurrogateFunction = "triangle",
                 gamma: float = 0.3, alpha: float = 4.0, scaled: bool = False) -> torch.Tensor:
    """Merged one-hot M-LIF payload of a normalised membrane ``r = u/θ`` (any shape).

    Forward: ``0`` or ``2^s`` (``2^{s−S+1}`` if ``scaled``; then ``r`` is measured in units of the lowest edge
    ``θ/2^{S−1}``). Backward: the telescoped window derivative ``Σ_k c_k·φ_k(r)`` of §5.3.

    Example::

        >>> import torch
        >>> mlif_payload(torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 9.0]), lanes=3).tolist()
        [0.0, 0.0, 1.0, 1.0, 2.0, 4.0]
    """
    cfg = _resolve_window(lanes, lane_bounds, fire_ge, surrogate, shape, gamma, alpha, "mlif_payload")
    unit = 2.0 ** -(cfg.lanes - 1) if scaled else 1.0
    return _LaneSumFn.apply(r, None, tuple(unit * 2.0 ** s for s in range(cfg.lanes)), cfg)


def mlif_lanes(r: torch.Tensor, lanes: int = 3, *, lane_bounds: str = "paper", fire_ge: bool = False,
               surrogate: str = "paper_difference", shape: str | SurrogateFunction = "triangle",
               gamma: float = 0.3, alpha: float = 4.0) -> torch.Tensor:
    """One-hot lane tensor of ``r = u/θ``: shape ``[r.shape[0], S, *r.shape[1:]]`` (lane dim 1).

    Each lane's backward is its own window derivative (``g_s − g_{s+1}``, or ``g_s + g_{s+1}`` for
    ``code_sum``), so ``Σ_s 2^s·lanes[:, s]`` has the same gradient as :func:`mlif_payload` (telescoping).
    """
    if not isinstance(r, torch.Tensor) or r.dim() < 1:
        raise ValueError("mlif_lanes: r must be a tensor with a leading batch dim (the lanes go to dim 1)")
    cfg = _resolve_window(lanes, lane_bounds, fire_ge, surrogate, shape, gamma, alpha, "mlif_lanes")
    return _LanesFn.apply(r, cfg)


def mlif_closed_form(r: torch.Tensor, lanes: int = 3, *, lane_bounds: str = "paper",
                     fire_ge: bool = False) -> torch.Tensor:
    """The closed form of §5.1 / §5.4 (no gradient): ``0`` if not fired, else
    ``2^{clip(⌈log₂ r⌉ − 1, 0, S−1)}`` (paper bounds) or ``2^{clip(⌊log₂ r⌋, 0, S−1)}`` (floor bounds).

    It is the T = 1 ANN form ``2^{c(x)}`` with ``x = ⌈log₂(u/θ)⌉ − 1``. Evaluated through ``log2``, it agrees
    with the lane rule except within rounding distance of an edge (``log2`` of ``2^k·(1+ε)`` rounds to ``k``).
    """
    S = _check_lanes(lanes, "mlif_closed_form")
    _check_choice(lane_bounds, "lane_bounds", LANE_BOUNDS, "mlif_closed_form")
    with torch.no_grad():
        fired = (r >= 1) if fire_ge else (r > 1)
        safe = torch.where(fired, r, torch.ones_like(r))
        e = torch.floor(torch.log2(safe)) if lane_bounds == "floor" else torch.ceil(torch.log2(safe)) - 1
        return torch.where(fired, torch.exp2(e.clamp(0, S - 1)), torch.zeros_like(r))


# ----------------------------------------------------------------------------------------------- dynamics
def mlif_multistep(
    x_seq: torch.Tensor,
    state: LIFState | None = None,
    *,
    lanes: int = 3,
    v_threshold: float | torch.Tensor = 1.0,
    leak: float | torch.Tensor = 1.0,
    v_init: float | torch.Tensor = 0.0,
    reset: str = "soft",
    reset_leak: bool = False,
    decay_input: bool = False,
    lane_bounds: str = "paper",
    scaled: bool = False,
    surrogate: str = "paper_difference",
    shape: str | SurrogateFunction = "triangle",
    gamma: float = 0.3,
    alpha: float = 4.0,
    fire_ge: bool = False,
    detach_reset: bool = False,
    lane_mask: torch.Tensor | None = None,
    return_lanes: bool = False,
    store_v_seq: bool = False,
) -> tuple[torch.Tensor, LIFState, MLIFExtras]:
    """Reference multi-step one-hot M-LIF dynamics (the function fused ``"mlif"`` kernels must match).

    Args:
        x_seq: input currents ``I = W·o^{l−1} + b``, time-major ``[T, B, ...]``.
        state: :class:`LIFState` from a previous call (``v`` post-reset membrane, ``last_reset`` = θ·o of the
            previous step for the paper form); ``None`` starts from ``u(0) = v_init``.
        lanes: S >= 1 (S = 1 is the LIF of §1 with ``fire_ge=False``).
        v_threshold: θ > 0 (float or tensor broadcastable to one step; may require grad).
        leak: β (float or tensor; may require grad).
        v_init: initial membrane ``u(0)`` (0 in MLIF-P).
        reset: ``"soft"`` (subtract θ·o) or ``"hard"`` (``v = m·(1 − Σ_s o_s)``).
        reset_leak: soft reset only. True: code form (reset subtracted at once and leaked at the next step);
            False: paper form ``u(t) = β·u(t−1) + I(t) − θ·o(t−1)``. Ignored for the hard reset.
        decay_input: SpikingJelly's ``decay_input`` charge ``m = v + (I − v)·(1 − β)`` (the transformers of
            MLIF-C: τ = 2, i.e. β = 0.5, hard reset); needs ``reset="hard"`` or ``reset_leak=True``.
        lane_bounds: ``"paper"`` ``(2^s, 2^{s+1}]`` or ``"floor"`` ``[2^s, 2^{s+1})``.
        scaled: emit ``2^{s−S+1}`` with edges at ``2^{s−S+1}·θ`` (soft reset subtracts θ·payload).
        surrogate: ``"paper_difference"`` (default), ``"code_sum"`` or ``"fast_unscaled"``.
        shape: ``"triangle"`` (width γ), ``"sigmoid"`` (sharpness α) or any :class:`SurrogateFunction`
            whose ``derivative`` is used as ``h'`` on the normalised argument.
        gamma, alpha: triangle γ (0.3 static CNNs, 1.0 DVS) and sigmoid α (4, transformers).
        fire_ge: lowest edge ``r >= 1`` instead of ``r > 1``.
        detach_reset: the reset term gets no gradient through the spikes.
        lane_mask: optional multiplicative per-lane weights ``[B, S, ...]`` applied to the *emitted* payload
            (dropout, §5.6); the neuron's own reset uses the unmasked payload.
        return_lanes: also return the one-hot lanes ``[T, B, S, ...]`` (the neuron's own spikes, before
            ``lane_mask``).
        store_v_seq: also return the post-reset membrane at every step.

    Returns:
        ``(payload_seq, final_state, MLIFExtras(lanes_seq, v_seq))``.

    Example::

        >>> import torch
        >>> y, state, _ = mlif_multistep(torch.tensor([[3.0], [3.0], [3.0]]), lanes=3, reset_leak=True)
        >>> y.flatten().tolist()     # u = 3 -> 2 (v=1); u = 4 -> 2 (v=2); u = 5 -> 4 (v=1)
        [2.0, 2.0, 4.0]
    """
    owner = "mlif_multistep"
    check_sequence(x_seq, owner)
    cfg = _resolve_window(lanes, lane_bounds, fire_ge, surrogate, shape, gamma, alpha, owner)
    _check_choice(reset, "reset", MLIF_RESETS, owner)
    _check_threshold(v_threshold, owner)
    S = cfg.lanes
    theta = v_threshold
    # Scaled M-LIF(θ) is 2^{-(S-1)}·M-LIF(θ/2^{S-1}): normalise by the lowest edge. Powers of two keep it exact.
    unit = 2.0 ** -(S - 1) if scaled else 1.0
    theta_edge = theta * unit if scaled else theta
    weights = tuple(unit * 2.0 ** s for s in range(S))
    if lane_mask is not None:
        expected = (x_seq.shape[1], S, *x_seq.shape[2:])
        if tuple(lane_mask.shape) != expected:
            raise ValueError(f"{owner}: lane_mask must have shape [B, S, ...] = {expected}, got "
                             f"{tuple(lane_mask.shape)}")
        masked_weights = lane_mask * torch.tensor(weights, dtype=lane_mask.dtype, device=lane_mask.device).view(
            1, S, *([1] * (x_seq.dim() - 2)))
    soft = reset == "soft"
    paper_form = soft and not reset_leak
    if decay_input and paper_form:
        raise ValueError(f"{owner}: decay_input=True (SpikingJelly LIF charge) needs reset='hard' or the code form "
                         f"reset_leak=True; the paper form subtracts the reset at the next step")
    if state is None:
        v = torch.zeros_like(x_seq[0]) + v_init
        last_reset = torch.zeros_like(x_seq[0]) if paper_form else None
    else:
        v, last_reset = state.v, state.last_reset
        if paper_form and last_reset is None:
            last_reset = torch.zeros_like(v)
    ys, lanes_out, vs = [], [], []
    for t in range(x_seq.shape[0]):
        current = x_seq[t]
        if paper_form:
            # u(t) = β·u(t−1) + I − θ·o(t−1) with u(t−1) = v(t−1) + θ·o(t−1) (same expression as lif_multistep)
            m = leak * (v + last_reset) + current - last_reset
        elif decay_input:
            # SpikingJelly: v + (I − (v − V_r))/τ with V_r = 0; (1 − β) = 1/τ is exact for τ = 2
            m = v + (current - v) * (1.0 - leak)
        else:
            m = leak * v + current
        r = m / theta_edge
        o = _LaneSumFn.apply(r, None, weights, cfg)
        ys.append(o if lane_mask is None else _LaneSumFn.apply(r, masked_weights, None, cfg))
        if return_lanes:
            lanes_out.append(_LanesFn.apply(r, cfg))
        if soft:
            reset_amount = theta * (o.detach() if detach_reset else o)
            v = m - reset_amount
            if paper_form:
                last_reset = reset_amount
        else:
            fired = _LaneSumFn.apply(r, None, (1.0,) * S, cfg)
            v = m * (1.0 - (fired.detach() if detach_reset else fired))
        if store_v_seq:
            vs.append(v)
    extras = MLIFExtras(torch.stack(lanes_out) if return_lanes else None, torch.stack(vs) if store_v_seq else None)
    return torch.stack(ys), LIFState(v, last_reset), extras


register_kernel("mlif", "torch", mlif_multistep)


# ----------------------------------------------------------------------------------------------- module
class OneHotMLIF(MemoryModule):
    """One-hot multi-level LIF neuron (algorithms.md §5): S binary-weighted lanes, at most one firing per step.

    Update (paper form, default; see :func:`mlif_multistep` for the code and hard-reset forms)::

        u(t) = β·u(t−1) + I(t) − θ·o(t−1)
        o(t) = 0 if u ≤ θ, else 2^{min(⌈log₂(u/θ)⌉ − 1, S−1)}        (lane s fires iff 2^sθ < u ≤ 2^{s+1}θ)

    The forward returns the merged payload ``o`` ``[T, B, ...]`` that the next layer consumes; with
    ``store_lanes=True`` the one-hot lanes ``[T, B, S, ...]`` of the last call are kept in ``self.lanes_seq``.

    Args:
        lanes: S >= 1 (S = 1 is a LIF firing on ``u > θ``).
        v_threshold: θ > 0 (float or tensor broadcastable to one step, e.g. ``[C, 1, 1]`` per channel).
        leak: β in [0, 1] (1 = no leak; DVS uses 0.5).
        learnable_threshold, learnable_leak: make θ / β ``nn.Parameter``s (DIET/M-LIF train both).
        reset: ``"soft"`` (subtract θ·o) or ``"hard"`` (zero the membrane when any lane fired).
        reset_leak: soft reset only; False = paper form (MLIF-P eq. 6), True = code form (MLIF-C CNNs).
        lane_bounds: ``"paper"`` ``(2^s, 2^{s+1}]`` or ``"floor"`` ``[2^s, 2^{s+1})``.
        scaled: emit ``2^{s−S+1}`` (≤ 1) with edges at ``2^{s−S+1}·θ`` (MLIF-C transformers).
        surrogate: ``"paper_difference"`` (default), ``"code_sum"`` or ``"fast_unscaled"`` (§5.3).
        surrogate_shape: ``"triangle"`` (γ) or ``"sigmoid"`` (α), or a :class:`SurrogateFunction`.
        gamma, alpha: shape widths (γ = 0.3 static CNNs, 1.0 DVS; α = 4 transformers).
        fire_ge: lowest edge ``u >= θ`` instead of ``u > θ`` (M-LIF sources use ``>``).
        detach_reset: no gradient through the reset.
        v_init: ``u(0)`` (0 in MLIF-P).
        dropout: probability p of dropping a lane's output; one mask per sample and lane, drawn at the first
            step after :meth:`reset` and reused at every timestep (MLIF-C); inverted scaling ``1/(1−p)``;
            train mode only.
        step_mode: ``'m'`` (``[T, B, ...]``) or ``'s'`` (one step, state kept between calls).
        backend: ``"torch"`` (reference), ``"auto"`` or a registered ``"mlif"`` kernel.
        store_lanes: keep the lane tensor of the last call in ``self.lanes_seq``.
        store_v_seq: keep the post-reset membrane sequence of the last call in ``self.v_seq``.
        decay_input: SpikingJelly LIF charge ``m = v + (I − v)·(1 − β)`` (MLIF-C transformers: β = 0.5,
            ``reset="hard"``, ``detach_reset=True``, ``scaled=True``, sigmoid α = 4, fixed θ = 1).
        payload_scale: ``c > 0`` (float or tensor broadcastable to one step, e.g. ``[C, 1, 1]``): the output is
            ``c·o``, so a spike on lane s is worth ``c·2^s`` (``c·2^{s−S+1}`` scaled). ``None`` (default) sends
            the bare payload ``o`` - the paper's convention for direct training, where the next layer's weights
            learn the scale. It only scales what consumers see (next layer, identity shortcuts, read-out): edges
            and the soft reset ``θ·o`` stay in membrane units, and statistics (:meth:`spike_events`) divide it
            out. A hybrid initialisation from an ANN sets it so that folded biases and identity shortcuts see
            ANN-scale values (``c = √2·θ`` reproduces a log-quantized ANN exactly at T = 1, §5.4).
        learnable_payload_scale: make ``c`` an ``nn.Parameter`` (needs ``payload_scale``).

    Statistics protocol: ``lanes = S``, ``levels = 2^{S−1}``, :meth:`spike_events` (value-weighted events
    payload/unit) and :meth:`active_lanes` (one fired lane = one AC, §6.2).

    Example::

        >>> import torch
        >>> nrn = OneHotMLIF(lanes=3, v_threshold=1.0, step_mode='m')
        >>> nrn(torch.tensor([[[0.5, 1.5, 3.0, 9.0]]])).tolist()      # T = 1: 2^{c(x)}
        [[[0.0, 1.0, 2.0, 4.0]]]
    """

    family = "mlif"

    def __init__(self, lanes: int = 3, v_threshold: float | torch.Tensor = 1.0, leak: float | torch.Tensor = 1.0,
                 learnable_threshold: bool = True, learnable_leak: bool = True, reset: str = "soft",
                 reset_leak: bool = False, lane_bounds: str = "paper", scaled: bool = False,
                 surrogate: str = "paper_difference", surrogate_shape: str | SurrogateFunction = "triangle",
                 gamma: float = 0.3, alpha: float = 4.0, fire_ge: bool = False, detach_reset: bool = False,
                 v_init: float | torch.Tensor = 0.0, dropout: float = 0.0, step_mode: str = "m",
                 backend: str = "auto", store_lanes: bool = False, store_v_seq: bool = False,
                 decay_input: bool = False, payload_scale: float | torch.Tensor | None = None,
                 learnable_payload_scale: bool = False) -> None:
        super().__init__(step_mode=step_mode, backend=backend)
        owner = type(self).__name__
        self.lanes = _check_lanes(lanes, owner)
        self.levels = 2 ** (self.lanes - 1)
        self.reset_mode = _check_choice(reset, "reset", MLIF_RESETS, owner)
        self.reset_leak = bool(reset_leak)
        self.decay_input = bool(decay_input)
        if self.decay_input and self.reset_mode == "soft" and not self.reset_leak:
            raise ValueError(f"{owner}: decay_input=True (SpikingJelly LIF charge) needs reset='hard' or "
                             f"reset_leak=True (the paper form subtracts the reset at the next step)")
        self.lane_bounds = _check_choice(lane_bounds, "lane_bounds", LANE_BOUNDS, owner)
        self.surrogate = _check_choice(surrogate, "surrogate", MLIF_SURROGATES, owner)
        self.surrogate_function = _make_shape(surrogate_shape, gamma, alpha, owner)
        self.scaled = bool(scaled)
        self.fire_ge = bool(fire_ge)
        self.detach_reset = bool(detach_reset)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{owner}: dropout must be a probability in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        if not isinstance(backend, str):
            raise ValueError(f"{owner}: backend must be a string ('torch', 'auto' or a registered kernel), "
                             f"got {backend!r}")
        theta = self._tensor_arg(v_threshold, "v_threshold", owner, positive=True)
        if learnable_threshold:
            self.v_threshold = nn.Parameter(theta)
        else:
            self.register_buffer("v_threshold", theta)
        beta = self._tensor_arg(leak, "leak", owner)
        if bool((beta < 0).any()) or bool((beta > 1).any()):
            raise ValueError(f"{owner}: leak β must lie in [0, 1] (1 = no leak), got {leak!r}")
        if learnable_leak:
            self.leak = nn.Parameter(beta)
        else:
            self.register_buffer("leak", beta)
        self.register_buffer("v_init", self._tensor_arg(v_init, "v_init", owner))
        self.register_buffer("payload_scale", None)
        if payload_scale is not None:
            self.set_payload_scale(payload_scale, learnable=learnable_payload_scale)
        elif learnable_payload_scale:
            raise ValueError(f"{owner}: learnable_payload_scale=True needs a payload_scale to start from (e.g. the "
                             f"threshold); None means the bare payload o")
        self.store_lanes = bool(store_lanes)
        self.store_v_seq = bool(store_v_seq)
        self.register_memory("state", None)
        self.register_memory("dropout_mask", None)
        self.lanes_seq: torch.Tensor | None = None
        self.v_seq: torch.Tensor | None = None

    @staticmethod
    def _tensor_arg(value, name: str, owner: str, positive: bool = False) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            t = value.detach().clone()  # keep the caller's dtype (float64 stays float64)
            if not t.is_floating_point():
                t = t.to(torch.get_default_dtype())
            if not bool(torch.isfinite(t).all()) or (positive and not bool((t > 0).all())):
                rng = "finite and > 0" if positive else "finite"
                raise ValueError(f"{owner}: {name} must be {rng} everywhere, got {value}")
            return t
        return torch.tensor(_finite_number(value, name, owner, positive=positive))

    # --- configuration -------------------------------------------------------------------------------
    @property
    def supported_backends(self) -> tuple[str, ...]:
        from .._dispatch import available_backends
        return ("auto", *available_backends(self.family))

    @property
    def unit(self) -> float:
        """Payload of the lowest lane: 1, or ``2^{−(S−1)}`` for the scaled variant."""
        return 2.0 ** -(self.lanes - 1) if self.scaled else 1.0

    @property
    def payload_unit(self) -> float | torch.Tensor:
        """What the lowest lane sends: ``unit`` times the payload scale ``c`` (a tensor if ``c`` is one with more
        than one element)."""
        if self.payload_scale is None:
            return self.unit
        c = self.payload_scale.detach()
        return self.unit * (float(c) if c.numel() == 1 else c)

    def set_payload_scale(self, value: float | torch.Tensor | None, learnable: bool | None = None) -> None:
        """Set the payload scale ``c`` (``None``: bare payload). ``learnable`` (default: keep the current kind)
        makes it an ``nn.Parameter`` or a buffer."""
        owner = type(self).__name__
        current = self.payload_scale
        if learnable is None:
            learnable = isinstance(current, nn.Parameter)
        if value is None:
            if learnable:
                raise ValueError(f"{owner}: a learnable payload scale needs a value")
            self._parameters.pop("payload_scale", None)
            self.register_buffer("payload_scale", None)
            return
        ref = self.v_threshold
        if isinstance(value, torch.Tensor):
            self._tensor_arg(value, "payload_scale", owner, positive=True)        # validation only
            c = value.detach().clone().to(device=ref.device, dtype=ref.dtype)   # no float32 round trip
        else:
            c = self._tensor_arg(value, "payload_scale", owner, positive=True).to(device=ref.device,
                                                                                  dtype=ref.dtype)
        # Re-register: the attribute may move between _buffers and _parameters.
        self._parameters.pop("payload_scale", None)
        self._buffers.pop("payload_scale", None)
        if learnable:
            self.payload_scale = nn.Parameter(c)
        else:
            self.register_buffer("payload_scale", c)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A checkpoint with a payload scale loads into a neuron built without one (as a buffer), and a
        # checkpoint from before payload scales existed loads into a bare neuron unchanged.
        key = prefix + "payload_scale"
        if key in state_dict and self.payload_scale is None:
            self.set_payload_scale(state_dict[key], learnable=False)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @property
    def v(self) -> torch.Tensor | None:
        """Post-reset membrane after the last step (``None`` before the first step or after ``reset()``)."""
        return None if self.state is None else self.state.v

    def dynamics_params(self) -> MLIFParameters:
        """The options of this neuron's dynamics as an :class:`~multispike.neurons.params.MLIFParameters` record
        (without the per-call ``lane_mask``/``return_lanes``, which :meth:`forward` adds)."""
        return MLIFParameters(store_v_seq=self.store_v_seq, return_lanes=self.store_lanes, **self.dynamics_kwargs())

    def dynamics_kwargs(self) -> dict:
        """Keyword arguments of :func:`mlif_multistep` (and of every fused ``"mlif"`` kernel)."""
        return dict(lanes=self.lanes, v_threshold=self.v_threshold, leak=self.leak, v_init=self.v_init,
                    reset=self.reset_mode, reset_leak=self.reset_leak, decay_input=self.decay_input,
                    lane_bounds=self.lane_bounds,
                    scaled=self.scaled, surrogate=self.surrogate, shape=self.surrogate_function,
                    fire_ge=self.fire_ge, detach_reset=self.detach_reset)

    # --- statistics protocol (§6.2) -----------------------------------------------------------------------
    def spike_events(self, y: torch.Tensor) -> torch.Tensor:
        """Value-weighted unit events of an output ``y``: ``2^s`` for a fired lane s (output / payload unit)."""
        if self.payload_scale is not None:
            y = y / self.payload_scale.detach()
        return y / self.unit if self.scaled else y

    def active_lanes(self, y: torch.Tensor) -> torch.Tensor:
        """Active one-hot lanes per element: at most one, so ``y != 0`` (one fired lane costs one AC)."""
        return (y != 0).to(y.dtype)

    # --- forward --------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Restore ``u(0) = v_init``, forget the dropout mask and the stored sequences."""
        super().reset()
        self.lanes_seq = None
        self.v_seq = None

    def _lane_mask(self, x_seq: torch.Tensor) -> torch.Tensor | None:
        if not (self.training and self.dropout > 0):
            return None
        step = x_seq[0]
        shape = (step.shape[0], self.lanes, *step.shape[1:])
        if self.dropout_mask is None:
            keep = 1.0 - self.dropout
            self.dropout_mask = torch.empty(shape, dtype=step.dtype, device=step.device).bernoulli_(keep) / keep
        elif tuple(self.dropout_mask.shape) != shape:
            raise ValueError(f"{type(self).__name__}: the dropout mask was drawn for lanes of shape "
                             f"{tuple(self.dropout_mask.shape)} but this step has {shape}; call "
                             f"multispike.reset_net(model) before each new batch")
        return self.dropout_mask

    def _run(self, x_seq: torch.Tensor, fn) -> torch.Tensor:
        y_seq, self.state, extras = fn(x_seq, self.state, lane_mask=self._lane_mask(x_seq),
                                       return_lanes=self.store_lanes, store_v_seq=self.store_v_seq,
                                       **self.dynamics_kwargs())
        if self.store_lanes:
            self.lanes_seq = extras.lanes_seq
        if self.store_v_seq:
            self.v_seq = extras.v_seq
        if self.payload_scale is not None:
            # Outside the kernel: the dynamics (edges, θ·o reset) never see c, only the consumers do.
            y_seq = y_seq * self.payload_scale
        return y_seq

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        backend = resolve_backend(self.family, self.backend, x_seq.device.type)
        return self._run(x_seq, get_kernel(self.family, backend))

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: expected a torch.Tensor, got {type(x).__name__}")
        x_seq = x.unsqueeze(0)
        check_sequence(x_seq, type(self).__name__, min_rank=2)
        return self._run(x_seq, mlif_multistep)[0]

    def extra_repr(self) -> str:
        theta = self.v_threshold.detach().flatten()[:4].tolist()
        beta = self.leak.detach().flatten()[:4].tolist()
        shape = self.surrogate_function
        width = (f"gamma={shape.alpha:g}" if isinstance(shape, Triangle) else f"alpha={shape.alpha:g}")
        return (f"lanes={self.lanes}, v_threshold={theta}, leak={beta}, reset={self.reset_mode!r}, "
                f"reset_leak={self.reset_leak}, decay_input={self.decay_input}, lane_bounds={self.lane_bounds!r}, scaled={self.scaled}, "
                f"surrogate={self.surrogate!r}, shape={type(shape).__name__}({width}), fire_ge={self.fire_ge}, "
                f"detach_reset={self.detach_reset}, dropout={self.dropout}"
                + (f", payload_scale={self.payload_scale.detach().flatten()[:4].tolist()}"
                   if self.payload_scale is not None else "") + f", {super().extra_repr()}")
