"""Fused Triton kernels for CUDA devices (backend ``"triton"``) of the IF/LIF, one-hot M-LIF and LM-HT families.

Same contract as the C++ CPU kernels: the reference signature, bit-identical forward outputs and states,
gradients equal up to summation order, and a transparent fallback to the reference for anything not covered
(the coverage is shared with the CPU kernels through :func:`~multispike.kernels.lif_cpp.lif_plan`,
:func:`~multispike.kernels.mlif_cpp.mlif_plan` and :func:`~multispike.kernels.lmht_cpp.lmht_plan`). Scalar
parameters are passed as a small device tensor in the data type, so a call never synchronises with the device.
The autograd function and the gradient buffers are those of the C++ kernels (:mod:`multispike.kernels._fused`);
the engines here only launch.

``triton`` is imported on first use only; without it (or on a CPU tensor) the functions run the reference, and
``backend="auto"`` only resolves to ``"triton"`` when CUDA is present. The kernels themselves are in
:mod:`multispike.kernels._triton_impl`; ``benchmarks/gpu_check.py`` checks them against the references on a GPU.
"""
from __future__ import annotations

import warnings

import torch

from ..neurons.params import LIFParameters, LMHTParameters, MLIFParameters, keyword_entry
from ._common import reference, time_stride
from ._fused import Call, run_planned
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


def _or(t, other):
    """A placeholder pointer for an absent optional tensor (the kernel never reads it: its HAS_* flag is off)."""
    return t if t is not None else other


class _TritonEngine:
    """Launches one family's forward and backward kernels (``call.extra`` = ``(mod, p)`` or ``(mod, p, lam)``).

    The backward skeleton is shared: the kernels of every family take the same tensor arguments (input, incoming
    gradients, initial state, gradient outputs, per-block partial sums, scratch) and differ only in their
    compile-time flags and in how many partial sums a block writes. A family declares them: ``FLAGS`` (constexpr
    of both kernels) and ``BWD_FLAGS`` (backward only) list ``(kernel constexpr, plan flag, type)``; ``N_PART`` is
    the number of partial sums per block (``None``: one per time step)."""

    family = ""
    FLAGS: tuple = ()
    BWD_FLAGS: tuple = ()
    N_PART: int | None = 2

    @staticmethod
    def _flags(plan, table: tuple) -> dict:
        return {name: kind(plan.flags[key]) for name, key, kind in table}

    @staticmethod
    def _state_meta(lr0, backward: bool, glrT=None, glr0=None) -> dict:
        """Flags of the optional state tensors beyond v0/gvT/gv0 (the last reset of the (v, lr) families)."""
        return {}

    def forward(self, call: Call, x, v0, lr0):
        mod, p = call.extra[0], call.extra[1]
        plan, strides = call.plan, call.strides
        T, N = x.shape[0], x[0].numel()
        y, vT = _seq_like(x, strides), _step_like(x, strides)
        lrT = _step_like(x, strides) if plan.keeps_last_reset else None
        state_args = self._state_args(v0, lr0, vT, lrT, x, call)
        _launch(getattr(mod, f"{self.family}_fwd_kernel"), (_cdiv(N, 1024),), x, y, *state_args, p, T, N,
                time_stride(x), HAS_V0=v0 is not None, F32=x.dtype == torch.float32, BLOCK=1024, num_warps=4,
                **self._state_meta(lr0, False), **self._flags(plan, self.FLAGS))
        return y, vT, lrT

    def backward(self, call: Call, x, v0, lr0, gy, gvT, glrT, outs, needs):
        mod, p = call.extra[0], call.extra[1]
        plan = call.plan
        T, N = x.shape[0], x[0].numel()
        gx, gv0, glr0 = outs
        tp, scratch, block = _tile(T, mod)
        grid = _cdiv(N, block)
        n_part = T if self.N_PART is None else self.N_PART
        part = torch.zeros(grid * n_part, dtype=torch.float64, device=x.device)
        scr = torch.empty((T, N) if scratch else (1,), dtype=x.dtype, device=x.device)
        args = self._bwd_args(x, gy, v0, lr0, gvT, glrT, gx, gv0, glr0, call)
        _launch(getattr(mod, f"{self.family}_bwd_kernel"), (grid,), *args, part, scr, p, T, N, time_stride(x),
                time_stride(gy), HAS_V0=v0 is not None, HAS_GVT=gvT is not None, WANT_GV0=gv0 is not None,
                NEED_P=self._need_p(needs), SCRATCH=scratch, TP=tp, F32=x.dtype == torch.float32, BLOCK=block,
                num_warps=4, **self._state_meta(lr0, True, glrT, glr0), **self._flags(plan, self.FLAGS),
                **self._flags(plan, self.BWD_FLAGS))
        # the per-block partial sums stay on the device (no synchronisation): param_grads casts and reshapes them
        return part.view(grid, n_part).sum(0)

    @staticmethod
    def _need_p(needs) -> bool:
        return bool(any(needs[1:]))


class _LIFEngine(_TritonEngine):
    """IF/LIF (and, by subclassing, one-hot M-LIF): the state is (v, last reset)."""

    family = "lif"
    N_PART = 3
    FLAGS = (("LM", "leak_mode", int), ("SOFT", "soft", bool), ("FIRE_GE", "fire_ge", bool),
             ("NORM", "normalized", bool), ("PTH", "payload_theta", bool))
    BWD_FLAGS = (("DETACH", "detach_reset", bool), ("SK", "surr_kind", int))

    @staticmethod
    def _state_meta(lr0, backward: bool, glrT=None, glr0=None) -> dict:
        meta = {"HAS_LR0": lr0 is not None}
        if backward:
            meta.update(HAS_GLRT=glrT is not None, WANT_GLR0=glr0 is not None)
        return meta

    def _state_args(self, v0, lr0, vT, lrT, x, call):
        return _or(v0, x), _or(lr0, x), vT, _or(lrT, vT)

    def _bwd_args(self, x, gy, v0, lr0, gvT, glrT, gx, gv0, glr0, call):
        return x, gy, _or(v0, x), _or(lr0, x), _or(gvT, x), _or(glrT, x), gx, _or(gv0, gx), _or(glr0, gx)


class _MLIFEngine(_LIFEngine):
    family = "mlif"
    N_PART = 2
    FLAGS = (("CM", "charge", int), ("SOFT", "soft", bool), ("S", "lanes", int), ("FLOOR", "floor_bounds", bool),
             ("FIRE_GE", "fire_ge", bool))
    BWD_FLAGS = (("DETACH", "detach_reset", bool), ("SIGN", "sign", float), ("UNSCALED", "unscaled", bool),
                 ("SK", "surr_kind", int))


class _LMHTEngine(_TritonEngine):
    """LM-HT level loop: the state is v alone, the leak of every step comes as a device vector."""

    family = "lmht"
    N_PART = None
    FLAGS = (("SCALE_IN", "scale_input", bool),)
    BWD_FLAGS = (("DETACH_T", "detach_temporal", bool), ("DETACH_R", "detach_reset", bool))

    @staticmethod
    def _need_p(needs) -> bool:
        return bool(any(needs))

    def _state_args(self, v0, lr0, vT, lrT, x, call):
        return _or(v0, x), vT, call.extra[2]

    def _bwd_args(self, x, gy, v0, lr0, gvT, glrT, gx, gv0, glr0, call):
        return x, gy, _or(v0, x), _or(gvT, x), gx, _or(gv0, gx), call.extra[2]


_ENGINES = {"lif": _LIFEngine(), "mlif": _MLIFEngine(), "lmht": _LMHTEngine()}


def _lmht_lam(plan, x):
    """The leak of every step as a ``[T]`` device tensor in the data type."""
    lam, T = plan.lam, x.shape[0]
    if isinstance(lam, torch.Tensor):
        lam = lam.to(device=x.device, dtype=x.dtype)
        return lam.expand(T).contiguous() if lam.dim() == 0 else lam.contiguous()
    return torch.full((T,), float(lam), dtype=x.dtype, device=x.device)


def _run(family: str, mod, x, v0, lr0, plan):
    scalars = plan.scalar_list()
    if family == "lmht":
        extra = (mod, _params(scalars + [float(plan.flags["levels"])], x.dtype, x.device), _lmht_lam(plan, x))
    else:
        extra = (mod, _params(scalars, x.dtype, x.device))
    return run_planned(_ENGINES[family], x, v0, lr0, plan, extra)


def _entry(family: str, record, planner_name: str, name: str, doc: str):
    def impl(x_seq, state, p):
        from importlib import import_module
        planner = getattr(import_module(f"multispike.kernels.{family}_cpp"), planner_name)
        mod = _impl(x_seq.device) if isinstance(x_seq, torch.Tensor) else None
        planned = planner(x_seq, state, p) if mod is not None else None
        if planned is not None and family == "mlif" and planned[0].flags["lanes"] > 16:
            planned = None  # the lane loop is unrolled at compile time
        if planned is None:
            return reference(family)(x_seq, state, **p.as_kwargs())
        return _finish(family, mod, x_seq, state, planned)
    return keyword_entry(record, impl, name, __name__, doc)


def _finish(family: str, mod, x_seq, state, planned):
    from ..neurons.if_lif import LIFState
    from ..neurons.lmht import LMHTState
    from ..neurons.mlif import MLIFExtras
    if family == "lmht":
        plan, current, v0 = planned
        y, vT, _ = _run(family, mod, current, v0, None, plan)
        return y, LMHTState(vT), None
    plan, v0, lr0 = planned
    y, vT, lrT = _run(family, mod, x_seq, v0, lr0, plan)
    if not plan.keeps_last_reset:
        lrT = None if state is None else getattr(state, "last_reset", None)
    return y, LIFState(vT, lrT), (MLIFExtras(None, None) if family == "mlif" else None)


lif_multistep_triton = _entry("lif", LIFParameters, "lif_plan", "lif_multistep_triton",
                              """Fused Triton IF/LIF dynamics; same signature, values and gradients as
    :func:`multispike.neurons.lif_multistep`.""")
mlif_multistep_triton = _entry("mlif", MLIFParameters, "mlif_plan", "mlif_multistep_triton",
                               """Fused Triton one-hot M-LIF dynamics; same signature, values and gradients as
    :func:`multispike.neurons.mlif.mlif_multistep`.""")
lmht_multistep_triton = _entry("lmht", LMHTParameters, "lmht_plan_unfused", "lmht_multistep_triton",
                               """Fused Triton LM-HT / M-HT dynamics (T-GIM mixing by ``tgim_mix`` as in the
    reference, level loop fused); same signature, values and gradients as
    :func:`multispike.neurons.lmht.lmht_multistep`.""")

for _family, _fn in (("lif", lif_multistep_triton), ("mlif", mlif_multistep_triton), ("lmht", lmht_multistep_triton)):
    register_kernel(_family, "triton", _fn, devices=("cuda",))
del _family, _fn
