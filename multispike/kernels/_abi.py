"""The call ABI of the C++ kernels: one ctypes argument record per neuron family, and the plan that fills it.

Mirrors ``csrc/ms_common.h``: every record starts with the tensor block :class:`MsIO` (pointers, sizes,
strides, dtype, thread count), followed by the family's scalar parameters (C ``double``) and flags (C ``int32``).
A kernel is called with a pointer to one record (``ms_lif_forward(const LifArgs*)``), so adding an option adds
a field here and in the header - not a positional argument to keep in sync across four call sites. The loader
(:mod:`multispike.kernels._build`) compares ``ctypes.sizeof`` of each record with the library's
``ms_args_size`` before using it.

A :class:`Plan` is what a family's planner (``lif_plan``, ``mlif_plan``, ``lmht_plan``) derives from the
family's parameter record (:mod:`multispike.neurons.params`): the scalar values (numbers or 0-d tensors, so the
Triton launch never synchronises with the device), the flags, and the tensors that may receive gradients.
"""
from __future__ import annotations

import ctypes
import math

import torch

from ..neurons.surrogate import ATan, Rectangular, Sigmoid, Triangle

__all__ = ["MsIO", "LifArgs", "MlifArgs", "LmhtArgs", "QuantArgs", "ARGS_INDEX", "Plan", "surrogate_code", "FLOAT_CODES"]

FLOAT_CODES = {torch.float32: 0, torch.float64: 1}

_PTRS = ("x", "y", "v0", "lr0", "vT", "lrT", "gy", "gvT", "glrT", "gx", "gv0", "glr0")


class MsIO(ctypes.Structure):
    """The tensors of one call (``struct MsIO``)."""

    _fields_ = ([(name, ctypes.c_void_p) for name in _PTRS] + [("pgrad", ctypes.POINTER(ctypes.c_double))]
                + [(name, ctypes.c_int64) for name in ("T", "N", "xst", "yst", "gyst", "gxst")]
                + [("dtype", ctypes.c_int32), ("nthreads", ctypes.c_int32)])


def _record(name: str, doubles: tuple[str, ...], ints: tuple[str, ...], head=()) -> type[ctypes.Structure]:
    fields = [("io", MsIO), *head, *[(d, ctypes.c_double) for d in doubles], *[(i, ctypes.c_int32) for i in ints]]
    return type(name, (ctypes.Structure,), {"_fields_": fields, "doubles": doubles, "ints": ints,
                                             "__doc__": f"``struct {name}`` of csrc/ms_common.h."})


LifArgs = _record("LifArgs", ("theta", "leak", "tau", "v_reset", "v_init", "sp0", "sp1"),
                  ("leak_mode", "soft", "fire_ge", "normalized", "payload_theta", "detach_reset", "surr_kind",
                   "need_theta", "need_leak", "need_tau"))
MlifArgs = _record("MlifArgs", ("theta", "theta_e", "leak", "v_init", "unit", "sp0", "sp1", "oml"),
                   ("charge", "lanes", "floor_bounds", "fire_ge", "soft", "detach_reset", "sign", "unscaled",
                    "surr_kind", "need_theta", "need_leak"))
LmhtArgs = _record("LmhtArgs", ("theta", "in_scale", "v_init", "lo", "hi"),
                   ("levels", "scale_input", "detach_temporal", "detach_reset", "need_leak", "need_omega"),
                   head=(("lam", ctypes.POINTER(ctypes.c_double)), ("omega", ctypes.POINTER(ctypes.c_double))))



class QuantArgs(ctypes.Structure):
    """``struct QuantArgs`` of csrc/ms_common.h: one call of a fused QCFS/QAC quantizer kernel
    (:mod:`multispike.kernels.quant_cpp`). ``p``: QCFS (threshold, levels, shift), QAC (alpha, T, 0)."""

    _fields_ = [("x", ctypes.c_void_p), ("g", ctypes.c_void_p), ("out", ctypes.c_void_p),
                ("sums", ctypes.POINTER(ctypes.c_double)), ("n", ctypes.c_int64), ("p", ctypes.c_double * 3),
                ("dtype", ctypes.c_int32), ("nthreads", ctypes.c_int32)]


# index of each record in ms_args_size()
ARGS_INDEX = {MsIO: 0, LifArgs: 1, MlifArgs: 2, LmhtArgs: 3, QuantArgs: 4}


def surrogate_code(surrogate, derivative_only: bool = False) -> tuple[int, float, float] | None:
    """(kind, p0, p1) of the fused kernels' surrogate derivative, or None for a surrogate they cannot express.

    ``derivative_only``: only ``h'`` is used (M-LIF window shapes), so the ``spiking`` flag does not matter."""
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


class Plan:
    """Everything a fused kernel needs besides the tensors, for one call.

    Attributes:
        family: ``"lif"``, ``"mlif"`` or ``"lmht"``.
        args_type: the family's ctypes record.
        scalars: the record's doubles by name (Python floats or 0-d tensors).
        flags: the record's int flags by name (the ``need_*`` flags are set per backward call).
        params: the tensors that may receive a gradient (``None`` where the kernel gives none), in the order
            of :meth:`param_grads`' result.
        need: the ``need_*`` flag of each entry of ``params``.
        keeps_last_reset: the kernel carries the last reset ``θ·s`` as state (the paper form).
        lam: LM-HT only: the leak (a float, a 0-d tensor or a ``[T]`` schedule).
        omega: LM-HT only: the T-GIM ``[T, T]`` the kernel mixes with (detached, in the data type), or ``None``.
    """

    __slots__ = ("family", "args_type", "scalars", "flags", "params", "need", "keeps_last_reset", "lam", "omega",
                 "_record_values")

    def __init__(self, family, args_type, scalars: dict, flags: dict, params: tuple, need: tuple[str, ...],
                 keeps_last_reset: bool = False, lam=None, omega=None):
        missing = set(args_type.doubles) - set(scalars) | (set(args_type.ints) - set(flags) - set(need))
        if missing:  # a programming error: the planner and the record disagree
            raise AssertionError(f"{args_type.__name__}: the plan does not set {sorted(missing)}")
        self.family, self.args_type, self.scalars, self.flags = family, args_type, scalars, flags
        self.params, self.need, self.keeps_last_reset, self.lam = params, need, keeps_last_reset, lam
        self.omega = omega
        self._record_values = None

    def scalar_list(self) -> list:
        """The doubles in record order (for the Triton launch, which takes them as one device tensor)."""
        return [self.scalars[name] for name in self.args_type.doubles]

    def c_args(self, needs: tuple[bool, ...] = ()) -> ctypes.Structure:
        """A filled ctypes record (tensor block left empty); ``needs``: which ``params`` want a gradient."""
        values = self._record_values
        if values is None:
            # converted once per plan: the backward runs with the forward's values, and the float() of each 0-d
            # tensor is paid once per call instead of twice
            values = {name: float(self.scalars[name]) for name in self.args_type.doubles}
            values.update((name, int(value)) for name, value in self.flags.items())
            self._record_values = values
        rec = self.args_type(**values)
        for name, want in zip(self.need, needs):
            if want:
                setattr(rec, name, 1)
        return rec

    def n_pgrad(self, T: int) -> int:
        if self.family == "lmht":  # dL/dλ_t, then dL/dω_tj row-major when the kernel mixes
            return T if self.omega is None else T + T * T
        return len(self.params)

    def param_grads(self, pgrad, needs: tuple[bool, ...]) -> tuple:
        """The gradients of ``params`` from the kernel's summed parameter gradients ``pgrad`` (a list of floats
        from the C++ kernels, or a device tensor from the Triton kernels, which is never synchronised)."""
        if self.family == "lmht":  # pgrad[t] = dL/dλ_t: a scalar leak gets the sum, a schedule the vector
            leak_t, sched_t, omega_t = self.params
            T = len(pgrad) if self.omega is None else self.omega.shape[0]
            lam_g, omega_g = pgrad[:T], pgrad[T:]
            if not isinstance(pgrad, torch.Tensor):
                lam_g, omega_g = list(lam_g), list(omega_g)
            total = lam_g.sum() if isinstance(lam_g, torch.Tensor) else math.fsum(lam_g)
            return (_like(total, leak_t) if needs[0] else None,
                    _like(lam_g, sched_t) if needs[1] else None,
                    _like(omega_g, omega_t) if len(needs) > 2 and needs[2] else None)
        return tuple(_like(pgrad[i], t) if n else None for i, (t, n) in enumerate(zip(self.params, needs)))


def _like(value, like: torch.Tensor) -> torch.Tensor:
    """``value`` (float, list or tensor) as a tensor of ``like``'s dtype, device and shape."""
    if isinstance(value, torch.Tensor):
        return value.to(like.dtype).reshape(like.shape)
    return torch.tensor(value, dtype=like.dtype, device=like.device).reshape(like.shape)
