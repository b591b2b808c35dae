"""LM-HT: learnable multi-hierarchical threshold neurons with a temporal-global mixing matrix (algorithms.md §2).

One LM-HT step (LMHT-P eqs. (5)-(7); notation of algorithms.md §0)::

    x(j) = in_scale · (W·y^{l-1}(j) + b)                 synaptic output at step j, [B, ...]
    I(t) = Σ_j ω_tj · x(j)                                T-GIM: ONE T×T matrix Ω per layer (non-causal)
    m(t) = λ·v(t−1) + I(t)                                λ = σ(a) + ½ ∈ (0.5, 1.5), Ω = 2σ(μ)/T ∈ (0, 2/T)
    s(t) = clip(⌊m(t)/θ⌋, 0, L)                           L equidistant thresholds θ, 2θ, …, Lθ, fire on "≥"
    v(t) = m(t) − θ·s(t)                                  soft reset by the emitted amount
    y(t) = θ·s(t)                                         payload ∈ {0, θ, …, Lθ}

Backward (§2.4): ``dy/dm = 1{θ/2 ≤ m ≤ (L+½)θ}`` (the LM-HT rectangle, no 1/a factor); the temporal chain
``v(t−1)`` and the reset are detached by default, so time mixing in backward passes only through Ω.

* :func:`lmht_multistep` is the pure reference (kernel family ``"lmht"``, backend ``"torch"``); with
  ``omega=None`` it is the M-HT step of §2.1 (:func:`mht_multistep`).
* :class:`LMHTNeuron` holds μ (T×T) and a, :class:`MHTNeuron` is the M-HT neuron (no T-GIM, fixed λ).
* :class:`ReparameterizedIF` is the single-threshold IF neuron running L·T steps that an LM-HT layer is
  reparameterised into (§2.7): expanded T-GIM ``Ω ⊗ (1/L)·1_{L×L}`` and the leak applied at window starts.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .._dispatch import register_kernel
from .params import LMHTParameters
from .base import MemoryModule, StepModule, check_positive_int, check_sequence
from .if_lif import BaseNeuron

__all__ = ["LMHTState", "lmht_multistep", "mht_multistep", "multilevel_fire", "tgim_omega", "tgim_leak", "tgim_mix",
           "expand_tgim", "window_start_leak", "LMHTNeuron", "MHTNeuron", "ReparameterizedIF", "TGIM_MODES"]

TGIM_MODES = ("learnable", "fixed", "uniform", "identity")


class LMHTState(NamedTuple):
    """State between calls: the post-reset membrane ``v``."""

    v: torch.Tensor


# ----------------------------------------------------------------------------------------------------
# Multi-level firing with the LM-HT rectangle surrogate
# ----------------------------------------------------------------------------------------------------
class _MultiLevelFire(torch.autograd.Function):
    """``y = θ·clip(⌊m/θ⌋, 0, L)`` forward; ``dy/dm = 1{(1−w)θ ≤ m ≤ (L+w)θ}`` backward (θ gets no gradient)."""

    @staticmethod
    def forward(ctx, m: torch.Tensor, theta: torch.Tensor, levels: int, width: float) -> torch.Tensor:
        ctx.save_for_backward(m, theta)
        ctx.levels, ctx.width = levels, width
        # ⌊m/θ⌋ is the "fire on m ≥ kθ" rule for every level k at once (up to one rounding of the division).
        return torch.clamp(torch.floor(m / theta), 0, levels) * theta

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        m, theta = ctx.saved_tensors
        inside = (m >= (1.0 - ctx.width) * theta) & (m <= (ctx.levels + ctx.width) * theta)
        return grad_y * inside.to(grad_y.dtype), None, None, None


def multilevel_fire(m: torch.Tensor, v_threshold: torch.Tensor | float, levels: int,
                    surrogate_width: float = 0.5) -> torch.Tensor:
    """Multi-level spike payload ``θ·clip(⌊m/θ⌋, 0, L)`` with the LM-HT rectangle surrogate.

    Args:
        m: membrane after charging.
        v_threshold: θ > 0 (float or tensor broadcastable to ``m``; receives no gradient).
        levels: L >= 1.
        surrogate_width: w; the backward window is ``(1−w)θ ≤ m ≤ (L+w)θ`` (w = ½ is LMHT-P eq. (8)).

    Example::

        >>> multilevel_fire(torch.tensor([-1.0, 0.3, 1.0, 2.9, 9.0]), 1.0, levels=2).tolist()
        [0.0, 0.0, 1.0, 2.0, 2.0]
    """
    theta = torch.as_tensor(v_threshold, dtype=m.dtype, device=m.device)
    return _MultiLevelFire.apply(m, theta, int(levels), float(surrogate_width))


# ----------------------------------------------------------------------------------------------------
# Parameterisations (§2.3) and the reparameterisation helpers (§2.7)
# ----------------------------------------------------------------------------------------------------
def tgim_omega(mu: torch.Tensor) -> torch.Tensor:
    """T-GIM from its raw parameter: ``Ω = 2σ(μ)/T`` (μ = 0 gives the uniform Ω = 1/T)."""
    return 2.0 * torch.sigmoid(mu) / mu.shape[0]


def tgim_leak(a: torch.Tensor) -> torch.Tensor:
    """Leak from its raw parameter: ``λ = σ(a) + ½ ∈ (0.5, 1.5)`` (a = 0 gives λ = 1 exactly)."""
    return torch.sigmoid(a) + 0.5


class _TgimMix(torch.autograd.Function):
    """Forward: the fixed-order sum of :func:`tgim_mix`, all T outputs per term at once (``[T, 1]·[1, n]``
    broadcasts into preallocated buffers). On the CPU it runs over chunks of elements that stay in the cache (one
    pass over memory instead of ~2T; the chunk loop costs a few µs per chunk); on a GPU over the whole tensor (2T
    launches). Backward: ``dx = Ωᵀ·g`` and ``dΩ = g·xᵀ`` as GEMMs (gradients are compared to a tolerance, so
    BLAS's summation order is fine there)."""

    CHUNK_BYTES = 1 << 19  # the T output rows of one CPU chunk: 512 KiB, within L2

    @staticmethod
    def forward(ctx, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        xf = x.contiguous().reshape(T, -1)
        out = torch.empty_like(xf)
        n = xf.shape[1]
        chunk = max(1024, _TgimMix.CHUNK_BYTES // (T * xf.element_size())) if x.device.type == "cpu" else n
        tmp = torch.empty(T, min(chunk, n), dtype=xf.dtype, device=xf.device) if T > 1 else None
        for c0 in range(0, n, chunk):
            xc, oc = xf[:, c0:c0 + chunk], out[:, c0:c0 + chunk]
            torch.mul(w[:, 0:1], xc[0:1], out=oc)
            for j in range(1, T):
                tc = tmp[:, :oc.shape[1]]
                torch.mul(w[:, j:j + 1], xc[j:j + 1], out=tc)
                oc.add_(tc)
        ctx.save_for_backward(w, x)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        w, x = ctx.saved_tensors
        gw = torch.einsum("t...,j...->tj", g, x) if ctx.needs_input_grad[0] else None
        gx = torch.einsum("tj,t...->j...", w, g) if ctx.needs_input_grad[1] else None
        return gw, gx


def tgim_mix(omega: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """T-GIM mixing ``I(t) = Σ_j ω_tj·x(j)`` in a fixed summation order (algorithms.md §2.4).

    Each ``I(t)`` is accumulated ``j = 0, 1, …, T−1`` in ``x``'s dtype: ``ω_t0·x(0)``, then ``+ ω_tj·x(j)``, every
    product and sum rounded once (no fused multiply-add), with ``Ω`` cast to ``x``'s dtype first. This order is
    part of the definition: a spike at ``m = kθ`` exactly depends on the last bit of ``I``, and a BLAS GEMM
    (``torch.einsum``) rounds differently with the shape and the CPU. The fused kernels
    (:mod:`multispike.kernels.lmht_cpp`) perform exactly these operations, so they agree bit for bit.

    ``2T−1`` broadcast multiply-adds over cache-sized chunks; the backward (input and Ω gradients) runs as two
    GEMMs.

    Args:
        omega: ``Ω``, ``[T, T]``.
        x: ``[T, ...]`` (any trailing layout; the output is contiguous).
    """
    return _TgimMix.apply(omega.to(dtype=x.dtype, device=x.device), x)


def expand_tgim(omega: torch.Tensor, levels: int) -> torch.Tensor:
    """Expanded T-GIM of the reparameterised IF network: ``Ω̂ = Ω ⊗ (1/L)·1_{L×L}`` (shape ``LT × LT``).

    Sub-step j of window t receives ``Σ_k ω̂_jk x̂(k) = (1/L)·Σ_u ω_tu·Σ_{k∈window u} x̂(k)``.
    """
    L = check_positive_int(levels, "levels", fix="Use L >= 1.")
    block = torch.full((L, L), 1.0 / L, dtype=omega.dtype, device=omega.device)
    return torch.kron(omega, block)


def window_start_leak(leak: torch.Tensor | float, T: int, levels: int) -> torch.Tensor:
    """Per-sub-step leak of the reparameterised neuron: ``λ̂_j = λ`` at window starts (j ≡ 0 mod L), else 1."""
    L = check_positive_int(levels, "levels", fix="Use L >= 1.")
    T = check_positive_int(T, "T", fix="Use T >= 1.")
    leak = leak.detach() if isinstance(leak, torch.Tensor) else torch.tensor(float(leak))
    if not leak.is_floating_point():
        leak = leak.to(torch.get_default_dtype())
    if leak.numel() != 1:
        raise ValueError(f"window_start_leak: the leak must be a scalar, got shape {tuple(leak.shape)}")
    sched = torch.ones(T * L, dtype=leak.dtype, device=leak.device)
    sched[::L] = leak.reshape(())
    return sched


# ----------------------------------------------------------------------------------------------------
# The reference multi-step function (kernel family "lmht", backend "torch")
# ----------------------------------------------------------------------------------------------------
def lmht_multistep(
    x_seq: torch.Tensor,
    state: LMHTState | None = None,
    *,
    levels: int,
    omega: torch.Tensor | None = None,
    leak: float | torch.Tensor = 1.0,
    v_threshold: float | torch.Tensor,
    v_init: float | torch.Tensor = 0.0,
    in_scale: float | torch.Tensor = 1.0,
    leak_schedule: torch.Tensor | None = None,
    detach_temporal: bool = True,
    detach_reset: bool = True,
    surrogate_width: float = 0.5,
    store_v_seq: bool = False,
) -> tuple[torch.Tensor, LMHTState, torch.Tensor | None]:
    """Reference LM-HT / M-HT dynamics over a time-major sequence (algorithms.md §2.4).

    Args:
        x_seq: synaptic outputs ``x``, ``[T, B, ...]`` (any trailing layout: ``[T,B,C,H,W]``, ``[T,B,N,C]``,
            ``[T,B,C]``).
        state: state of a previous call; ``None`` starts from ``v(0) = v_init``.
        levels: L >= 1 (L = 1 is IF/LIF).
        omega: T-GIM ``Ω`` of shape ``[T, T]`` (``I(t) = Σ_j ω_tj·x(j)``), or ``None`` for the identity (M-HT).
        leak: λ (scalar float or tensor, may require grad).
        v_threshold: θ > 0 (fixed: it must not require grad).
        v_init: initial membrane ``v(0)`` (absolute value, e.g. ``θ/2`` after hybrid conversion).
        in_scale: factor on ``x`` before mixing (L on the first layer of a hybrid-converted net, §2.6).
        leak_schedule: optional per-step leak ``[T]`` that replaces ``leak`` (the reparameterised IF's
            window-start leak, :func:`window_start_leak`).
        detach_temporal: the leak term sees ``stopgrad(v(t−1))`` (LM-HT default).
        detach_reset: the reset ``θ·s(t)`` gets no gradient.
        surrogate_width: w of the rectangle surrogate ``1{(1−w)θ ≤ m ≤ (L+w)θ}``.
        store_v_seq: also return the post-reset membranes ``v(1..T)``.

    Returns:
        ``(y_seq, state, v_seq_or_None)`` with ``y_seq ∈ {0, θ, …, Lθ}``.

    Example::

        >>> x = torch.tensor([[2.5], [0.5]])      # T = 2, B = 1
        >>> y, st, _ = lmht_multistep(x, levels=2, omega=torch.full((2, 2), 0.5), v_threshold=1.0)
        >>> y.flatten().tolist(), st.v.flatten().tolist()     # I = 1.5 per step: m = 1.5, then 0.5 + 1.5
        ([1.0, 2.0], [0.0])
    """
    L = check_positive_int(levels, "lmht_multistep: levels", fix="L counts the thresholds θ..Lθ; use L >= 1.")
    check_sequence(x_seq, "lmht_multistep")
    T = x_seq.shape[0]
    if isinstance(v_threshold, torch.Tensor):
        # Tensor thresholds come from validated buffers; a value check here would cost a device sync per call.
        if v_threshold.requires_grad:
            raise ValueError("lmht_multistep: v_threshold requires grad, but LM-HT keeps θ fixed (algorithms.md "
                             "§2.3); pass a buffer or a detached tensor")
    elif not (math.isfinite(float(v_threshold)) and float(v_threshold) > 0):
        raise ValueError(f"lmht_multistep: v_threshold must be a finite number > 0, got {v_threshold!r}")
    theta = torch.as_tensor(v_threshold, dtype=x_seq.dtype, device=x_seq.device)
    if not (math.isfinite(float(surrogate_width)) and surrogate_width >= 0):
        raise ValueError(f"lmht_multistep: surrogate_width must be a finite number >= 0, got {surrogate_width!r}")
    x = x_seq if (isinstance(in_scale, (int, float)) and in_scale == 1) else x_seq * in_scale
    if omega is not None:
        if omega.dim() != 2 or tuple(omega.shape) != (T, T):
            raise ValueError(f"lmht_multistep: the T-GIM has shape {tuple(omega.shape)} but the input has T={T} steps "
                             f"(input shape {tuple(x_seq.shape)}); Ω must be {T}×{T}. Build the neuron with T={T} "
                             f"or feed {omega.shape[0]} steps.")
        current = tgim_mix(omega, x)
    else:
        current = x
    if leak_schedule is not None and tuple(leak_schedule.shape) != (T,):
        raise ValueError(f"lmht_multistep: leak_schedule must have shape ({T},) (one leak per step), got "
                         f"{tuple(leak_schedule.shape)}")
    v = torch.zeros_like(current[0]) + v_init if state is None else state.v
    ys, vs = [], []
    for t in range(T):
        lam = leak if leak_schedule is None else leak_schedule[t]
        m = lam * (v.detach() if detach_temporal else v) + current[t]
        y = multilevel_fire(m, theta, L, surrogate_width)
        v = m - (y.detach() if detach_reset else y)
        ys.append(y)
        if store_v_seq:
            vs.append(v)
    return torch.stack(ys), LMHTState(v), (torch.stack(vs) if store_v_seq else None)


def mht_multistep(x_seq: torch.Tensor, state: LMHTState | None = None, *, levels: int,
                  v_threshold: float | torch.Tensor, leak: float | torch.Tensor = 1.0, **kwargs
                  ) -> tuple[torch.Tensor, LMHTState, torch.Tensor | None]:
    """M-HT dynamics (§2.1): :func:`lmht_multistep` without T-GIM (``Ω = I``), with a fixed leak."""
    if "omega" in kwargs:
        raise TypeError("mht_multistep has no T-GIM; use lmht_multistep(omega=...) for LM-HT")
    return lmht_multistep(x_seq, state, levels=levels, v_threshold=v_threshold, leak=leak, omega=None, **kwargs)


register_kernel("lmht", "torch", lmht_multistep)


# ----------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------
def _threshold_tensor(value, owner: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().clone()
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
    else:
        try:
            t = torch.tensor(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: v_threshold must be a number > 0, got {value!r}") from None
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"{owner}: v_threshold θ must be finite and > 0, got {value!r}. Use e.g. 2/L for direct "
                         f"training or the QCFS clip ϑ for hybrid conversion.")
    return t


def _finite_tensor(value, name: str, owner: str) -> torch.Tensor:
    t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    return t


class _MultiThresholdNeuron(BaseNeuron):
    """Shared machinery of :class:`LMHTNeuron`, :class:`MHTNeuron` and :class:`ReparameterizedIF`.

    Subclasses provide the properties ``omega`` (T×T or None), ``leak`` and ``leak_schedule``.
    """

    family = "lmht"

    def __init__(self, *, levels: int, v_threshold, v_init, in_scale: float, detach_temporal: bool,
                 detach_reset: bool, surrogate_width: float, step_mode: str, backend: str, store_v_seq: bool) -> None:
        # BaseNeuron.__init__ is skipped on purpose: its surrogate/v_reset/payload options do not apply to a
        # multi-level neuron. The attributes its inherited methods read are set here.
        MemoryModule.__init__(self, step_mode="m", backend=backend)
        owner = type(self).__name__
        self.levels = check_positive_int(levels, f"{owner}: levels",
                                         fix="L is the number of thresholds θ, 2θ, …, Lθ; use L >= 1 (L = 1 is IF).")
        theta = _threshold_tensor(2.0 / self.levels if v_threshold is None else v_threshold, owner)
        self.register_buffer("v_threshold", theta)
        self.register_buffer("v_init", _finite_tensor(v_init, "v_init", owner).to(theta.dtype))
        in_scale = float(in_scale)
        if not (math.isfinite(in_scale) and in_scale > 0):
            raise ValueError(f"{owner}: in_scale must be a finite number > 0, got {in_scale!r} (use L on the first "
                             f"layer of a hybrid-converted network, else 1)")
        sw = float(surrogate_width)
        if not (math.isfinite(sw) and sw >= 0):
            raise ValueError(f"{owner}: surrogate_width must be a finite number >= 0, got {surrogate_width!r} "
                             f"(0.5 is the paper's window θ/2 ≤ m ≤ (L+½)θ)")
        self.in_scale = in_scale
        self.surrogate_width = sw
        self.detach_temporal = bool(detach_temporal)
        self.detach_reset = bool(detach_reset)
        self.v_reset = None
        self.fire_ge = True
        self.payload = "threshold"
        self.store_v_seq = store_v_seq
        self.register_memory("state", None)
        self.v_seq: torch.Tensor | None = None

    # --- step modes: a non-causal T-GIM cannot run one step at a time ---
    @property
    def causal(self) -> bool:
        """True when step t depends only on steps <= t (no T-GIM), so ``step_mode='s'`` is possible."""
        return self.omega is None

    def supported_step_modes(self) -> tuple[str, ...]:
        if not getattr(self, "_built", False):  # called by MemoryModule.__init__ before the T-GIM exists
            return ("s", "m")
        return ("s", "m") if self.causal else ("m",)

    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value == "s" and getattr(self, "_built", False) and not self.causal:
            raise ValueError(f"{type(self).__name__}: step_mode='s' is impossible with a non-causal T-GIM (step t "
                             f"mixes the inputs of all T steps, algorithms.md §2.10). Use step_mode='m' with the "
                             f"whole [T, B, ...] sequence, or tgim='identity' for a causal neuron.")
        StepModule.step_mode.fset(self, value)

    # --- dynamics ---
    @property
    def omega(self) -> torch.Tensor | None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def leak(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def leak_schedule(self) -> torch.Tensor | None:
        return None

    params_type = LMHTParameters

    def dynamics_kwargs(self) -> dict:
        return dict(levels=self.levels, omega=self.omega, leak=self.leak, leak_schedule=self.leak_schedule,
                    v_threshold=self.v_threshold, v_init=self.v_init, in_scale=self.in_scale,
                    detach_temporal=self.detach_temporal, detach_reset=self.detach_reset,
                    surrogate_width=self.surrogate_width)

    def _check_T(self, x_seq: torch.Tensor, omega: torch.Tensor | None) -> None:
        if omega is not None and x_seq.shape[0] != omega.shape[0]:
            raise ValueError(f"{type(self).__name__}: input has T={x_seq.shape[0]} steps (shape "
                             f"{tuple(x_seq.shape)}) but its T-GIM is {omega.shape[0]}×{omega.shape[0]} (built for "
                             f"T={omega.shape[0]}); feed {omega.shape[0]} steps or rebuild the neuron with "
                             f"T={x_seq.shape[0]}.")

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        kwargs = self.dynamics_kwargs()   # Ω once per call: it is computed from the T-GIM parameter
        self._check_T(x_seq, kwargs["omega"])
        return self._run_dynamics(x_seq, kwargs)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.causal:  # the setter prevents this; guard against a state_dict/attribute edit
            raise RuntimeError(f"{type(self).__name__}: single-step forward needs a causal neuron (no T-GIM)")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: expected a torch.Tensor, got {type(x).__name__}")
        check_sequence(x.unsqueeze(0), type(self).__name__)
        y, self.state, _ = lmht_multistep(x.unsqueeze(0), self.state, store_v_seq=False, **self.dynamics_kwargs())
        return y[0]

    # --- statistics protocol ---
    def spike_events(self, y: torch.Tensor) -> torch.Tensor:
        """Spike counts ``s = y/θ`` (a level-k spike costs k accumulates downstream, algorithms.md §6.3).

        Rounded: ``fl(fl(k·θ)/θ)`` can miss the integer k by one ulp, and counts must be exact integers."""
        return torch.round(y / self.v_threshold.to(y.dtype))

    def active_lanes(self, y: torch.Tensor) -> torch.Tensor:
        """1 where the neuron emitted any spike (one lane carries all L levels)."""
        return (y != 0).to(y.dtype)

    def _base_repr(self) -> str:
        return (f"levels={self.levels}, v_threshold={self.v_threshold.detach().flatten()[:4].tolist()}, "
                f"v_init={self.v_init.detach().flatten()[:4].tolist()}, in_scale={self.in_scale}, "
                f"detach_temporal={self.detach_temporal}, detach_reset={self.detach_reset}, "
                f"step_mode={self._step_mode!r}, backend={self.backend!r}")


class LMHTNeuron(_MultiThresholdNeuron):
    """LM-HT neuron: L thresholds, a T×T temporal-global information matrix and a learnable leak (§2.3-§2.4).

    ``I = tgim_mix(Ω, in_scale·x)`` (fixed-order ``Σ_j ω_tj·x(j)``); ``m = λ·sg(v) + I(t)``; ``y = θ·clip(⌊m/θ⌋, 0, L)``;
    ``v = m − sg(y)``. Backward: ``dy/dm = 1{θ/2 ≤ m ≤ (L+½)θ}``.

    Args:
        T: timesteps; the T-GIM is T×T (``T² + 1`` learnable scalars per layer with the leak).
        levels: L >= 1.
        v_threshold: fixed θ > 0 (buffer, not learned); default ``2/L`` (direct training, §2.3).
        v_init: ``v(0)`` (0 for direct training, θ/2 after hybrid conversion).
        tgim: ``"learnable"`` (raw μ ∈ R^{T×T}, ``Ω = 2σ(μ)/T``, μ = 0 at init so Ω = 1/T),
            ``"fixed"`` (the same μ as a buffer: frozen, loadable from a learnable checkpoint),
            ``"uniform"`` (Ω = 1/T exactly, no parameter) or ``"identity"`` (no T-GIM: causal, any T,
            ``step_mode='s'`` allowed).
        learnable_leak: learn the raw a of ``λ = σ(a) + ½`` (a = 0, λ = 1 at init); else a is a buffer.
        in_scale: factor on the input current (L on the first layer of a hybrid-converted net).
        detach_temporal: stop the gradient along the membrane chain (paper, default).
        detach_reset: stop the gradient through the reset (default).
        surrogate_width: w of the rectangle ``1{(1−w)θ ≤ m ≤ (L+w)θ}``; ½ is the paper's.
        step_mode: ``'m'`` (default; ``'s'`` only with ``tgim="identity"``).
        backend: ``"torch"`` or ``"auto"`` or a registered ``"lmht"`` kernel.
        store_v_seq: keep the membranes of the last call in ``self.v_seq``.

    Statistics protocol: ``levels = L``, ``spike_events(y) = y/θ`` (counts), ``active_lanes(y) = 1{y ≠ 0}``.

    Example::

        >>> import torch
        >>> nrn = LMHTNeuron(T=2, levels=2)                   # θ = 1, Ω = ½ everywhere, λ = 1
        >>> nrn(torch.tensor([[2.5], [0.5]])).flatten().tolist()
        [1.0, 2.0]
    """

    def __init__(self, T: int, levels: int = 2, v_threshold: float | torch.Tensor | None = None,
                 v_init: float | torch.Tensor = 0.0, tgim: str = "learnable", learnable_leak: bool = True,
                 in_scale: float = 1.0, detach_temporal: bool = True, detach_reset: bool = True,
                 surrogate_width: float = 0.5, step_mode: str = "m", backend: str = "auto",
                 store_v_seq: bool = False) -> None:
        self_T = check_positive_int(T, "LMHTNeuron: T", fix="T is the number of timesteps of the T×T T-GIM; "
                                                             "use T >= 1.")
        if tgim not in TGIM_MODES:
            raise ValueError(f"LMHTNeuron: tgim must be one of {TGIM_MODES}, got {tgim!r}")
        super().__init__(levels=levels, v_threshold=v_threshold, v_init=v_init, in_scale=in_scale,
                         detach_temporal=detach_temporal, detach_reset=detach_reset,
                         surrogate_width=surrogate_width, step_mode=step_mode, backend=backend,
                         store_v_seq=store_v_seq)
        self.T = self_T
        self.tgim = tgim
        dtype = self.v_threshold.dtype
        if tgim == "learnable":
            self.tgim_mu = nn.Parameter(torch.zeros(self_T, self_T, dtype=dtype))
        elif tgim == "fixed":
            self.register_buffer("tgim_mu", torch.zeros(self_T, self_T, dtype=dtype))
        a = torch.zeros((), dtype=dtype)
        if learnable_leak:
            self.leak_a = nn.Parameter(a)
        else:
            self.register_buffer("leak_a", a)
        self.learnable_leak = bool(learnable_leak)
        self._built = True
        self.step_mode = step_mode  # validated now that the T-GIM exists

    @property
    def omega(self) -> torch.Tensor | None:
        """The T-GIM Ω (``T×T``), or ``None`` for ``tgim="identity"``."""
        if self.tgim == "identity":
            return None
        if self.tgim == "uniform":
            return torch.full((self.T, self.T), 1.0 / self.T, dtype=self.v_threshold.dtype,
                              device=self.v_threshold.device)
        return tgim_omega(self.tgim_mu)

    @property
    def leak(self) -> torch.Tensor:
        """λ = σ(a) + ½."""
        return tgim_leak(self.leak_a)

    def extra_repr(self) -> str:
        return (f"T={self.T}, tgim={self.tgim!r}, leak={float(self.leak.detach()):.4g}, "
                f"learnable_leak={self.learnable_leak}, {self._base_repr()}")


class MHTNeuron(_MultiThresholdNeuron):
    """M-HT neuron (§2.1): L thresholds θ..Lθ, soft reset by the emitted amount, no T-GIM, fixed leak λ.

    ``m = λ·v + in_scale·I(t)``; ``y = θ·clip(⌊m/θ⌋, 0, L)``; ``v = m − y``. Causal, so both step modes
    work and any T is accepted. With L = 1 and λ = 1 it is the IF neuron with soft reset and payload θ.

    Args:
        levels: L >= 1.
        v_threshold: θ > 0, default ``2/L``.
        v_init: ``v(0)``.
        leak: fixed λ (buffer), 1 = IF.
        in_scale, detach_temporal, detach_reset, surrogate_width, step_mode, backend, store_v_seq:
            as in :class:`LMHTNeuron`.

    Example::

        >>> import torch
        >>> MHTNeuron(levels=2, v_threshold=1.0)(torch.tensor([[2.5], [0.4]])).flatten().tolist()
        [2.0, 0.0]
    """

    def __init__(self, levels: int = 2, v_threshold: float | torch.Tensor | None = None,
                 v_init: float | torch.Tensor = 0.0, leak: float = 1.0, in_scale: float = 1.0,
                 detach_temporal: bool = True, detach_reset: bool = True, surrogate_width: float = 0.5,
                 step_mode: str = "m", backend: str = "auto", store_v_seq: bool = False) -> None:
        super().__init__(levels=levels, v_threshold=v_threshold, v_init=v_init, in_scale=in_scale,
                         detach_temporal=detach_temporal, detach_reset=detach_reset,
                         surrogate_width=surrogate_width, step_mode=step_mode, backend=backend,
                         store_v_seq=store_v_seq)
        lam = _finite_tensor(leak, "leak", "MHTNeuron").to(self.v_threshold.dtype)
        if lam.numel() != 1 or float(lam) < 0:
            raise ValueError(f"MHTNeuron: leak must be a scalar >= 0 (1 = IF), got {leak!r}")
        self.register_buffer("leak_value", lam.reshape(()))
        self._built = True
        self.step_mode = step_mode

    @property
    def omega(self) -> None:
        return None

    @property
    def leak(self) -> torch.Tensor:
        return self.leak_value

    def extra_repr(self) -> str:
        return f"leak={float(self.leak_value):.4g}, {self._base_repr()}"


class ReparameterizedIF(_MultiThresholdNeuron):
    """Single-threshold IF neuron that runs ``L·T`` sub-steps in place of an LM-HT layer (§2.7, Thm A.2).

    ``Î = tgim_mix(Ω̂, in_scale·x̂)`` with ``Ω̂ = Ω ⊗ (1/L)·1_{L×L}``;
    ``m = λ̂_j·v + Î(j)`` with ``λ̂_j = λ`` at window starts (j ≡ 0 mod L, 0-based) and 1 elsewhere;
    fire on ``m ≥ θ``, soft reset, payload θ. The spike sum of window t equals the LM-HT count s(t)
    whenever the window currents are non-negative (Lemma 4.1 with a window-start leak).

    Build it with :meth:`from_lmht` (which also applies the first-layer scale); inference only (no
    surrogate is meant to be trained through it, although autograd works).

    Args:
        T: LM-HT timesteps (windows).
        window: L, the sub-steps per window.
        omega: the LM-HT ``Ω`` (``T×T``) or ``None`` for an identity T-GIM (M-HT).
        leak: λ applied at window starts.
        v_threshold, v_init, in_scale: θ, v(0), input factor.

    Example::

        >>> import torch
        >>> lm = LMHTNeuron(T=2, levels=2)
        >>> rif = ReparameterizedIF.from_lmht(lm, first_layer=False)
        >>> y = rif(torch.tensor([[2.5], [0.5]]).repeat_interleave(2, 0) / 2)   # hidden layer: x̂ = x/L per sub-step
        >>> y.view(2, 2, 1).sum(1).flatten().tolist()                          # window sums = LM-HT counts
        [1.0, 2.0]
    """

    def __init__(self, T: int, window: int, omega: torch.Tensor | None = None, leak: float | torch.Tensor = 1.0,
                 v_threshold: float | torch.Tensor = 1.0, v_init: float | torch.Tensor = 0.0,
                 in_scale: float = 1.0, step_mode: str = "m", backend: str = "auto",
                 store_v_seq: bool = False) -> None:
        T = check_positive_int(T, "ReparameterizedIF: T", fix="Use T >= 1.")
        L = check_positive_int(window, "ReparameterizedIF: window", fix="window is the LM-HT level count L >= 1.")
        super().__init__(levels=1, v_threshold=v_threshold, v_init=v_init, in_scale=in_scale,
                         detach_temporal=True, detach_reset=True, surrogate_width=0.5, step_mode="m",
                         backend=backend, store_v_seq=store_v_seq)
        dtype = self.v_threshold.dtype
        if omega is None:
            omega = torch.eye(T, dtype=dtype)
        omega = omega.detach().to(dtype)
        if tuple(omega.shape) != (T, T):
            raise ValueError(f"ReparameterizedIF: omega must be {T}×{T} (the LM-HT T-GIM), got {tuple(omega.shape)}")
        self.T = T
        self.window = L
        self.register_buffer("omega_hat", expand_tgim(omega, L))
        lam = _finite_tensor(leak, "leak", "ReparameterizedIF")
        self.register_buffer("leak_schedule_buf", window_start_leak(lam, T, L).to(dtype))
        self._built = True
        self.step_mode = step_mode

    @classmethod
    def from_lmht(cls, neuron: "LMHTNeuron | MHTNeuron", first_layer: bool) -> "ReparameterizedIF":
        """The IF neuron of the reparameterised network for one trained LM-HT/M-HT layer.

        ``first_layer=True`` is the layer fed by the analog stem: its stem output is fed unscaled to every
        one of the L sub-steps of a window, so the neuron divides it by L (net scale ``in_scale/L``; 1 for a
        hybrid-converted layer with ``in_scale = L``). Hidden layers keep ``in_scale`` and instead get
        their synaptic biases divided by L (done by :func:`multispike.convert.lmht.reparameterize_lmht`).
        """
        if isinstance(neuron, MHTNeuron):
            raise TypeError("ReparameterizedIF.from_lmht: an MHTNeuron has no T; use from_mht(neuron, T, first_layer)")
        if not isinstance(neuron, LMHTNeuron):
            raise TypeError(f"ReparameterizedIF.from_lmht: expected an LMHTNeuron, got {type(neuron).__name__}")
        return cls._build(neuron, neuron.T, neuron.omega, first_layer)

    @classmethod
    def from_mht(cls, neuron: MHTNeuron, T: int, first_layer: bool) -> "ReparameterizedIF":
        """As :meth:`from_lmht` for an :class:`MHTNeuron` run for ``T`` steps (Ω = I)."""
        if not isinstance(neuron, MHTNeuron):
            raise TypeError(f"ReparameterizedIF.from_mht: expected an MHTNeuron, got {type(neuron).__name__}")
        return cls._build(neuron, check_positive_int(T, "T", fix="Use T >= 1."), None, first_layer)

    @classmethod
    def _build(cls, neuron, T, omega, first_layer):
        L = neuron.levels
        # The first layer's stem output reaches each of the L sub-steps unscaled (the input sequence is
        # repeated L times), so it needs a 1/L; hidden layers get their biases divided by L instead.
        scale = neuron.in_scale / L if first_layer else neuron.in_scale
        with torch.no_grad():
            new = cls(T=T, window=L, omega=None if omega is None else omega.detach(), leak=neuron.leak.detach(),
                      v_threshold=neuron.v_threshold, v_init=neuron.v_init, in_scale=scale, backend=neuron.backend)
        return new.to(device=neuron.v_threshold.device)

    @property
    def omega(self) -> torch.Tensor:
        return self.omega_hat

    @property
    def leak(self) -> torch.Tensor:
        return self.leak_schedule_buf[0]

    @property
    def leak_schedule(self) -> torch.Tensor:
        return self.leak_schedule_buf

    @property
    def steps(self) -> int:
        """L·T, the number of sub-steps this neuron expects."""
        return self.T * self.window

    def extra_repr(self) -> str:
        return (f"T={self.T}, window={self.window}, steps={self.steps}, leak={float(self.leak):.4g}, "
                f"{self._base_repr()}")
