"""Fused C++/OpenMP CPU kernel for the IF/LIF multi-step dynamics (kernel family ``"lif"``, backend ``"cpp"``).

:func:`lif_multistep_cpp` has the signature of :func:`multispike.neurons.lif_multistep` and returns the same
values: forward outputs bit-identical, gradients equal up to floating-point summation order. One pass per
element over T with the membrane kept in cache-resident block buffers; forward traffic is one read of ``x``
and one write of ``y`` per element-step (plus the final state). The backward recomputes the membrane from the
saved input - nothing else is saved (zero bytes per element-step beyond the input itself) - and runs the
adjoint recursion backwards in time in the same pass.

Supported exactly: soft/hard reset, every ``leak_mode``, ``reset_leak=False``, ``fire_ge``, ``detach_reset``,
both payloads, both surrogate forms, and the surrogates :class:`~multispike.neurons.surrogate.Sigmoid`,
:class:`~multispike.neurons.surrogate.ATan`, :class:`~multispike.neurons.surrogate.Rectangular` and
:class:`~multispike.neurons.surrogate.Triangle` (both forms); θ, λ, τ and ``v_init`` as numbers or one-element
tensors (learnable ones get their gradient); float32 and float64; any dense step layout (channels_last).
Anything else - per-element threshold tensors, ``store_v_seq=True``, custom surrogates, other dtypes or
devices - transparently runs the reference function, as does everything when the library cannot be built.

Example::

    >>> import torch
    >>> from multispike.kernels.lif_cpp import lif_multistep_cpp
    >>> y, state, _ = lif_multistep_cpp(torch.full((4, 1), 0.5), v_init=0.5)
    >>> y.flatten().tolist()
    [1.0, 0.0, 1.0, 0.0]
"""
from __future__ import annotations

import ctypes
import math

import torch

from . import _build
from ._common import (FLOAT_CODES, empty_seq, empty_step, initial_state, match_layout, reference, scalar_param,
                      step_layout)
from .registry import register_kernel

__all__ = ["lif_multistep_cpp", "lif_plan", "surrogate_code"]

_LEAK_MODES = {"post_reset": 0, "decay_input": 2, "decay_state": 3}
_LM_PRN = 1


def surrogate_code(surrogate, derivative_only: bool = False) -> tuple[int, float, float] | None:
    """(kind, p0, p1) of the fused kernels' surrogate derivative, or None for a surrogate they cannot express.

    ``derivative_only``: only ``h'`` is used (M-LIF window shapes), so the ``spiking`` flag does not matter."""
    from ..neurons.surrogate import ATan, Rectangular, Sigmoid, Triangle
    if surrogate is None:
        return 0, 4.0, 0.0  # lif_multistep's default Sigmoid(4)
    if not derivative_only and not getattr(surrogate, "spiking", False):
        return None  # the smooth primitive replaces the step in the forward: reference only
    kind, a = type(surrogate), float(surrogate.alpha)
    if kind is Sigmoid:
        return 0, a, 0.0
    if kind is ATan:
        return 1, a / 2, math.pi / 2 * a
    if kind is Rectangular:
        return 2, a / 2, 1.0 / a
    if kind is Triangle:
        if surrogate.form == "tet":
            return 3, a, 1.0 / (a * a)
        if surrogate.form == "diet":
            return 3, 1.0, a
    return None


class _Plan:
    """Everything the kernel needs besides the tensors: scalar values, flags and gradient routing."""

    __slots__ = ("fp", "ip", "theta_t", "leak_t", "tau_t", "uses_theta", "uses_leak", "uses_tau", "prn")

    def __init__(self, fp, ip, theta_t, leak_t, tau_t, uses_theta, uses_leak, uses_tau, prn):
        self.fp, self.ip = fp, ip
        self.theta_t, self.leak_t, self.tau_t = theta_t, leak_t, tau_t
        self.uses_theta, self.uses_leak, self.uses_tau, self.prn = uses_theta, uses_leak, uses_tau, prn


def lif_plan(x_seq, state, *, v_threshold, v_init, leak, tau, leak_mode, v_reset, reset_leak, fire_ge, surrogate,
             surrogate_form, detach_reset, payload, store_v_seq):
    """Return ``(plan, v0, lr0)`` when the fused kernels can run this call exactly, else ``None``.

    Shared by the CPU and the Triton kernel (the device check is the caller's)."""
    if not isinstance(x_seq, torch.Tensor) or x_seq.dtype not in FLOAT_CODES or x_seq.dim() < 1:
        return None
    if x_seq.numel() == 0 or store_v_seq:
        return None
    if leak_mode not in _LEAK_MODES or surrogate_form not in ("difference", "normalized"):
        return None
    if payload not in ("spike", "threshold"):
        return None
    if not reset_leak and (v_reset is not None or leak_mode != "post_reset"):
        return None  # invalid: the reference raises the error
    if v_reset is not None and (isinstance(v_reset, (bool, torch.Tensor)) or not isinstance(v_reset, (int, float))):
        return None
    surr = surrogate_code(surrogate)
    if surr is None:
        return None
    theta = scalar_param(v_threshold, x_seq)
    lk = scalar_param(leak, x_seq)
    tu = scalar_param(tau, x_seq)
    if theta is None or lk is None or tu is None:
        return None
    prn = not reset_leak
    start = initial_state(x_seq, state, v_init, want_last_reset=prn)
    if start is None:
        return None
    v0, lr0, v_init_value = start
    soft = v_reset is None
    normalized = surrogate_form == "normalized"
    pth = payload == "threshold"
    lm = _LM_PRN if prn else _LEAK_MODES[leak_mode]
    vr0 = 0.0 if v_reset is None else float(v_reset)
    fp = (theta[0], lk[0], tu[0], vr0, vr0, v_init_value, surr[1], surr[2])
    ip = [lm, int(soft), int(bool(fire_ge)), int(normalized), int(pth), int(bool(detach_reset)), surr[0], 0, 0, 0]
    uses_theta = pth or soft or normalized
    uses_leak = leak_mode == "post_reset"
    uses_tau = leak_mode != "post_reset"
    plan = _Plan(fp, ip, theta[1], lk[1], tu[1], uses_theta, uses_leak, uses_tau, prn)
    return plan, v0, lr0


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _arrays(plan: _Plan, need: tuple[bool, bool, bool]):
    fp = (ctypes.c_double * 8)(*(float(v) for v in plan.fp))
    ip = list(plan.ip)
    ip[7], ip[8], ip[9] = (int(n) for n in need)
    return fp, (ctypes.c_int64 * 10)(*ip)


def _forward(lib, x, strides, v0, lr0, plan: _Plan):
    T = x.shape[0]
    N = x[0].numel()
    y = empty_seq(x.shape, strides, x.dtype)
    vT = empty_step(x.shape[1:], strides, x.dtype)
    lrT = empty_step(x.shape[1:], strides, x.dtype) if plan.prn else None
    fp, ip = _arrays(plan, (False, False, False))
    rc = lib.ms_lif_forward(FLOAT_CODES[x.dtype], x.data_ptr(), T, N, x.stride(0) if T > 1 else N, y.data_ptr(), N,
                            _ptr(v0), _ptr(lr0), vT.data_ptr(), _ptr(lrT), fp, ip, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"multispike: C++ LIF forward kernel failed with code {rc}")
    return y, vT, lrT


def _grad_scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=like.dtype, device=like.device).reshape(like.shape)


class _LIFCppFunction(torch.autograd.Function):
    """Autograd wrapper: saves only the input (and the initial state), recomputes the membrane in backward."""

    @staticmethod
    def forward(ctx, x, v0, lr0, theta_t, leak_t, tau_t, plan, strides, lib):
        y, vT, lrT = _forward(lib, x, strides, v0, lr0, plan)
        ctx.save_for_backward(x, v0, lr0)
        ctx.plan, ctx.strides, ctx.lib = plan, strides, lib
        ctx.set_materialize_grads(False)
        return y, vT, lrT

    @staticmethod
    def backward(ctx, gy, gvT, glrT):
        x, v0, lr0 = ctx.saved_tensors
        plan, strides, lib = ctx.plan, ctx.strides, ctx.lib
        T, N = x.shape[0], x[0].numel()
        if gy is None:
            gy = torch.zeros_like(x)
        gy = match_layout(gy, strides, seq=True)
        gvT = None if gvT is None else match_layout(gvT, strides, seq=False)
        glrT = None if glrT is None else match_layout(glrT, strides, seq=False)
        gx = empty_seq(x.shape, strides, x.dtype)
        gv0 = empty_step(x.shape[1:], strides, x.dtype) if v0 is not None and ctx.needs_input_grad[1] else None
        glr0 = empty_step(x.shape[1:], strides, x.dtype) if lr0 is not None and ctx.needs_input_grad[2] else None
        need = (ctx.needs_input_grad[3], ctx.needs_input_grad[4], ctx.needs_input_grad[5])
        fp, ip = _arrays(plan, need)
        pgrad = (ctypes.c_double * 3)()
        rc = lib.ms_lif_backward(FLOAT_CODES[x.dtype], x.data_ptr(), T, N, x.stride(0) if T > 1 else N,
                                 gy.data_ptr(), gy.stride(0) if T > 1 else N, _ptr(v0), _ptr(lr0), _ptr(gvT),
                                 _ptr(glrT), gx.data_ptr(), N, _ptr(gv0), _ptr(glr0), pgrad, fp, ip,
                                 torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"multispike: C++ LIF backward kernel failed with code {rc}")
        g_theta = _grad_scalar(pgrad[0], plan.theta_t) if need[0] else None
        g_leak = _grad_scalar(pgrad[1], plan.leak_t) if need[1] else None
        g_tau = _grad_scalar(pgrad[2], plan.tau_t) if need[2] else None
        return gx, gv0, glr0, g_theta, g_leak, g_tau, None, None, None


def lif_multistep_cpp(
    x_seq: torch.Tensor,
    state=None,
    *,
    v_threshold: float | torch.Tensor = 1.0,
    v_init: float | torch.Tensor = 0.0,
    leak: float | torch.Tensor = 1.0,
    tau: float | torch.Tensor = 2.0,
    leak_mode: str = "post_reset",
    v_reset: float | None = None,
    reset_leak: bool = True,
    fire_ge: bool = True,
    surrogate=None,
    surrogate_form: str = "difference",
    detach_reset: bool = False,
    payload: str = "spike",
    store_v_seq: bool = False,
):
    """Fused CPU IF/LIF dynamics; same signature, values and gradients as
    :func:`multispike.neurons.lif_multistep` (see this module's docstring for what runs fused)."""
    kwargs = dict(v_threshold=v_threshold, v_init=v_init, leak=leak, tau=tau, leak_mode=leak_mode, v_reset=v_reset,
                  reset_leak=reset_leak, fire_ge=fire_ge, surrogate=surrogate, surrogate_form=surrogate_form,
                  detach_reset=detach_reset, payload=payload, store_v_seq=store_v_seq)
    lib = _build.load_library() if isinstance(x_seq, torch.Tensor) and x_seq.device.type == "cpu" else None
    planned = lif_plan(x_seq, state, **kwargs) if lib is not None else None
    if planned is None:
        return reference("lif")(x_seq, state, **kwargs)
    return run_lif(lib, x_seq, state, planned)


def run_lif(lib, x_seq, state, planned):
    """Run the planned LIF kernel (forward only without autograd, else through the autograd function)."""
    from ..neurons.if_lif import LIFState
    plan, v0, lr0 = planned
    x, strides = step_layout(x_seq)
    if v0 is not None:
        v0 = match_layout(v0, strides, seq=False)
    if lr0 is not None:
        lr0 = match_layout(lr0, strides, seq=False)
    pt = [t if (isinstance(t, torch.Tensor) and u) else None
          for t, u in ((plan.theta_t, plan.uses_theta), (plan.leak_t, plan.uses_leak), (plan.tau_t, plan.uses_tau))]
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, v0, lr0, *pt))
    if grad:
        y, vT, lrT = _LIFCppFunction.apply(x, v0, lr0, pt[0], pt[1], pt[2], plan, strides, lib)
    else:
        y, vT, lrT = _forward(lib, x, strides, v0, lr0, plan)
    if not plan.prn:
        lrT = None if state is None else getattr(state, "last_reset", None)
    return y, LIFState(vT, lrT), None


register_kernel("lif", "cpp", lif_multistep_cpp, devices=("cpu",))
