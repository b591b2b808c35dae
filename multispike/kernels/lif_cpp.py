"""Fused C++/OpenMP CPU kernel for the IF/LIF multi-step dynamics (kernel family ``"lif"``, backend ``"cpp"``).

:func:`lif_multistep_cpp` has the signature of :func:`multispike.neurons.lif_multistep` and returns the same
values: forward outputs bit-identical, gradients equal up to floating-point summation order. One pass per
element over T with the membrane kept in cache-resident block buffers; forward traffic is one read of ``x``
and one write of ``y`` per element-step (plus the final state). The backward recomputes the membrane from the
saved input - nothing else is saved (zero bytes per element-step beyond the input itself) - and runs the
adjoint recursion backwards in time in the same pass. The C++ source is ``csrc/lif.cpp``.

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

import torch

from ..neurons.if_lif import LIFState
from ..neurons.params import LIFParameters
from ._abi import FLOAT_CODES, LifArgs, Plan, surrogate_code
from ._common import initial_state, scalar_param
from ._fused import CppEngine, cpp_entry, run_planned
from .registry import register_kernel

__all__ = ["lif_multistep_cpp", "lif_plan", "surrogate_code"]

_LEAK_MODES = {"post_reset": 0, "decay_input": 2, "decay_state": 3}
_LM_PRN = 1  # post_reset with reset_leak=False (the paper form)


def lif_plan(x_seq, state, p: LIFParameters):
    """Return ``(plan, v0, lr0)`` when the fused kernels can run this call exactly, else ``None``.

    Shared by the CPU and the Triton kernel (the device check is the caller's)."""
    if not isinstance(x_seq, torch.Tensor) or x_seq.dtype not in FLOAT_CODES or x_seq.dim() < 1:
        return None
    if x_seq.numel() == 0 or p.store_v_seq:
        return None
    if p.leak_mode not in _LEAK_MODES or p.surrogate_form not in ("difference", "normalized"):
        return None
    if p.payload not in ("spike", "threshold"):
        return None
    v_reset = p.v_reset
    if not p.reset_leak and (v_reset is not None or p.leak_mode != "post_reset"):
        return None  # invalid: the reference raises the error
    if v_reset is not None and (isinstance(v_reset, (bool, torch.Tensor)) or not isinstance(v_reset, (int, float))):
        return None
    surr = surrogate_code(p.surrogate)
    if surr is None:
        return None
    theta = scalar_param(p.v_threshold, x_seq)
    lk = scalar_param(p.leak, x_seq)
    tu = scalar_param(p.tau, x_seq)
    if theta is None or lk is None or tu is None:
        return None
    prn = not p.reset_leak
    start = initial_state(x_seq, state, p.v_init, want_last_reset=prn)
    if start is None:
        return None
    v0, lr0, v_init_value = start
    soft = v_reset is None
    normalized = p.surrogate_form == "normalized"
    pth = p.payload == "threshold"
    post_reset = p.leak_mode == "post_reset"
    scalars = dict(theta=theta[0], leak=lk[0], tau=tu[0], v_reset=0.0 if soft else float(v_reset),
                   v_init=v_init_value, sp0=surr[1], sp1=surr[2])
    flags = dict(leak_mode=_LM_PRN if prn else _LEAK_MODES[p.leak_mode], soft=int(soft), fire_ge=int(bool(p.fire_ge)),
                 normalized=int(normalized), payload_theta=int(pth), detach_reset=int(bool(p.detach_reset)),
                 surr_kind=surr[0])
    # the parameter tensors the dynamics depend on (θ only through the payload, the reset or the normalised form)
    params = tuple(t if isinstance(t, torch.Tensor) and used else None
                   for t, used in ((theta[1], pth or soft or normalized), (lk[1], post_reset), (tu[1], not post_reset)))
    plan = Plan("lif", LifArgs, scalars, flags, params, ("need_theta", "need_leak", "need_tau"),
                keeps_last_reset=prn)
    return plan, v0, lr0


lif_multistep_cpp = cpp_entry(
    LIFParameters, lif_plan, "run_lif", "lif_multistep_cpp", __name__,
    """Fused CPU IF/LIF dynamics; same signature, values and gradients as
    :func:`multispike.neurons.lif_multistep` (see this module's docstring for what runs fused).""")


def run_lif(lib, x_seq, state, planned):
    """Run the planned LIF kernel (forward only without autograd, else through the autograd function)."""
    plan, v0, lr0 = planned
    y, vT, lrT = run_planned(CppEngine(lib), x_seq, v0, lr0, plan)
    if not plan.keeps_last_reset:
        lrT = None if state is None else getattr(state, "last_reset", None)
    return y, LIFState(vT, lrT), None


register_kernel("lif", "cpp", lif_multistep_cpp, devices=("cpu",))
