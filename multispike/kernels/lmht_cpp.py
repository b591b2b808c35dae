"""Fused C++/OpenMP CPU kernel for the LM-HT / M-HT dynamics (kernel family ``"lmht"``, backend ``"cpp"``).

:func:`lmht_multistep_cpp` has the signature of :func:`multispike.neurons.lmht.lmht_multistep`; outputs and
states are bit-identical, gradients equal up to summation order. The multi-level fire-and-reset loop
(``m = λ_t·v + I``, ``y = θ·clip(⌊m/θ⌋, 0, L)``, ``v = m − y``) runs fused, one pass per element over T, with the
input scale folded in; its backward recomputes the membrane and applies the rectangle window, the temporal and
reset detaches and the per-step leak gradients in one pass.

The T-GIM mixing ``I = Ω·x`` is *not* fused: the reference computes it with ``torch.einsum``, i.e. a BLAS GEMM
whose summation order and use of fused multiply-adds depend on the shape (measured: for ``T = 4`` float32, MKL
rounds like sequential FMAs when the trailing size is >= 64 and like separate multiply-adds below; for ``T = 5``
like neither). A fused mixing would therefore differ from the reference in the last bit and flip spikes that sit
exactly on a threshold, so the kernel calls the same ``einsum`` and fuses everything after it. The C++ source is
``csrc/lmht.cpp``.

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

from ..neurons.params import LMHTParameters
from ._abi import FLOAT_CODES, LmhtArgs, Plan
from ._common import initial_state, scalar_param
from ._fused import CppEngine, cpp_entry, run_planned
from .registry import register_kernel

__all__ = ["lmht_multistep_cpp", "lmht_plan"]


def lmht_plan(x_seq, state, p: LMHTParameters):
    """``(plan, current, v0)`` when the fused level loop reproduces this call exactly, else ``None``.

    ``current`` is the kernel input: ``x_seq`` itself (the input scale is applied in the kernel) or, with a
    T-GIM, ``einsum(Ω, in_scale·x)`` computed exactly as the reference computes it."""
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
    if omega is not None and (not isinstance(omega, torch.Tensor) or tuple(omega.shape) != (T, T)):
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
    if omega is not None:
        x = x_seq if scale_is_one else x_seq * in_scale
        current = torch.einsum("tj,j...->t...", omega.to(dtype=x.dtype, device=x.device), x)
        scale_input = 0
    else:
        current = x_seq
        scale_input = 0 if scale_is_one else 1
    start = initial_state(x_seq, state, p.v_init, first=current[0], dtype=x_seq.dtype)
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
    plan = Plan("lmht", LmhtArgs, scalars, flags, (leak_t, sched_t), ("need_leak", "need_leak"), lam=lam)
    return plan, current, v0


lmht_multistep_cpp = cpp_entry(
    LMHTParameters, lmht_plan, "run_lmht", "lmht_multistep_cpp", __name__,
    """Fused CPU LM-HT / M-HT dynamics; same signature, values and gradients as
    :func:`multispike.neurons.lmht.lmht_multistep` (see this module's docstring for what runs fused).""")


def run_lmht(lib, x_seq, state, planned):
    """Run the planned LM-HT level loop on the (mixed) current ``planned[1]``."""
    from ..neurons.lmht import LMHTState
    plan, current, v0 = planned
    y, vT, _ = run_planned(CppEngine(lib), current, v0, None, plan)
    return y, LMHTState(vT), None


register_kernel("lmht", "cpp", lmht_multistep_cpp, devices=("cpu",))
