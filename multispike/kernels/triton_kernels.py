"""Fused Triton kernels for CUDA devices (backend ``"triton"``) of the IF/LIF, one-hot M-LIF and LM-HT families.

Same contract as the C++ CPU kernels: the reference signature, bit-identical forward outputs and states,
gradients equal up to summation order, and a transparent fallback to the reference for anything not covered
(the coverage is shared with the CPU kernels through :func:`~multispike.kernels.lif_cpp.lif_plan`,
:func:`~multispike.kernels.mlif_cpp.mlif_plan` and :func:`~multispike.kernels.lmht_cpp.lmht_plan`). Scalar
parameters are passed as a small device tensor in the data type, so a call never synchronises with the device.

``triton`` is imported on first use only; without it (or on a CPU tensor) the functions run the reference, and
``backend="auto"`` only resolves to ``"triton"`` when CUDA is present. The kernels themselves are in
:mod:`multispike.kernels._triton_impl`; ``benchmarks/gpu_check.py`` checks them against the references on a GPU.
"""
from __future__ import annotations

import warnings

import torch

from ._common import match_layout, reference, step_layout
from .registry import register_kernel

__all__ = ["lif_multistep_triton", "mlif_multistep_triton", "lmht_multistep_triton", "triton_available"]

_IMPL: dict = {}


def _impl(device: torch.device):
    """The kernel module, or None (with one warning) when Triton cannot be used for ``device``."""
    if device.type != "cuda" and not _interpreting():
        return None
    if "mod" not in _IMPL:
        try:
            from . import _triton_impl
            _IMPL["mod"] = _triton_impl
        except Exception as exc:  # ImportError, or a triton build without a usable backend
            _IMPL["mod"] = None
            warnings.warn(f"multispike: Triton kernels unavailable ({type(exc).__name__}: {exc}); using the reference "
                          f"PyTorch implementation", RuntimeWarning, stacklevel=3)
    return _IMPL["mod"]


def _interpreting() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def triton_available() -> bool:
    """True when the Triton kernels can run here (CUDA present and ``triton`` importable)."""
    return torch.cuda.is_available() and _impl(torch.device("cuda")) is not None


def _params(values, dtype, device) -> torch.Tensor:
    """A device tensor of scalars in the data type; tensor entries are cast on the device (no synchronisation)."""
    out = torch.tensor([0.0 if isinstance(v, torch.Tensor) else float(v) for v in values], dtype=dtype, device=device)
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            out[i] = v.detach().to(device=device, dtype=dtype)
    return out


def _launch(kernel, grid, *args, **meta):
    # enable_fp_fusion=False: no contraction of a*b+c into an FMA, which would round differently from PyTorch
    kernel[grid](*args, enable_fp_fusion=False, **meta)


def _tile(T: int, mod) -> tuple[int, bool, int]:
    """(TP, use_scratch, BLOCK) of a backward kernel."""
    tp = 1
    while tp < T:
        tp *= 2
    if T > mod.TILE_T_MAX:
        return 1, True, 512
    return tp, False, max(64, min(512, 4096 // tp))


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _seq_like(x, strides):
    n = x[0].numel()
    return torch.empty_strided(tuple(x.shape), (n, *strides), dtype=x.dtype, device=x.device)


def _step_like(x, strides):
    return torch.empty_strided(tuple(x.shape[1:]), tuple(strides), dtype=x.dtype, device=x.device)


def _tstride(t: torch.Tensor) -> int:
    return t.stride(0) if t.shape[0] > 1 else t[0].numel()


# ============================================================================================ IF / LIF
def _lif_forward(mod, x, strides, v0, lr0, plan, p):
    T, N = x.shape[0], x[0].numel()
    y, vT = _seq_like(x, strides), _step_like(x, strides)
    lrT = _step_like(x, strides) if plan.prn else None
    lm, soft, fire_ge, norm, pth = plan.ip[0], plan.ip[1], plan.ip[2], plan.ip[3], plan.ip[4]
    _launch(mod.lif_fwd_kernel, (_cdiv(N, 1024),), x, y, v0 if v0 is not None else x, lr0 if lr0 is not None else x,
            vT, lrT if lrT is not None else vT, p, T, N, _tstride(x), LM=lm, SOFT=bool(soft), FIRE_GE=bool(fire_ge),
            NORM=bool(norm), PTH=bool(pth), HAS_V0=v0 is not None, HAS_LR0=lr0 is not None,
            F32=x.dtype == torch.float32, BLOCK=1024, num_warps=4)
    return y, vT, lrT


class _LIFTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, lr0, theta_t, leak_t, tau_t, plan, strides, p, mod):
        y, vT, lrT = _lif_forward(mod, x, strides, v0, lr0, plan, p)
        ctx.save_for_backward(x, v0, lr0, p)
        ctx.plan, ctx.strides, ctx.mod = plan, strides, mod
        ctx.set_materialize_grads(False)
        return y, vT, lrT

    @staticmethod
    def backward(ctx, gy, gvT, glrT):
        x, v0, lr0, p = ctx.saved_tensors
        plan, strides, mod = ctx.plan, ctx.strides, ctx.mod
        T, N = x.shape[0], x[0].numel()
        gy = match_layout(torch.zeros_like(x) if gy is None else gy, strides, seq=True)
        gvT = None if gvT is None else match_layout(gvT, strides, seq=False)
        glrT = None if glrT is None else match_layout(glrT, strides, seq=False)
        gx = _seq_like(x, strides)
        want_gv0 = v0 is not None and ctx.needs_input_grad[1]
        want_glr0 = lr0 is not None and ctx.needs_input_grad[2]
        gv0 = _step_like(x, strides) if want_gv0 else None
        glr0 = _step_like(x, strides) if want_glr0 else None
        need = (ctx.needs_input_grad[3], ctx.needs_input_grad[4], ctx.needs_input_grad[5])
        tp, scratch, block = _tile(T, mod)
        grid = _cdiv(N, block)
        part = torch.zeros(grid * 3, dtype=torch.float64, device=x.device)
        scr = torch.empty((T, N) if scratch else (1,), dtype=x.dtype, device=x.device)
        ip = plan.ip
        _launch(mod.lif_bwd_kernel, (grid,), x, gy, v0 if v0 is not None else x, lr0 if lr0 is not None else x,
                gvT if gvT is not None else x, glrT if glrT is not None else x, gx,
                gv0 if gv0 is not None else gx, glr0 if glr0 is not None else gx, part, scr, p, T, N, _tstride(x),
                _tstride(gy), LM=ip[0], SOFT=bool(ip[1]), FIRE_GE=bool(ip[2]), NORM=bool(ip[3]), PTH=bool(ip[4]),
                DETACH=bool(ip[5]), SK=ip[6], HAS_V0=v0 is not None, HAS_LR0=lr0 is not None,
                HAS_GVT=gvT is not None, HAS_GLRT=glrT is not None, WANT_GV0=want_gv0, WANT_GLR0=want_glr0,
                NEED_P=bool(need[1] or need[2]), SCRATCH=scratch, TP=tp, F32=x.dtype == torch.float32, BLOCK=block,
                num_warps=4)
        sums = part.view(grid, 3).sum(0)
        g = [sums[i].to(t.dtype).reshape(t.shape) if n else None
             for i, (t, n) in enumerate(zip((plan.theta_t, plan.leak_t, plan.tau_t), need))]
        return gx, gv0, glr0, g[0], g[1], g[2], None, None, None, None


def lif_multistep_triton(x_seq, state=None, *, v_threshold=1.0, v_init=0.0, leak=1.0, tau=2.0,
                         leak_mode="post_reset", v_reset=None, reset_leak=True, fire_ge=True, surrogate=None,
                         surrogate_form="difference", detach_reset=False, payload="spike", store_v_seq=False):
    """Fused Triton IF/LIF dynamics; same signature, values and gradients as
    :func:`multispike.neurons.lif_multistep`."""
    from .lif_cpp import lif_plan
    kwargs = dict(v_threshold=v_threshold, v_init=v_init, leak=leak, tau=tau, leak_mode=leak_mode, v_reset=v_reset,
                  reset_leak=reset_leak, fire_ge=fire_ge, surrogate=surrogate, surrogate_form=surrogate_form,
                  detach_reset=detach_reset, payload=payload, store_v_seq=store_v_seq)
    mod = _impl(x_seq.device) if isinstance(x_seq, torch.Tensor) else None
    planned = lif_plan(x_seq, state, **kwargs) if mod is not None else None
    if planned is None:
        return reference("lif")(x_seq, state, **kwargs)
    return run_lif_triton(mod, x_seq, state, planned)


def run_lif_triton(mod, x_seq, state, planned):
    from ..neurons.if_lif import LIFState
    plan, v0, lr0 = planned
    x, strides = step_layout(x_seq)
    v0 = None if v0 is None else match_layout(v0, strides, seq=False)
    lr0 = None if lr0 is None else match_layout(lr0, strides, seq=False)
    p = _params(plan.fp, x.dtype, x.device)
    pt = [t if (isinstance(t, torch.Tensor) and u) else None
          for t, u in ((plan.theta_t, plan.uses_theta), (plan.leak_t, plan.uses_leak), (plan.tau_t, plan.uses_tau))]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, v0, lr0, *pt)):
        y, vT, lrT = _LIFTritonFunction.apply(x, v0, lr0, pt[0], pt[1], pt[2], plan, strides, p, mod)
    else:
        y, vT, lrT = _lif_forward(mod, x, strides, v0, lr0, plan, p)
    if not plan.prn:
        lrT = None if state is None else getattr(state, "last_reset", None)
    return y, LIFState(vT, lrT), None


# ============================================================================================ one-hot M-LIF
def _mlif_meta(plan):
    ip = plan.ip
    return dict(CM=ip[0], SOFT=bool(ip[4]), S=ip[1], FLOOR=bool(ip[2]), FIRE_GE=bool(ip[3]))


def _mlif_forward(mod, x, strides, v0, lr0, plan, p):
    T, N = x.shape[0], x[0].numel()
    y, vT = _seq_like(x, strides), _step_like(x, strides)
    lrT = _step_like(x, strides) if plan.paper else None
    _launch(mod.mlif_fwd_kernel, (_cdiv(N, 1024),), x, y, v0 if v0 is not None else x,
            lr0 if lr0 is not None else x, vT, lrT if lrT is not None else vT, p, T, N, _tstride(x),
            HAS_V0=v0 is not None, HAS_LR0=lr0 is not None, F32=x.dtype == torch.float32, BLOCK=1024, num_warps=4,
            **_mlif_meta(plan))
    return y, vT, lrT


class _MLIFTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, lr0, theta_t, leak_t, plan, strides, p, mod):
        y, vT, lrT = _mlif_forward(mod, x, strides, v0, lr0, plan, p)
        ctx.save_for_backward(x, v0, lr0, p)
        ctx.plan, ctx.strides, ctx.mod = plan, strides, mod
        ctx.set_materialize_grads(False)
        return y, vT, lrT

    @staticmethod
    def backward(ctx, gy, gvT, glrT):
        x, v0, lr0, p = ctx.saved_tensors
        plan, strides, mod = ctx.plan, ctx.strides, ctx.mod
        T, N = x.shape[0], x[0].numel()
        gy = match_layout(torch.zeros_like(x) if gy is None else gy, strides, seq=True)
        gvT = None if gvT is None else match_layout(gvT, strides, seq=False)
        glrT = None if glrT is None else match_layout(glrT, strides, seq=False)
        gx = _seq_like(x, strides)
        want_gv0 = v0 is not None and ctx.needs_input_grad[1]
        want_glr0 = lr0 is not None and ctx.needs_input_grad[2]
        gv0 = _step_like(x, strides) if want_gv0 else None
        glr0 = _step_like(x, strides) if want_glr0 else None
        need = (ctx.needs_input_grad[3], ctx.needs_input_grad[4])
        tp, scratch, block = _tile(T, mod)
        grid = _cdiv(N, block)
        part = torch.zeros(grid * 2, dtype=torch.float64, device=x.device)
        scr = torch.empty((T, N) if scratch else (1,), dtype=x.dtype, device=x.device)
        ip = plan.ip
        _launch(mod.mlif_bwd_kernel, (grid,), x, gy, v0 if v0 is not None else x, lr0 if lr0 is not None else x,
                gvT if gvT is not None else x, glrT if glrT is not None else x, gx,
                gv0 if gv0 is not None else gx, glr0 if glr0 is not None else gx, part, scr, p, T, N, _tstride(x),
                _tstride(gy), DETACH=bool(ip[5]), SIGN=float(ip[6]), UNSCALED=bool(ip[7]), SK=ip[8],
                HAS_V0=v0 is not None, HAS_LR0=lr0 is not None, HAS_GVT=gvT is not None, HAS_GLRT=glrT is not None,
                WANT_GV0=want_gv0, WANT_GLR0=want_glr0, NEED_P=bool(need[1]), SCRATCH=scratch, TP=tp,
                F32=x.dtype == torch.float32, BLOCK=block, num_warps=4, **_mlif_meta(plan))
        sums = part.view(grid, 2).sum(0)
        g_theta = sums[0].to(plan.theta_t.dtype).reshape(plan.theta_t.shape) if need[0] else None
        g_leak = sums[1].to(plan.leak_t.dtype).reshape(plan.leak_t.shape) if need[1] else None
        return gx, gv0, glr0, g_theta, g_leak, None, None, None, None


def mlif_multistep_triton(x_seq, state=None, *, lanes=3, v_threshold=1.0, leak=1.0, v_init=0.0, reset="soft",
                          reset_leak=False, decay_input=False, lane_bounds="paper", scaled=False,
                          surrogate="paper_difference", shape="triangle", gamma=0.3, alpha=4.0, fire_ge=False,
                          detach_reset=False, lane_mask=None, return_lanes=False, store_v_seq=False):
    """Fused Triton one-hot M-LIF dynamics; same signature, values and gradients as
    :func:`multispike.neurons.mlif.mlif_multistep`."""
    from .mlif_cpp import mlif_plan
    kwargs = dict(lanes=lanes, v_threshold=v_threshold, leak=leak, v_init=v_init, reset=reset, reset_leak=reset_leak,
                  decay_input=decay_input, lane_bounds=lane_bounds, scaled=scaled, surrogate=surrogate, shape=shape,
                  gamma=gamma, alpha=alpha, fire_ge=fire_ge, detach_reset=detach_reset, lane_mask=lane_mask,
                  return_lanes=return_lanes, store_v_seq=store_v_seq)
    mod = _impl(x_seq.device) if isinstance(x_seq, torch.Tensor) else None
    planned = mlif_plan(x_seq, state, **kwargs) if mod is not None else None
    if planned is None or planned[0].ip[1] > 16:
        return reference("mlif")(x_seq, state, **kwargs)
    return run_mlif_triton(mod, x_seq, state, planned)


def run_mlif_triton(mod, x_seq, state, planned):
    from ..neurons.if_lif import LIFState
    from ..neurons.mlif import MLIFExtras
    plan, v0, lr0 = planned
    x, strides = step_layout(x_seq)
    v0 = None if v0 is None else match_layout(v0, strides, seq=False)
    lr0 = None if lr0 is None else match_layout(lr0, strides, seq=False)
    p = _params(plan.fp, x.dtype, x.device)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, v0, lr0, plan.theta_t, plan.leak_t)):
        y, vT, lrT = _MLIFTritonFunction.apply(x, v0, lr0, plan.theta_t, plan.leak_t, plan, strides, p, mod)
    else:
        y, vT, lrT = _mlif_forward(mod, x, strides, v0, lr0, plan, p)
    if not plan.paper:
        lrT = None if state is None else getattr(state, "last_reset", None)
    return y, LIFState(vT, lrT), MLIFExtras(None, None)


# ============================================================================================ LM-HT level loop
def _lmht_params(plan, x):
    fp = list(plan.fp) + [float(plan.ip[0])]
    p = _params(fp, x.dtype, x.device)
    lam = plan.lam
    T = x.shape[0]
    if isinstance(lam, torch.Tensor):
        lam = lam.to(device=x.device, dtype=x.dtype)
        lam = lam.expand(T).contiguous() if lam.dim() == 0 else lam.contiguous()
    else:
        lam = torch.full((T,), float(lam), dtype=x.dtype, device=x.device)
    return p, lam


def _lmht_forward(mod, x, strides, v0, plan, p, lam):
    T, N = x.shape[0], x[0].numel()
    y, vT = _seq_like(x, strides), _step_like(x, strides)
    _launch(mod.lmht_fwd_kernel, (_cdiv(N, 1024),), x, y, v0 if v0 is not None else x, vT, lam, p, T, N,
            _tstride(x), SCALE_IN=bool(plan.ip[1]), HAS_V0=v0 is not None, F32=x.dtype == torch.float32, BLOCK=1024,
            num_warps=4)
    return y, vT


class _LMHTTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, leak_t, sched_t, plan, strides, p, lam, mod):
        y, vT = _lmht_forward(mod, x, strides, v0, plan, p, lam)
        ctx.save_for_backward(x, v0, p, lam)
        ctx.plan, ctx.strides, ctx.mod = plan, strides, mod
        ctx.set_materialize_grads(False)
        return y, vT

    @staticmethod
    def backward(ctx, gy, gvT):
        x, v0, p, lam = ctx.saved_tensors
        plan, strides, mod = ctx.plan, ctx.strides, ctx.mod
        T, N = x.shape[0], x[0].numel()
        gy = match_layout(torch.zeros_like(x) if gy is None else gy, strides, seq=True)
        gvT = None if gvT is None else match_layout(gvT, strides, seq=False)
        gx = _seq_like(x, strides)
        want_gv0 = v0 is not None and ctx.needs_input_grad[1]
        gv0 = _step_like(x, strides) if want_gv0 else None
        need_p = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        tp, scratch, block = _tile(T, mod)
        grid = _cdiv(N, block)
        part = torch.zeros(grid * T, dtype=torch.float64, device=x.device)
        scr = torch.empty((T, N) if scratch else (1,), dtype=x.dtype, device=x.device)
        ip = plan.ip
        _launch(mod.lmht_bwd_kernel, (grid,), x, gy, v0 if v0 is not None else x, gvT if gvT is not None else x, gx,
                gv0 if gv0 is not None else gx, lam, part, scr, p, T, N, _tstride(x), _tstride(gy),
                SCALE_IN=bool(ip[1]), HAS_V0=v0 is not None, HAS_GVT=gvT is not None, WANT_GV0=want_gv0,
                DETACH_T=bool(ip[2]), DETACH_R=bool(ip[3]), NEED_P=bool(need_p), SCRATCH=scratch, TP=tp,
                F32=x.dtype == torch.float32, BLOCK=block, num_warps=4)
        per_t = part.view(grid, T).sum(0)
        g_leak = per_t.sum().to(plan.leak_t.dtype).reshape(plan.leak_t.shape) if ctx.needs_input_grad[2] else None
        g_sched = per_t.to(plan.sched_t.dtype) if ctx.needs_input_grad[3] else None
        return gx, gv0, g_leak, g_sched, None, None, None, None, None


def lmht_multistep_triton(x_seq, state=None, *, levels, omega=None, leak=1.0, v_threshold, v_init=0.0,
                          in_scale=1.0, leak_schedule=None, detach_temporal=True, detach_reset=True,
                          surrogate_width=0.5, store_v_seq=False):
    """Fused Triton LM-HT / M-HT dynamics (T-GIM mixing by ``torch.einsum`` as in the reference, level loop
    fused); same signature, values and gradients as :func:`multispike.neurons.lmht.lmht_multistep`."""
    from .lmht_cpp import lmht_plan
    kwargs = dict(levels=levels, omega=omega, leak=leak, v_threshold=v_threshold, v_init=v_init, in_scale=in_scale,
                  leak_schedule=leak_schedule, detach_temporal=detach_temporal, detach_reset=detach_reset,
                  surrogate_width=surrogate_width, store_v_seq=store_v_seq)
    mod = _impl(x_seq.device) if isinstance(x_seq, torch.Tensor) else None
    planned = lmht_plan(x_seq, state, **kwargs) if mod is not None else None
    if planned is None:
        return reference("lmht")(x_seq, state, **kwargs)
    return run_lmht_triton(mod, planned)


def run_lmht_triton(mod, planned):
    from ..neurons.lmht import LMHTState
    plan, current, v0 = planned
    x, strides = step_layout(current)
    v0 = None if v0 is None else match_layout(v0, strides, seq=False)
    p, lam = _lmht_params(plan, x)
    leak_t = plan.leak_t if isinstance(plan.leak_t, torch.Tensor) else None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, v0, leak_t, plan.sched_t)):
        y, vT = _LMHTTritonFunction.apply(x, v0, leak_t, plan.sched_t, plan, strides, p, lam, mod)
    else:
        y, vT = _lmht_forward(mod, x, strides, v0, plan, p, lam)
    return y, LMHTState(vT), None


for _family, _fn in (("lif", lif_multistep_triton), ("mlif", mlif_multistep_triton), ("lmht", lmht_multistep_triton)):
    register_kernel(_family, "triton", _fn, devices=("cuda",))
del _family, _fn
