"""Fused C++/OpenMP CPU kernel for one-hot M-LIF (kernel family ``"mlif"``, backend ``"cpp"``).

:func:`mlif_multistep_cpp` has the signature of :func:`multispike.neurons.mlif.mlif_multistep`; forward payloads
and states are bit-identical to it, gradients (input, initial state, learnable θ and β) equal up to summation
order. One pass per element over T; the backward recomputes the membrane from the saved input and evaluates
the telescoped lane-window derivative ``Σ_k c_k·φ_k(r)`` of algorithms.md §5.3 in the same pass. The C++
source is ``csrc/mlif.cpp``.

Fused: soft (paper form and code form) and hard reset, the SpikingJelly ``decay_input`` charge, both lane
bounds, scaled lanes, every window surrogate
(``paper_difference``, ``code_sum``, ``fast_unscaled``) with triangle, sigmoid, atan or rectangular shapes,
``fire_ge``, ``detach_reset``, float32/float64, any dense step layout. ``lane_mask`` (lane dropout),
``return_lanes``, ``store_v_seq``, per-element thresholds, custom shapes and more than 64 lanes run the reference.

Example::

    >>> import torch
    >>> y, state, _ = mlif_multistep_cpp(torch.tensor([[3.0], [3.0], [3.0]]), lanes=3, reset_leak=True)
    >>> y.flatten().tolist()
    [2.0, 2.0, 4.0]
"""
from __future__ import annotations

import torch

from ..neurons import mlif as ref_mod
from ..neurons.if_lif import LIFState
from ..neurons.mlif import MLIFExtras
from ..neurons.params import MLIFParameters
from ._abi import FLOAT_CODES, MlifArgs, Plan, surrogate_code
from ._common import initial_state, scalar_param
from ._fused import CppEngine, cpp_entry, run_planned
from .registry import register_kernel

__all__ = ["mlif_multistep_cpp", "mlif_plan"]


def mlif_plan(x_seq, state, p: MLIFParameters):
    """``(plan, v0, lr0)`` when the fused kernels reproduce this call exactly, else ``None`` (the reference then
    runs, raising its own errors for invalid arguments)."""
    if not isinstance(x_seq, torch.Tensor) or x_seq.dtype not in FLOAT_CODES or x_seq.dim() < 2:
        return None
    if x_seq.numel() == 0 or p.lane_mask is not None or p.return_lanes or p.store_v_seq:
        return None
    try:
        cfg = ref_mod._resolve_window(p.lanes, p.lane_bounds, p.fire_ge, p.surrogate, p.shape, p.gamma, p.alpha,
                                      "mlif_multistep")
        ref_mod._check_choice(p.reset, "reset", ref_mod.MLIF_RESETS, "mlif_multistep")
        ref_mod._check_threshold(p.v_threshold, "mlif_multistep")
    except (ValueError, TypeError):
        return None
    surr = surrogate_code(cfg.shape, derivative_only=True)
    theta = scalar_param(p.v_threshold, x_seq)
    lk = scalar_param(p.leak, x_seq)
    if surr is None or theta is None or lk is None:
        return None
    S = cfg.lanes
    if S > 64:
        return None  # the kernel's payload builds 2^j from exponent bits (mlif.cpp lane_payload); S <= 64 keeps it exact
    soft = p.reset == "soft"
    paper = soft and not p.reset_leak
    if p.decay_input and paper:
        return None  # invalid: the reference raises
    unit = 2.0 ** -(S - 1) if p.scaled else 1.0
    start = initial_state(x_seq, state, p.v_init, want_last_reset=paper)
    if start is None:
        return None
    v0, lr0, v_init_value = start
    # decay_input charge m = v + (I − v)·(1 − β): (1 − β) is computed in β's own dtype, as the reference does
    scalars = dict(theta=theta[0], theta_e=theta[0] * unit, leak=lk[0], v_init=v_init_value, unit=unit,
                   sp0=surr[1], sp1=surr[2], oml=1.0 - lk[0])
    flags = dict(charge=2 if p.decay_input else int(paper), lanes=S, floor_bounds=int(cfg.floor),
                 fire_ge=int(cfg.fire_ge), soft=int(soft), detach_reset=int(bool(p.detach_reset)), sign=int(cfg.sign),
                 unscaled=int(cfg.unscaled), surr_kind=surr[0])
    plan = Plan("mlif", MlifArgs, scalars, flags, (theta[1], lk[1]), ("need_theta", "need_leak"),
                keeps_last_reset=paper)
    return plan, v0, lr0


mlif_multistep_cpp = cpp_entry(
    MLIFParameters, mlif_plan, "run_mlif", "mlif_multistep_cpp", __name__,
    """Fused CPU one-hot M-LIF dynamics; same signature, values and gradients as
    :func:`multispike.neurons.mlif.mlif_multistep` (see this module's docstring for what runs fused).""")


def run_mlif(lib, x_seq, state, planned):
    """Run the planned M-LIF kernel."""
    plan, v0, lr0 = planned
    y, vT, lrT = run_planned(CppEngine(lib), x_seq, v0, lr0, plan)
    if not plan.keeps_last_reset:
        lrT = None if state is None else getattr(state, "last_reset", None)
    return y, LIFState(vT, lrT), MLIFExtras(None, None)


register_kernel("mlif", "cpp", mlif_multistep_cpp, devices=("cpu",))
