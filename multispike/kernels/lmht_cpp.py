"""Fused C++/OpenMP CPU kernel for the LM-HT / M-HT dynamics (kernel family ``"lmht"``, backend ``"cpp"``).

:func:`lmht_multistep_cpp` has the signature of :func:`multispike.neurons.lmht.lmht_multistep`; outputs and
states are bit-identical, gradients equal up to summation order. Everything runs fused, one pass per block of
elements over T: the T-GIM mixing ``I(t) = Σ_j ω_tj·(in_scale·x(j))`` in the fixed order of
:func:`~multispike.neurons.lmht.tgim_mix` (``j = 0..T−1``, each product and sum rounded in the data type; the
build never contracts them into fused multiply-adds, so spikes exactly on a threshold agree with the reference),
then the multi-level fire-and-reset loop (``m = λ_t·v + I``, ``y = θ·clip(⌊m/θ⌋, 0, L)``, ``v = m − y``). The
backward recomputes the membrane (mixing included), applies the rectangle window, the temporal and reset
detaches, the per-step leak gradients, ``Ωᵀ`` to ``dL/dI`` for the input gradient and sums ``dL/dΩ`` per block
(reduced in block order: deterministic for any thread count), all in one pass. The T-GIM reaches the kernel as
``T·T`` doubles holding its values already rounded to the data type (the reference mixes ``Ω.to(x.dtype)``), so
one record field serves float32 and float64 and the kernel's cast back is exact.

Rows of Ω equal to the previous row (a uniform or freshly initialised T-GIM) reuse the previous row's current:
the same operations on the same values, so still exact. The C++ source is ``csrc/lmht.cpp``.

The Triton backend fuses only the level loop: it plans with :func:`lmht_plan_unfused` (mixing by
:func:`~multispike.neurons.lmht.tgim_mix` in PyTorch, then the kernel on the mixed current).

Example::

    >>> import torch
    >>> y, st, _ = lmht_multistep_cpp(torch.tensor([[2.5], [0.5]]), levels=2,
    ...                               omega=torch.full((2, 2), 0.5), v_threshold=1.0)
    >>> y.flatten().tolist(), st.v.flatten().tolist()
    ([1.0, 2.0], [0.0])
"""
from __future__ import annotations

import math

import torch

from ..neurons.lmht import LMHTState, tgim_mix
from ..neurons.params import LMHTParameters
from ._abi import FLOAT_CODES, LmhtArgs, Plan
from ._common import initial_state, scalar_param
from ._fused import CppEngine, cpp_entry, run_planned
from .registry import register_kernel

__all__ = ["lmht_multistep_cpp", "lmht_plan", "lmht_plan_unfused"]


def lmht_plan(x_seq, state, p: LMHTParameters, fuse_mixing: bool = True):
    """``(plan, kernel_input, v0)`` when the fused kernel reproduces this call exactly, else ``None``.

    With ``fuse_mixing`` (the C++ kernel) ``kernel_input`` is ``x_seq`` itself: the input scale and the T-GIM
    (``plan.omega``) are applied in the kernel. Without (a kernel that runs only the level loop) it is the mixed
    current ``tgim_mix(Ω, in_scale·x)``, computed by the reference's own function, and ``plan.omega`` is None."""
    if not isinstance(x_seq, torch.Tensor) or x_seq.dtype not in FLOAT_CODES or x_seq.dim() < 2:
        return None
    if x_seq.numel() == 0 or p.store_v_seq:
        return None
    levels, omega, in_scale, width = p.levels, p.omega, p.in_scale, p.surrogate_width
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1 or levels >= 2 ** 30:
        return None
    T = x_seq.shape[0]
    v_threshold = p.v_threshold
    if isinstance(v_threshold, torch.Tensor):
        if v_threshold.requires_grad or v_threshold.numel() != 1 or v_threshold.device != x_seq.device \
                or v_threshold.dim() > x_seq.dim() - 1:
            return None
        theta = v_threshold.detach().reshape(()).to(x_seq.dtype)  # torch.as_tensor(θ, dtype=x.dtype)
    elif isinstance(v_threshold, (int, float)) and not isinstance(v_threshold, bool):
        if not (math.isfinite(float(v_threshold)) and float(v_threshold) > 0):
            return None
        theta = torch.tensor(float(v_threshold), dtype=x_seq.dtype, device=x_seq.device)
    else:
        return None
    if not isinstance(width, (int, float)) or not (math.isfinite(float(width)) and width >= 0):
        return None
    if omega is not None and (not isinstance(omega, torch.Tensor) or tuple(omega.shape) != (T, T)
                              or not omega.is_floating_point()):
        return None
    scale = scalar_param(in_scale, x_seq)
    if scale is None or (scale[1] is not None and scale[1].requires_grad):
        return None
    scale_is_one = isinstance(in_scale, (int, float)) and in_scale == 1
    leak_t = sched_t = None
    if p.leak_schedule is not None:
        sched = p.leak_schedule
        if not isinstance(sched, torch.Tensor) or tuple(sched.shape) != (T,) \
                or not sched.is_floating_point() or sched.device != x_seq.device:
            return None
        lam = sched.detach()
        sched_t = sched
    else:
        lk = scalar_param(p.leak, x_seq)
        if lk is None:
            return None
        lam, leak_t = lk
    omega_t = omega_v = None
    if omega is None:
        current, scale_input = x_seq, int(not scale_is_one)
    elif fuse_mixing:
        current, scale_input = x_seq, int(not scale_is_one)
        omega_v = omega.detach().to(dtype=x_seq.dtype, device=x_seq.device)  # Ω.to(x.dtype), as the reference
        omega_t = omega
    else:
        x = x_seq if scale_is_one else x_seq * in_scale
        current, scale_input = tgim_mix(omega, x), 0
    start = initial_state(x_seq, state, p.v_init, dtype=x_seq.dtype)
    if start is None:
        return None
    v0, _, v_init_value = start
    if v0 is not None and p.detach_temporal:
        v0 = v0.detach()  # m = λ·sg(v) + I: no gradient reaches the initial state
    # the reference's window bounds: Python scalars (1−w), (L+w) times θ in the data type
    scalars = dict(theta=theta, in_scale=scale[0], v_init=v_init_value, lo=(1.0 - width) * theta,
                   hi=(levels + width) * theta)
    flags = dict(levels=levels, scale_input=scale_input, detach_temporal=int(bool(p.detach_temporal)),
                 detach_reset=int(bool(p.detach_reset)))
    plan = Plan("lmht", LmhtArgs, scalars, flags, (leak_t, sched_t, omega_t),
                ("need_leak", "need_leak", "need_omega"), lam=lam, omega=omega_v)
    return plan, current, v0


def lmht_plan_unfused(x_seq, state, p: LMHTParameters):
    """:func:`lmht_plan` for a kernel that fuses only the level loop (the T-GIM mixed in PyTorch)."""
    return lmht_plan(x_seq, state, p, fuse_mixing=False)


def run_lmht(lib, x_seq, state, planned):
    """Run the planned LM-HT kernel on ``planned[1]`` (the input; the kernel mixes it with ``plan.omega``)."""
    plan, kernel_input, v0 = planned
    y, vT, _ = run_planned(CppEngine(lib), kernel_input, v0, None, plan)
    return y, LMHTState(vT), None


lmht_multistep_cpp = cpp_entry(
    LMHTParameters, lmht_plan, "run_lmht", "lmht_multistep_cpp", __name__,
    """Fused CPU LM-HT / M-HT dynamics, T-GIM mixing included; same signature, values and gradients as
    :func:`multispike.neurons.lmht.lmht_multistep` (see this module's docstring).""")

register_kernel("lmht", "cpp", lmht_multistep_cpp, devices=("cpu",))
