"""Integrate-and-fire and leaky integrate-and-fire neurons (algorithms.md §1).

The dynamics live in one pure function, :func:`lif_multistep`, over a time-major ``[T, B, ...]`` tensor.
It is the reference that fused kernels (``multispike.kernels``) must match. :class:`IFNeuron` and
:class:`LIFNeuron` wrap it with ``step_mode``, persistent state and ``reset()``.

General form (leak placement ``"post_reset"``)::

    m(t) = λ·v(t−1) + I(t)
    s(t) = H(m(t) − θ)                          # H: ">=" if fire_ge else ">"
    v(t) = m(t) − θ·s(t)                        # soft reset (v_reset=None)
       or  v(t) = m(t)·(1 − s(t)) + V_r·s(t)     # hard reset to V_r
    y(t) = s(t)  (payload="spike")   or   θ·s(t)  (payload="threshold", the conversion convention)

Other leak placements (``leak_mode``):

* ``"decay_input"`` (SpikingJelly LIF, SDT): ``m = v + (I − (v − V_r))/τ``.
* ``"decay_state"`` (SpikingJelly ``decay_input=False``): ``m = v − (v − V_r)/τ + I``.
* ``"post_reset"`` with ``reset_leak=False`` (DIET / M-LIF paper form):
  ``u(t) = λ·u(t−1) + I(t) − θ·s(t−1)``, the reset subtracted at the next step and not leaked.

Size (over 450 lines): the IF/LIF family (§1.1-§1.3): the reference multi-step function, the shared neuron module,
the IF and LIF modules and their SpikingJelly-compatible aliases (IFNode/LIFNode), kept together so an option is
added in one file.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .._dispatch import get_kernel, register_kernel, resolve_backend
from .base import MemoryModule, _finite_number, check_sequence
from .params import LIFParameters
from .surrogate import Sigmoid, SurrogateFunction, convert_spikingjelly_surrogate, get_surrogate

__all__ = ["LIFState", "lif_multistep", "IFNeuron", "LIFNeuron", "IFNode", "LIFNode", "LEAK_MODES",
           "BaseNeuron"]

LEAK_MODES = ("post_reset", "decay_input", "decay_state")


class LIFState(NamedTuple):
    """Neuron state between calls: post-reset membrane ``v`` and the last reset amount (θ·s, soft reset)."""

    v: torch.Tensor
    last_reset: torch.Tensor | None = None


def _spike_argument(m: torch.Tensor, theta, surrogate_form: str) -> torch.Tensor:
    if surrogate_form == "difference":
        # θ gets no gradient through the spike in the difference form (algorithms.md §0).
        return m - (theta.detach() if isinstance(theta, torch.Tensor) else theta)
    return m / theta - 1.0


def lif_multistep(
    x_seq: torch.Tensor,
    state: LIFState | None = None,
    *,
    v_threshold: float | torch.Tensor = 1.0,
    v_init: float | torch.Tensor = 0.0,
    leak: float | torch.Tensor = 1.0,
    tau: float | torch.Tensor = 2.0,
    leak_mode: str = "post_reset",
    v_reset: float | None = None,
    reset_leak: bool = True,
    fire_ge: bool = True,
    surrogate: SurrogateFunction | None = None,
    surrogate_form: str = "difference",
    detach_reset: bool = False,
    payload: str = "spike",
    store_v_seq: bool = False,
) -> tuple[torch.Tensor, LIFState, torch.Tensor | None]:
    """Reference multi-step IF/LIF dynamics.

    Args:
        x_seq: input currents ``I``, time-major ``[T, B, ...]``.
        state: state from a previous call; ``None`` starts from ``v(0) = v_init``.
        v_threshold: θ (float or tensor broadcastable to ``x_seq[0]``; may require grad).
        v_init: initial membrane ``v(0)`` (absolute value; e.g. ``θ/2`` for conversion).
        leak: multiplicative leak λ for ``leak_mode="post_reset"`` (1 gives IF).
        tau: time constant for the ``decay_*`` modes.
        leak_mode: one of :data:`LEAK_MODES`.
        v_reset: ``None`` for soft reset (subtract θ), else the hard-reset value.
        reset_leak: soft reset only; False gives the DIET/M-LIF paper form (reset applied next step, unleaked).
        fire_ge: fire on ``m >= θ`` (True) or ``m > θ``.
        surrogate: surrogate gradient object (default ``Sigmoid(4)``).
        surrogate_form: ``"difference"`` (``x = m − θ``) or ``"normalized"`` (``x = m/θ − 1``).
        detach_reset: the reset term gets no gradient.
        payload: ``"spike"`` (output s) or ``"threshold"`` (output θ·s).
        store_v_seq: also return the post-reset membrane at every step.

    Returns:
        ``(y_seq, final_state, v_seq_or_None)``.
    """
    if leak_mode not in LEAK_MODES:
        raise ValueError(f"leak_mode must be one of {LEAK_MODES}, got {leak_mode!r}")
    if surrogate_form not in ("difference", "normalized"):
        raise ValueError(f"surrogate_form must be 'difference' or 'normalized', got {surrogate_form!r}")
    if payload not in ("spike", "threshold"):
        raise ValueError(f"payload must be 'spike' or 'threshold', got {payload!r}")
    if not reset_leak and (v_reset is not None or leak_mode != "post_reset"):
        raise ValueError("reset_leak=False (DIET/M-LIF paper form) needs a soft reset (v_reset=None) and "
                         "leak_mode='post_reset'")
    surrogate = surrogate if surrogate is not None else Sigmoid()
    theta = v_threshold
    if state is None:
        v = torch.zeros_like(x_seq[0]) + v_init
        last_reset = torch.zeros_like(x_seq[0]) if not reset_leak else None
    else:
        v, last_reset = state.v, state.last_reset
        if not reset_leak and last_reset is None:
            last_reset = torch.zeros_like(v)
    vr = 0.0 if v_reset is None else v_reset
    ys, vs = [], []
    for t in range(x_seq.shape[0]):
        current = x_seq[t]
        if leak_mode == "post_reset":
            if reset_leak:
                m = leak * v + current
            else:
                # u(t) = λ·u(t−1) + I − θ·s(t−1) with u(t−1) = v(t−1) + θ·s(t−1)
                m = leak * (v + last_reset) + current - last_reset
        elif leak_mode == "decay_input":
            m = v + (current - (v - vr)) / tau
        else:  # decay_state
            m = v - (v - vr) / tau + current
        s = surrogate(_spike_argument(m, theta, surrogate_form), fire_ge)
        s_r = s.detach() if detach_reset else s
        if v_reset is None:
            reset = theta * s_r
            v = m - reset
            if not reset_leak:
                last_reset = reset
        else:
            v = m * (1.0 - s_r) + v_reset * s_r
        ys.append(theta * s if payload == "threshold" else s)
        if store_v_seq:
            vs.append(v)
    return torch.stack(ys), LIFState(v, last_reset), (torch.stack(vs) if store_v_seq else None)


register_kernel("lif", "torch", lif_multistep)


def _float_tensor(value: torch.Tensor) -> torch.Tensor:
    """A detached copy of a parameter tensor in the caller's dtype (integer tensors: the default float dtype).

    Python numbers become tensors of ``torch.get_default_dtype()`` like every ``nn.Module`` parameter; to build a
    float64 neuron pass float64 tensors or construct it under ``torch.set_default_dtype(torch.float64)``
    (``.double()`` afterwards converts values already rounded to the default dtype)."""
    t = value.detach().clone()
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def _scalar_or_tensor(value, name: str, owner: str, positive: bool = False) -> float | torch.Tensor:
    """A finite (optionally > 0) one-element parameter: Python numbers stay Python floats, tensors keep their
    dtype (see :func:`_float_tensor`)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{owner}: {name} must hold one value, got a tensor of shape {tuple(value.shape)}")
        t = _float_tensor(value).reshape(())
        v = float(t)
        if not math.isfinite(v) or (positive and v <= 0):
            rng = "a finite number > 0" if positive else "a finite number"
            raise ValueError(f"{owner}: {name} must be {rng}, got {value!r}")
        return t
    return _finite_number(value, name, owner, positive=positive)


class BaseNeuron(MemoryModule):
    """Common constructor vocabulary of spiking neurons (SpikingJelly names where they exist).

    Args:
        v_threshold: firing threshold θ > 0.
        v_reset: ``None`` = soft reset (subtract θ); a float = hard reset to that value.
        surrogate_function: a :class:`SurrogateFunction` or a registered name.
        detach_reset: stop the gradient through the reset.
        v_init: initial membrane ``v(0)`` (absolute; float or tensor broadcastable to one step).
        fire_ge: fire on ``m >= θ`` (True, conversion/LM-HT) or ``m > θ`` (False, DIET/M-LIF/TET).
        learnable_threshold: make θ an ``nn.Parameter``.
        surrogate_form: ``"difference"`` (x = m − θ) or ``"normalized"`` (x = m/θ − 1).
        payload: ``"spike"`` (emit s) or ``"threshold"`` (emit θ·s).
        step_mode: ``'s'`` or ``'m'``.
        backend: ``"auto"`` (default: the fused kernel for the device where it supports the options, else the
            reference), ``"torch"`` (the reference function) or a registered kernel (``"cpp"``, ``"triton"``).
        store_v_seq: keep the membrane sequence of the last multi-step call in ``self.v_seq``.
    """

    family = "lif"

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = None,
                 surrogate_function: SurrogateFunction | str | None = None, detach_reset: bool = False,
                 v_init: float | torch.Tensor = 0.0, fire_ge: bool = True, learnable_threshold: bool = False,
                 surrogate_form: str = "difference", payload: str = "spike", step_mode: str = "s",
                 backend: str = "auto", store_v_seq: bool = False) -> None:
        super().__init__(step_mode=step_mode, backend=backend)
        owner = type(self).__name__
        if isinstance(v_threshold, torch.Tensor):
            if not bool(torch.isfinite(v_threshold).all()) or not bool((v_threshold > 0).all()):
                raise ValueError(f"{owner}: v_threshold must be finite and > 0, got {v_threshold}")
            theta = _float_tensor(v_threshold)  # keep the caller's dtype (float64 stays float64)
        else:
            theta = torch.tensor(_finite_number(v_threshold, "v_threshold", owner, positive=True))
        if learnable_threshold:
            self.v_threshold = nn.Parameter(theta)
        else:
            self.register_buffer("v_threshold", theta)
        if v_reset is not None:
            v_reset = _finite_number(v_reset, "v_reset", owner)
        self.v_reset = v_reset
        if isinstance(v_init, torch.Tensor):
            v_init_t = _float_tensor(v_init)
            if not bool(torch.isfinite(v_init_t).all()):
                raise ValueError(f"{owner}: v_init must be finite, got {v_init}")
        else:
            v_init_t = torch.tensor(_finite_number(v_init, "v_init", owner), dtype=theta.dtype)  # follow θ
        self.register_buffer("v_init", v_init_t)
        if surrogate_form not in ("difference", "normalized"):
            raise ValueError(f"{owner}: surrogate_form must be 'difference' or 'normalized', got {surrogate_form!r}")
        if payload not in ("spike", "threshold"):
            raise ValueError(f"{owner}: payload must be 'spike' or 'threshold', got {payload!r}")
        self.surrogate_function = get_surrogate(surrogate_function, default=Sigmoid())
        self.detach_reset = detach_reset
        self.fire_ge = fire_ge
        self.surrogate_form = surrogate_form
        self.payload = payload
        self.store_v_seq = store_v_seq
        self.register_memory("state", None)
        self.v_seq: torch.Tensor | None = None

    @property
    def supported_backends(self) -> tuple[str, ...]:
        from .._dispatch import available_backends
        return ("auto", *available_backends(self.family))

    @property
    def v(self) -> torch.Tensor | None:
        """Post-reset membrane after the last step (``None`` before the first step or after ``reset()``)."""
        return None if self.state is None else self.state.v

    def dynamics_kwargs(self) -> dict:  # pragma: no cover - abstract
        """Keyword arguments of the family's reference function (all but ``store_v_seq``)."""
        raise NotImplementedError

    #: the family's parameter record (:mod:`multispike.neurons.params`); ``None`` for a family without one
    params_type: type | None = LIFParameters

    def dynamics_params(self):
        """The options of this neuron's dynamics as its family's frozen parameter record (a snapshot: learnable
        tensors are referenced, not copied)."""
        if self.params_type is None:
            raise TypeError(f"{type(self).__name__} has no parameter record; use dynamics_kwargs()")
        return self.params_type(store_v_seq=self.store_v_seq, **self.dynamics_kwargs())

    # --- statistics protocol (used by multispike.metrics; every neuron family implements it) ---
    levels: int = 1  # largest spike count one neuron can emit in one step (L for M-HT, 2^(S-1) for M-LIF)
    lanes: int = 1  # number of binary spike lanes (S for one-hot M-LIF)

    def spike_events(self, y: torch.Tensor) -> torch.Tensor:
        """Value-weighted unit events per element of an output ``y`` of this neuron (a spike of count k
        costs k accumulates downstream). For IF/LIF this is the binary spike s whatever the payload."""
        if self.payload == "threshold":
            return (y != 0).to(y.dtype)
        return y

    def active_lanes(self, y: torch.Tensor) -> torch.Tensor:
        """Number of active binary lanes per element (what a lane-based spike rate counts)."""
        return (y != 0).to(y.dtype)

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self._run_dynamics(x_seq, self.dynamics_kwargs())

    def _run_dynamics(self, x_seq: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """The family's multi-step function on the selected backend with the options ``kwargs``."""
        backend = resolve_backend(self.family, self.backend, x_seq.device.type)
        fn = get_kernel(self.family, backend)
        y_seq, self.state, v_seq = fn(x_seq, self.state, store_v_seq=self.store_v_seq, **kwargs)
        if self.store_v_seq:
            self.v_seq = v_seq
        return y_seq

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: expected a torch.Tensor, got {type(x).__name__}")
        check_sequence(x.unsqueeze(0), type(self).__name__, min_rank=2)
        # one step of the family's reference function (registered under backend "torch"), so a subclass with its
        # own family (PLIF) needs no override
        reference = get_kernel(self.family, "torch")
        y, self.state, _ = reference(x.unsqueeze(0), self.state, store_v_seq=False, **self.dynamics_kwargs())
        return y[0]

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold.detach().flatten()[:4].tolist()}, v_reset={self.v_reset}, "
                f"detach_reset={self.detach_reset}, fire_ge={self.fire_ge}, payload={self.payload!r}, "
                f"{super().extra_repr()}")


class IFNeuron(BaseNeuron):
    """Multi-step integrate-and-fire neuron: ``m = v + I``, fire, soft or hard reset.

    Example::

        >>> import torch, multispike as ms
        >>> nrn = ms.IFNeuron(v_threshold=1.0, v_init=0.5, step_mode='m')
        >>> nrn(torch.full((4, 1), 0.5)).flatten().tolist()   # QCFS identity: 4 steps of 0.5 -> 2 spikes
        [1.0, 0.0, 1.0, 0.0]
    """

    def dynamics_kwargs(self) -> dict:
        return dict(v_threshold=self.v_threshold, v_init=self.v_init, leak=1.0, leak_mode="post_reset",
                    v_reset=self.v_reset, reset_leak=True, fire_ge=self.fire_ge,
                    surrogate=self.surrogate_function, surrogate_form=self.surrogate_form,
                    detach_reset=self.detach_reset, payload=self.payload)


class LIFNeuron(BaseNeuron):
    """Multi-step leaky integrate-and-fire neuron with every leak placement of algorithms.md §1.1.

    Args:
        tau: time constant τ for ``leak_mode="decay_input"``/``"decay_state"`` (SpikingJelly; SDT uses 2); a
            number or a one-element tensor (whose dtype is kept, e.g. float64).
        decay: multiplicative leak λ for ``leak_mode="post_reset"`` (TET uses 0.5; default ``1 − 1/τ``); a
            number or a one-element tensor.
        leak_mode: ``"decay_input"`` (default, SpikingJelly), ``"decay_state"`` or ``"post_reset"``.
        reset_leak: with ``"post_reset"`` and soft reset, False gives the DIET/M-LIF paper form.
        learnable_leak: learn λ (``post_reset``) or τ (``decay_*``) as a parameter.
        **kwargs: see :class:`BaseNeuron`.

    Example::

        >>> import torch, multispike as ms
        >>> tet = ms.LIFNeuron(decay=0.5, leak_mode="post_reset", v_reset=0.0, fire_ge=False, step_mode='m')
        >>> tet(torch.tensor([[0.8], [0.8], [0.8]])).flatten().tolist()   # m: 0.8, 1.2 -> fire, 0.8
        [0.0, 1.0, 0.0]
    """

    def __init__(self, tau: float = 2.0, decay: float | None = None, leak_mode: str = "decay_input",
                 reset_leak: bool = True, learnable_leak: bool = False, v_reset: float | None = 0.0, **kwargs) -> None:
        super().__init__(v_reset=v_reset, **kwargs)
        owner = type(self).__name__
        if leak_mode not in LEAK_MODES:
            raise ValueError(f"{owner}: leak_mode must be one of {LEAK_MODES}, got {leak_mode!r}")
        tau = _scalar_or_tensor(tau, "tau", owner, positive=True)
        if leak_mode != "post_reset" and float(tau) <= 1.0:
            raise ValueError(f"{owner}: tau must be > 1 for leak_mode={leak_mode!r} (the membrane would "
                             f"overshoot), got {float(tau)}")
        if decay is None:
            decay = 1.0 - 1.0 / tau
        decay = _scalar_or_tensor(decay, "decay", owner)
        if not reset_leak and (self.v_reset is not None or leak_mode != "post_reset"):
            raise ValueError(f"{owner}: reset_leak=False (DIET/M-LIF paper form) needs v_reset=None and "
                             f"leak_mode='post_reset'")
        self.leak_mode = leak_mode
        self.reset_leak = reset_leak
        value = decay if leak_mode == "post_reset" else tau
        # tensors keep the caller's dtype; Python numbers take the default dtype (as nn.Module parameters do)
        value = value.clone() if isinstance(value, torch.Tensor) else torch.tensor(value)
        if learnable_leak:
            self.leak_param = nn.Parameter(value)
        else:
            self.register_buffer("leak_param", value)

    def dynamics_kwargs(self) -> dict:
        kw = dict(v_threshold=self.v_threshold, v_init=self.v_init, leak_mode=self.leak_mode,
                  v_reset=self.v_reset, reset_leak=self.reset_leak, fire_ge=self.fire_ge,
                  surrogate=self.surrogate_function, surrogate_form=self.surrogate_form,
                  detach_reset=self.detach_reset, payload=self.payload)
        if self.leak_mode == "post_reset":
            kw.update(leak=self.leak_param, tau=2.0)
        else:
            kw.update(leak=1.0, tau=self.leak_param)
        return kw

    def extra_repr(self) -> str:
        name = "decay" if self.leak_mode == "post_reset" else "tau"
        return f"{name}={float(self.leak_param.detach()):.4g}, leak_mode={self.leak_mode!r}, {super().extra_repr()}"


# ----------------------------------------------------------------------------------------------------
# SpikingJelly drop-ins
# ----------------------------------------------------------------------------------------------------
_SJ_DIFFERENCES = """
    Remaining differences from SpikingJelly 2.0 (everything else - dynamics, defaults, argument names and order,
    ``reset()``, ``step_mode``, ``store_v_seq``/``v_seq`` - is the same, and the outputs are bit-identical):

    * ``backend``: ``"auto"`` (default: the fused multispike kernel, exact), ``"torch"``, ``"cpp"``, ``"triton"``.
      SpikingJelly 1.x's ``"cupy"`` is accepted and means ``"auto"``.
    * ``surrogate_function``: multispike surrogates (``Sigmoid``, ``ATan``, ...); a SpikingJelly ``Sigmoid``/``ATan``
      object is translated to the same multispike surrogate (gradients equal to float rounding), any other
      SpikingJelly surrogate raises ``TypeError``; ``spiking=False`` surrogates are not supported.
    * ``v`` is ``None`` until the first step (SpikingJelly holds the Python float ``v_init`` there); the state
      cannot be assigned through ``v``.
    * ``v_threshold``/``v_init`` (and ``tau``) are tensors (buffers), so they move with ``.to()`` and are saved in the
      ``state_dict``. Numbers take the default dtype at construction: for float64 pass float64 tensors or build
      under ``torch.set_default_dtype(torch.float64)`` (SpikingJelly keeps Python floats, so its ``.double()`` sees
      the exact decimal; ours sees the value already rounded to the default dtype).
    * multispike's extra options (``v_init``, ``fire_ge``, ``payload``, ``learnable_threshold``, ``surrogate_form``)
      are keyword-only; their defaults reproduce SpikingJelly.
"""


def _sj_backend(backend: str) -> str:
    return "auto" if backend == "cupy" else backend


def _sj_surrogate(surrogate_function):
    """A multispike surrogate for ``surrogate_function`` (SpikingJelly's ``Sigmoid``/``ATan`` are translated)."""
    if surrogate_function is None or isinstance(surrogate_function, (SurrogateFunction, str)):
        return surrogate_function
    return convert_spikingjelly_surrogate(surrogate_function)


class IFNode(IFNeuron):
    """SpikingJelly's ``IFNode`` with its defaults: hard reset to ``v_reset = 0``, ``v(0) = v_reset``, fire on
    ``v >= θ``, sigmoid surrogate (α = 4). Use :class:`IFNeuron` for multispike's conversion defaults (soft reset).

    Args:
        v_threshold: θ.
        v_reset: hard-reset value; ``None`` for a soft reset (subtract θ).
        surrogate_function: surrogate object (multispike's, or SpikingJelly's ``Sigmoid``/``ATan``) or name.
        detach_reset: stop the gradient through the reset.
        step_mode: ``'s'`` or ``'m'`` (input ``[T, B, ...]``).
        backend: see the differences below.
        store_v_seq: keep the membrane after every step of a multi-step call in ``v_seq``.
        v_init: initial membrane; ``None`` (default) is SpikingJelly's choice, ``v_reset`` (or 0 for a soft reset).
        **kwargs: multispike's other options (see :class:`BaseNeuron`).
    """ + _SJ_DIFFERENCES

    def __init__(self, v_threshold: float | torch.Tensor = 1.0, v_reset: float | None = 0.0,
                 surrogate_function: SurrogateFunction | str | None = None, detach_reset: bool = False,
                 step_mode: str = "s", *, backend: str = "auto", store_v_seq: bool = False,
                 v_init: float | torch.Tensor | None = None, **kwargs) -> None:
        if v_init is None:
            v_init = 0.0 if v_reset is None else v_reset
        super().__init__(v_threshold=v_threshold, v_reset=v_reset,
                         surrogate_function=_sj_surrogate(surrogate_function), detach_reset=detach_reset,
                         step_mode=step_mode, backend=_sj_backend(backend), store_v_seq=store_v_seq,
                         v_init=v_init, **kwargs)


class LIFNode(LIFNeuron):
    """SpikingJelly's ``LIFNode`` with its defaults and argument names: ``tau = 2``, ``decay_input=True``
    (``H = V + (X − (V − V_r))/τ``; False gives ``H = V − (V − V_r)/τ + X``), hard reset to ``v_reset = 0``,
    ``v(0) = v_reset``, sigmoid surrogate (α = 4).

    Args:
        tau: membrane time constant τ > 1 (number or one-element tensor).
        decay_input: whether the input is divided by τ too.
        v_threshold, v_reset, surrogate_function, detach_reset, step_mode, backend, store_v_seq, v_init: as in
            :class:`IFNode`.
        **kwargs: multispike's other options (see :class:`LIFNeuron`/:class:`BaseNeuron`).
    """ + _SJ_DIFFERENCES

    def __init__(self, tau: float | torch.Tensor = 2.0, decay_input: bool = True,
                 v_threshold: float | torch.Tensor = 1.0, v_reset: float | None = 0.0,
                 surrogate_function: SurrogateFunction | str | None = None, detach_reset: bool = False,
                 step_mode: str = "s", *, backend: str = "auto", store_v_seq: bool = False,
                 v_init: float | torch.Tensor | None = None, **kwargs) -> None:
        if "leak_mode" in kwargs:
            raise TypeError("LIFNode: choose the leak with decay_input (SpikingJelly's argument), not leak_mode; "
                            "use LIFNeuron for the other leak placements")
        if v_init is None:
            v_init = 0.0 if v_reset is None else v_reset
        super().__init__(tau=tau, leak_mode="decay_input" if decay_input else "decay_state", v_threshold=v_threshold,
                         v_reset=v_reset, surrogate_function=_sj_surrogate(surrogate_function),
                         detach_reset=detach_reset, step_mode=step_mode, backend=_sj_backend(backend),
                         store_v_seq=store_v_seq, v_init=v_init, **kwargs)
        self.decay_input = bool(decay_input)

    @property
    def tau(self) -> torch.Tensor:
        """The time constant τ (SpikingJelly's attribute name)."""
        return self.leak_param
