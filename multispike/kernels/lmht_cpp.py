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
exactly on a threshold, so the kernel calls the same ``einsum`` and fuses everything after it.

Example::

    >>> import torch
    >>> y, st, _ = lmht_multistep_cpp(torch.tensor([[2.5], [0.5]]), levels=2,
    ...                               omega=torch.full((2, 2), 0.5), v_threshold=1.0)
    >>> y.flatten().tolist(), st.v.flatten().tolist()
    ([1.0, 2.0], [0.0])
"""
from __future__ import annotations

import ctypes
import math

import torch

from . import _build
from ._common import (FLOAT_CODES, empty_seq, empty_step, initial_state, match_layout, reference, scalar_param,
                      step_layout)
from .registry import register_kernel

__all__ = ["lmht_multistep_cpp", "lmht_plan"]


class _HPlan:
    __slots__ = ("fp", "ip", "lam", "leak_t", "sched_t", "detach_temporal")
    # lam: the leak - a float, a 0-d tensor (one λ for every step) or a [T] tensor (leak schedule)

    def __init__(self, fp, ip, lam, leak_t, sched_t, detach_temporal):
        self.fp, self.ip, self.lam, self.leak_t, self.sched_t = fp, ip, lam, leak_t, sched_t
        self.detach_temporal = detach_temporal


def lmht_plan(x_seq, state, *, levels, omega, leak, v_threshold, v_init, in_scale, leak_schedule, detach_temporal,
              detach_reset, surrogate_width, store_v_seq):
    """``(plan, current, v0)`` when the fused level loop reproduces this call exactly, else ``None``.

    ``current`` is the kernel input: ``x_seq`` itself (the input scale is applied in the kernel) or, with a
    T-GIM, ``einsum(Ω, in_scale·x)`` computed exactly as the reference computes it."""
    if not isinstance(x_seq, torch.Tensor) or x_seq.dtype not in FLOAT_CODES or x_seq.dim() < 2:
        return None
    if x_seq.numel() == 0 or store_v_seq:
        return None
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1 or levels >= 2 ** 30:
        return None
    T = x_seq.shape[0]
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
    if not isinstance(surrogate_width, (int, float)) or not (math.isfinite(float(surrogate_width))
                                                            and surrogate_width >= 0):
        return None
    if omega is not None and (not isinstance(omega, torch.Tensor) or tuple(omega.shape) != (T, T)):
        return None
    scale = scalar_param(in_scale, x_seq)
    if scale is None or (scale[1] is not None and scale[1].requires_grad):
        return None
    scale_is_one = isinstance(in_scale, (int, float)) and in_scale == 1
    leak_t = sched_t = None
    if leak_schedule is not None:
        if not isinstance(leak_schedule, torch.Tensor) or tuple(leak_schedule.shape) != (T,) \
                or not leak_schedule.is_floating_point() or leak_schedule.device != x_seq.device:
            return None
        lam = leak_schedule.detach()
        sched_t = leak_schedule
    else:
        lk = scalar_param(leak, x_seq)
        if lk is None:
            return None
        lam = lk[0]
        leak_t = lk[1]
    dt = x_seq.dtype
    # the reference's window bounds: Python scalars (1−w), (L+w) times θ in the data type
    lo = (1.0 - surrogate_width) * theta
    hi = (levels + surrogate_width) * theta
    if omega is not None:
        x = x_seq if scale_is_one else x_seq * in_scale
        current = torch.einsum("tj,j...->t...", omega.to(dtype=x.dtype, device=x.device), x)
        scale_input = 0
    else:
        current = x_seq
        scale_input = 0 if scale_is_one else 1
    start = initial_state(x_seq, state, v_init, first=current[0], dtype=dt)
    if start is None:
        return None
    v0, _, v_init_value = start
    if v0 is not None and detach_temporal:
        v0 = v0.detach()  # m = λ·sg(v) + I: no gradient reaches the initial state
    fp = (theta, scale[0], v_init_value, lo, hi)
    ip = [levels, scale_input, int(bool(detach_temporal)), int(bool(detach_reset)), 0, T]
    return _HPlan(fp, ip, lam, leak_t, sched_t, bool(detach_temporal)), current, v0


def _ptr(t):
    return None if t is None else t.data_ptr()


def _arrays(plan: _HPlan, need_leak: bool):
    ip = list(plan.ip)
    ip[4] = int(need_leak)
    lam = plan.lam
    lam = lam.tolist() if isinstance(lam, torch.Tensor) and lam.dim() == 1 else [float(lam)] * ip[5]
    return ((ctypes.c_double * 5)(*(float(v) for v in plan.fp)), (ctypes.c_int64 * 6)(*ip),
            (ctypes.c_double * len(lam))(*lam))


def _forward(lib, x, strides, v0, plan):
    T, N = x.shape[0], x[0].numel()
    y = empty_seq(x.shape, strides, x.dtype)
    vT = empty_step(x.shape[1:], strides, x.dtype)
    fp, ip, lam = _arrays(plan, False)
    rc = lib.ms_lmht_forward(FLOAT_CODES[x.dtype], x.data_ptr(), T, N, x.stride(0) if T > 1 else N, y.data_ptr(), N,
                             _ptr(v0), vT.data_ptr(), lam, fp, ip, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"multispike: C++ LM-HT forward kernel failed with code {rc}")
    return y, vT


class _LMHTCppFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, leak_t, sched_t, plan, strides, lib):
        y, vT = _forward(lib, x, strides, v0, plan)
        ctx.save_for_backward(x, v0)
        ctx.plan, ctx.strides, ctx.lib = plan, strides, lib
        ctx.set_materialize_grads(False)
        return y, vT

    @staticmethod
    def backward(ctx, gy, gvT):
        x, v0 = ctx.saved_tensors
        plan, strides, lib = ctx.plan, ctx.strides, ctx.lib
        T, N = x.shape[0], x[0].numel()
        gy = match_layout(torch.zeros_like(x) if gy is None else gy, strides, seq=True)
        gvT = None if gvT is None else match_layout(gvT, strides, seq=False)
        gx = empty_seq(x.shape, strides, x.dtype)
        gv0 = empty_step(x.shape[1:], strides, x.dtype) if v0 is not None and ctx.needs_input_grad[1] else None
        need_leak = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        fp, ip, lam = _arrays(plan, need_leak)
        pgrad = (ctypes.c_double * T)()
        rc = lib.ms_lmht_backward(FLOAT_CODES[x.dtype], x.data_ptr(), T, N, x.stride(0) if T > 1 else N,
                                  gy.data_ptr(), gy.stride(0) if T > 1 else N, _ptr(v0), _ptr(gvT), gx.data_ptr(), N,
                                  _ptr(gv0), lam, pgrad, fp, ip, torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"multispike: C++ LM-HT backward kernel failed with code {rc}")
        g_leak = g_sched = None
        if ctx.needs_input_grad[2]:
            g_leak = torch.tensor(math.fsum(pgrad), dtype=plan.leak_t.dtype).reshape(plan.leak_t.shape)
        if ctx.needs_input_grad[3]:
            g_sched = torch.tensor(list(pgrad), dtype=plan.sched_t.dtype)
        return gx, gv0, g_leak, g_sched, None, None, None


def lmht_multistep_cpp(
    x_seq: torch.Tensor,
    state=None,
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
):
    """Fused CPU LM-HT / M-HT dynamics; same signature, values and gradients as
    :func:`multispike.neurons.lmht.lmht_multistep` (see this module's docstring for what runs fused)."""
    kwargs = dict(levels=levels, omega=omega, leak=leak, v_threshold=v_threshold, v_init=v_init, in_scale=in_scale,
                  leak_schedule=leak_schedule, detach_temporal=detach_temporal, detach_reset=detach_reset,
                  surrogate_width=surrogate_width, store_v_seq=store_v_seq)
    lib = _build.load_library() if isinstance(x_seq, torch.Tensor) and x_seq.device.type == "cpu" else None
    planned = lmht_plan(x_seq, state, **kwargs) if lib is not None else None
    if planned is None:
        return reference("lmht")(x_seq, state, **kwargs)
    return run_lmht(lib, planned)


def run_lmht(lib, planned):
    from ..neurons.lmht import LMHTState
    plan, current, v0 = planned
    x, strides = step_layout(current)
    if v0 is not None:
        v0 = match_layout(v0, strides, seq=False)
    leak_t = plan.leak_t if isinstance(plan.leak_t, torch.Tensor) else None
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, v0, leak_t, plan.sched_t))
    if grad:
        y, vT = _LMHTCppFunction.apply(x, v0, leak_t, plan.sched_t, plan, strides, lib)
    else:
        y, vT = _forward(lib, x, strides, v0, plan)
    return y, LMHTState(vT), None


register_kernel("lmht", "cpp", lmht_multistep_cpp, devices=("cpu",))
