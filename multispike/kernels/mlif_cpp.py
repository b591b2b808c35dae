"""Fused C++/OpenMP CPU kernel for one-hot M-LIF (kernel family ``"mlif"``, backend ``"cpp"``).

:func:`mlif_multistep_cpp` has the signature of :func:`multispike.neurons.mlif.mlif_multistep`; forward payloads
and states are bit-identical to it, gradients (input, initial state, learnable θ and β) equal up to summation
order. One pass per element over T; the backward recomputes the membrane from the saved input and evaluates
the telescoped lane-window derivative ``Σ_k c_k·φ_k(r)`` of algorithms.md §5.3 in the same pass.

Fused: soft (paper form and code form) and hard reset, the SpikingJelly ``decay_input`` charge, both lane
bounds, scaled lanes, every window surrogate
(``paper_difference``, ``code_sum``, ``fast_unscaled``) with triangle, sigmoid, atan or rectangular shapes,
``fire_ge``, ``detach_reset``, float32/float64, any dense step layout. ``lane_mask`` (lane dropout),
``return_lanes``, ``store_v_seq``, per-element thresholds and custom shapes run the reference.

Example::

    >>> import torch
    >>> y, state, _ = mlif_multistep_cpp(torch.tensor([[3.0], [3.0], [3.0]]), lanes=3, reset_leak=True)
    >>> y.flatten().tolist()
    [2.0, 2.0, 4.0]
"""
from __future__ import annotations

import ctypes

import torch

from . import _build
from ._common import (FLOAT_CODES, empty_seq, empty_step, initial_state, match_layout, reference, scalar_param,
                      step_layout)
from .lif_cpp import surrogate_code
from .registry import register_kernel

__all__ = ["mlif_multistep_cpp", "mlif_plan"]


class _MPlan:
    __slots__ = ("fp", "ip", "theta_t", "leak_t", "paper")

    def __init__(self, fp, ip, theta_t, leak_t, paper):
        self.fp, self.ip, self.theta_t, self.leak_t, self.paper = fp, ip, theta_t, leak_t, paper


def mlif_plan(x_seq, state, *, lanes, v_threshold, leak, v_init, reset, reset_leak, decay_input, lane_bounds, scaled,
              surrogate, shape, gamma, alpha, fire_ge, detach_reset, lane_mask, return_lanes, store_v_seq):
    """``(plan, v0, lr0)`` when the fused kernels reproduce this call exactly, else ``None`` (the reference then
    runs, raising its own errors for invalid arguments)."""
    from ..neurons import mlif as ref_mod
    if not isinstance(x_seq, torch.Tensor) or x_seq.dtype not in FLOAT_CODES or x_seq.dim() < 2:
        return None
    if x_seq.numel() == 0 or lane_mask is not None or return_lanes or store_v_seq:
        return None
    try:
        cfg = ref_mod._resolve_window(lanes, lane_bounds, fire_ge, surrogate, shape, gamma, alpha, "mlif_multistep")
        ref_mod._check_choice(reset, "reset", ref_mod.MLIF_RESETS, "mlif_multistep")
        ref_mod._check_threshold(v_threshold, "mlif_multistep")
    except (ValueError, TypeError):
        return None
    surr = surrogate_code(cfg.shape, derivative_only=True)
    theta = scalar_param(v_threshold, x_seq)
    lk = scalar_param(leak, x_seq)
    if surr is None or theta is None or lk is None:
        return None
    S = cfg.lanes
    soft = reset == "soft"
    paper = soft and not reset_leak
    if decay_input and paper:
        return None  # invalid: the reference raises
    # decay_input charge m = v + (I − v)·(1 − β): (1 − β) is computed in β's own dtype, as the reference does
    oml = 1.0 - lk[0]  # a Python float, or a 0-d tensor in β's dtype
    unit = 2.0 ** -(S - 1) if scaled else 1.0
    start = initial_state(x_seq, state, v_init, want_last_reset=paper)
    if start is None:
        return None
    v0, lr0, v_init_value = start
    fp = (theta[0], theta[0] * unit, lk[0], v_init_value, unit, surr[1], surr[2], oml)
    ip = [2 if decay_input else int(paper), S, int(cfg.floor), int(cfg.fire_ge), int(soft), int(bool(detach_reset)),
          int(cfg.sign), int(cfg.unscaled), surr[0], 0, 0]
    return _MPlan(fp, ip, theta[1], lk[1], paper), v0, lr0


def _ptr(t):
    return None if t is None else t.data_ptr()


def _arrays(plan: _MPlan, need):
    ip = list(plan.ip)
    ip[9], ip[10] = (int(n) for n in need)
    return (ctypes.c_double * 8)(*(float(v) for v in plan.fp)), (ctypes.c_int64 * 11)(*ip)


def _forward(lib, x, strides, v0, lr0, plan):
    T, N = x.shape[0], x[0].numel()
    y = empty_seq(x.shape, strides, x.dtype)
    vT = empty_step(x.shape[1:], strides, x.dtype)
    lrT = empty_step(x.shape[1:], strides, x.dtype) if plan.paper else None
    fp, ip = _arrays(plan, (False, False))
    rc = lib.ms_mlif_forward(FLOAT_CODES[x.dtype], x.data_ptr(), T, N, x.stride(0) if T > 1 else N, y.data_ptr(), N,
                             _ptr(v0), _ptr(lr0), vT.data_ptr(), _ptr(lrT), fp, ip, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"multispike: C++ M-LIF forward kernel failed with code {rc}")
    return y, vT, lrT


class _MLIFCppFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, lr0, theta_t, leak_t, plan, strides, lib):
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
        gy = match_layout(torch.zeros_like(x) if gy is None else gy, strides, seq=True)
        gvT = None if gvT is None else match_layout(gvT, strides, seq=False)
        glrT = None if glrT is None else match_layout(glrT, strides, seq=False)
        gx = empty_seq(x.shape, strides, x.dtype)
        gv0 = empty_step(x.shape[1:], strides, x.dtype) if v0 is not None and ctx.needs_input_grad[1] else None
        glr0 = empty_step(x.shape[1:], strides, x.dtype) if lr0 is not None and ctx.needs_input_grad[2] else None
        need = (ctx.needs_input_grad[3], ctx.needs_input_grad[4])
        fp, ip = _arrays(plan, need)
        pgrad = (ctypes.c_double * 2)()
        rc = lib.ms_mlif_backward(FLOAT_CODES[x.dtype], x.data_ptr(), T, N, x.stride(0) if T > 1 else N,
                                  gy.data_ptr(), gy.stride(0) if T > 1 else N, _ptr(v0), _ptr(lr0), _ptr(gvT),
                                  _ptr(glrT), gx.data_ptr(), N, _ptr(gv0), _ptr(glr0), pgrad, fp, ip,
                                  torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"multispike: C++ M-LIF backward kernel failed with code {rc}")
        g_theta = torch.tensor(pgrad[0], dtype=plan.theta_t.dtype).reshape(plan.theta_t.shape) if need[0] else None
        g_leak = torch.tensor(pgrad[1], dtype=plan.leak_t.dtype).reshape(plan.leak_t.shape) if need[1] else None
        return gx, gv0, glr0, g_theta, g_leak, None, None, None


def mlif_multistep_cpp(
    x_seq: torch.Tensor,
    state=None,
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
    shape="triangle",
    gamma: float = 0.3,
    alpha: float = 4.0,
    fire_ge: bool = False,
    detach_reset: bool = False,
    lane_mask: torch.Tensor | None = None,
    return_lanes: bool = False,
    store_v_seq: bool = False,
):
    """Fused CPU one-hot M-LIF dynamics; same signature, values and gradients as
    :func:`multispike.neurons.mlif.mlif_multistep` (see this module's docstring for what runs fused)."""
    kwargs = dict(lanes=lanes, v_threshold=v_threshold, leak=leak, v_init=v_init, reset=reset, reset_leak=reset_leak,
                  decay_input=decay_input,
                  lane_bounds=lane_bounds, scaled=scaled, surrogate=surrogate, shape=shape, gamma=gamma, alpha=alpha,
                  fire_ge=fire_ge, detach_reset=detach_reset, lane_mask=lane_mask, return_lanes=return_lanes,
                  store_v_seq=store_v_seq)
    lib = _build.load_library() if isinstance(x_seq, torch.Tensor) and x_seq.device.type == "cpu" else None
    planned = mlif_plan(x_seq, state, **kwargs) if lib is not None else None
    if planned is None:
        return reference("mlif")(x_seq, state, **kwargs)
    return run_mlif(lib, x_seq, state, planned)


def run_mlif(lib, x_seq, state, planned):
    from ..neurons.if_lif import LIFState
    from ..neurons.mlif import MLIFExtras
    plan, v0, lr0 = planned
    x, strides = step_layout(x_seq)
    if v0 is not None:
        v0 = match_layout(v0, strides, seq=False)
    if lr0 is not None:
        lr0 = match_layout(lr0, strides, seq=False)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (x, v0, lr0, plan.theta_t, plan.leak_t))
    if grad:
        y, vT, lrT = _MLIFCppFunction.apply(x, v0, lr0, plan.theta_t, plan.leak_t, plan, strides, lib)
    else:
        y, vT, lrT = _forward(lib, x, strides, v0, lr0, plan)
    if not plan.paper:
        lrT = None if state is None else getattr(state, "last_reset", None)
    return y, LIFState(vT, lrT), MLIFExtras(None, None)


register_kernel("mlif", "cpp", mlif_multistep_cpp, devices=("cpu",))
