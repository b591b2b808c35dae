"""The host side shared by every fused kernel: one autograd function and the C++ call.

:class:`FusedSequence` is the autograd function of all families and backends. It saves only the input sequence
and the initial state (the kernels recompute the membrane in the backward) and delegates the two passes to an
*engine*: :class:`CppEngine` here (ctypes, CPU), the Triton engines in :mod:`multispike.kernels.triton_kernels`.
An engine has ``forward(call, x, v0, lr0) -> (y, vT, lrT)`` and
``backward(call, x, v0, lr0, gy, gvT, glrT, outs, needs) -> pgrad`` (``outs``: the gradient buffers to fill).
"""
from __future__ import annotations

import ctypes
import sys
from typing import Callable, NamedTuple

import torch

from ..neurons.params import NeuronParameters, keyword_entry
from ..recompute import recipe_of
from ._abi import FLOAT_CODES, Plan
from ._common import empty_seq, empty_step, match_layout, reference, step_layout, time_stride

__all__ = ["Call", "FusedSequence", "CppEngine", "run_planned", "cpp_entry"]


class Call(NamedTuple):
    """One kernel call: the engine, the plan, the per-step layout and engine-specific extras; ``recipe``: how to
    rebuild the input in the backward instead of saving it (:mod:`multispike.recompute`), or None."""

    engine: object
    plan: Plan
    strides: tuple[int, ...]
    extra: object = None
    recipe: object = None


class FusedSequence(torch.autograd.Function):
    """``(y, vT, lrT)`` of a fused kernel; gradients for x, the initial state and the plan's parameter tensors."""

    @staticmethod
    def forward(ctx, call: Call, x, v0, lr0, *params):
        y, vT, lrT = call.engine.forward(call, x, v0, lr0)
        if call.recipe is not None:   # keep what rebuilds x (BN's input, already saved by BN), not x itself
            ctx.save_for_backward(*call.recipe.tensors(), v0, lr0)
            ctx.rebuild = call.recipe.rebuilder()
            call = call._replace(recipe=None)
        else:
            ctx.save_for_backward(x, v0, lr0)
            ctx.rebuild = None
        ctx.call = call
        ctx.set_materialize_grads(False)
        return y, vT, lrT

    @staticmethod
    def backward(ctx, gy, gvT, glrT):
        saved = ctx.saved_tensors
        call = ctx.call
        if ctx.rebuild is not None:   # rebuilt input, bit-identical to the forward's (multispike.recompute)
            *recipe, v0, lr0 = saved
            x = match_layout(ctx.rebuild(recipe), call.strides, seq=True)
        else:
            x, v0, lr0 = saved
        strides = call.strides
        gy = match_layout(torch.zeros_like(x) if gy is None else gy, strides, seq=True)
        gvT = None if gvT is None else match_layout(gvT, strides, seq=False)
        glrT = None if glrT is None else match_layout(glrT, strides, seq=False)
        step_shape = x.shape[1:]
        outs = (empty_seq(x.shape, strides, x.dtype, x.device),
                empty_step(step_shape, strides, x.dtype, x.device) if v0 is not None and ctx.needs_input_grad[2]
                else None,
                empty_step(step_shape, strides, x.dtype, x.device) if lr0 is not None and ctx.needs_input_grad[3]
                else None)
        needs = tuple(ctx.needs_input_grad[4:])
        pgrad = call.engine.backward(call, x, v0, lr0, gy, gvT, glrT, outs, needs)
        return (None, *outs, *call.plan.param_grads(pgrad, needs))


def run_planned(engine, x_seq: torch.Tensor, v0, lr0, plan: Plan, extra=None):
    """Run a planned kernel on ``x_seq`` (any dense step layout): the forward alone when no gradient is needed,
    else through :class:`FusedSequence`. Returns ``(y, vT, lrT)`` (``lrT`` None unless the plan keeps it)."""
    x, strides = step_layout(x_seq)
    v0 = None if v0 is None else match_layout(v0, strides, seq=False)
    lr0 = None if lr0 is None else match_layout(lr0, strides, seq=False)
    call = Call(engine, plan, strides, extra)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, v0, lr0, *plan.params)):
        if x is x_seq:   # a BN output or residual sum that can be rebuilt (recompute_bn)
            call = call._replace(recipe=recipe_of(x_seq))
        return FusedSequence.apply(call, x, v0, lr0, *plan.params)
    return engine.forward(call, x, v0, lr0)


class CppEngine:
    """Calls ``ms_<family>_forward`` / ``ms_<family>_backward`` of the C++ library with one argument record."""

    def __init__(self, lib) -> None:
        self.lib = lib

    @staticmethod
    def _io(args, x: torch.Tensor, **tensors) -> None:
        io = args.io
        T = x.shape[0]
        N = x.numel() // T
        io.T, io.N, io.xst, io.yst, io.gxst = T, N, time_stride(x), N, N
        io.dtype, io.nthreads = FLOAT_CODES[x.dtype], torch.get_num_threads()
        io.x = x.data_ptr()
        for name, t in tensors.items():
            if t is not None:   # the record starts zeroed: absent tensors stay NULL
                setattr(io, name, t.data_ptr())

    def _lam(self, args, plan: Plan, T: int):
        lam = plan.lam
        lam = lam.tolist() if isinstance(lam, torch.Tensor) and lam.dim() == 1 else [float(lam)] * T
        arr = (ctypes.c_double * T)(*lam)
        args.lam = arr
        if plan.omega is None:
            return arr  # kept alive by the caller for the duration of the call
        # the T-GIM as row-major doubles: its values are already in the data type, so the kernel's cast is exact
        omega = (ctypes.c_double * (T * T))(*plan.omega.reshape(-1).tolist())
        args.omega = omega
        return arr, omega

    def _call(self, name: str, args) -> None:
        rc = getattr(self.lib, name)(ctypes.byref(args))
        if rc != 0:
            raise RuntimeError(f"multispike: the C++ kernel {name} failed with code {rc}")

    def forward(self, call: Call, x, v0, lr0):
        plan, strides = call.plan, call.strides
        y = empty_seq(x.shape, strides, x.dtype)
        vT = empty_step(x.shape[1:], strides, x.dtype)
        lrT = empty_step(x.shape[1:], strides, x.dtype) if plan.keeps_last_reset else None
        args = plan.c_args()
        self._io(args, x, y=y, v0=v0, lr0=lr0, vT=vT, lrT=lrT)
        keep = self._lam(args, plan, x.shape[0]) if plan.family == "lmht" else None  # noqa: F841
        self._call(f"ms_{plan.family}_forward", args)
        return y, vT, lrT

    def backward(self, call: Call, x, v0, lr0, gy, gvT, glrT, outs, needs) -> list[float]:
        plan = call.plan
        T = x.shape[0]
        gx, gv0, glr0 = outs
        pgrad = (ctypes.c_double * plan.n_pgrad(T))()
        args = plan.c_args(needs)
        self._io(args, x, v0=v0, lr0=lr0, gy=gy, gvT=gvT, glrT=glrT, gx=gx, gv0=gv0, glr0=glr0)
        args.io.gyst = time_stride(gy)
        args.io.pgrad = pgrad
        keep = self._lam(args, plan, T) if plan.family == "lmht" else None  # noqa: F841
        self._call(f"ms_{plan.family}_backward", args)
        return list(pgrad)


def cpp_entry(record: type[NeuronParameters], planner: Callable, runner: str, name: str, module: str,
              doc: str) -> Callable:
    """The public CPU entry point of a family: the reference's keyword signature (from ``record``); plans the
    call with ``planner(x_seq, state, params)`` and runs ``module.<runner>(lib, x_seq, state, planned)``, or the
    reference when the library is unavailable or the plan is ``None`` (an option the kernel does not cover).
    ``runner`` is looked up at call time, so tests can observe which calls really ran fused."""
    from . import _build

    def impl(x_seq, state, p):
        lib = _build.load_library() if isinstance(x_seq, torch.Tensor) and x_seq.device.type == "cpu" else None
        planned = planner(x_seq, state, p) if lib is not None else None
        if planned is None:
            return reference(record.family)(x_seq, state, **p.as_kwargs())
        return getattr(sys.modules[module], runner)(lib, x_seq, state, planned)

    return keyword_entry(record, impl, name, module, doc)
