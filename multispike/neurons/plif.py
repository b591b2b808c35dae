"""Parametric LIF (PLIF, Fang et al. ICCV 2021) with SpikingJelly's exact arithmetic.

The leak rate is learned through ``w``, ``1/τ = sigmoid(w)``, and multiplies (SpikingJelly's PLIF) rather than
divides (its LIF)::

    decay_input=True:   H = V + (X − (V − V_r))·sigmoid(w)
    decay_input=False:  H = V − (V − V_r)·sigmoid(w) + X
    S = H(H − θ);  V = H − θ·S (soft reset)  or  V = H·(1 − S) + V_r·S (hard reset)

Because ``x·q`` and ``x/τ`` round differently, PLIF cannot be run by the LIF kernels without changing spikes; it
uses this reference function (family ``"plif"``, backend ``"torch"``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._dispatch import register_kernel
from .if_lif import BaseNeuron, LIFState, _float_tensor
from .surrogate import Sigmoid, SurrogateFunction

__all__ = ["plif_multistep", "ParametricLIFNode"]


def plif_multistep(
    x_seq: torch.Tensor,
    state: LIFState | None = None,
    *,
    w: torch.Tensor,
    decay_input: bool = True,
    v_threshold: float | torch.Tensor = 1.0,
    v_init: float | torch.Tensor = 0.0,
    v_reset: float | None = 0.0,
    fire_ge: bool = True,
    surrogate: SurrogateFunction | None = None,
    detach_reset: bool = False,
    payload: str = "spike",
    store_v_seq: bool = False,
) -> tuple[torch.Tensor, LIFState, torch.Tensor | None]:
    """Reference multi-step PLIF dynamics (see the module docstring); returns ``(y_seq, state, v_seq_or_None)``.

    ``w`` is the one-element rate logit (``1/τ = sigmoid(w)``); its gradient flows through ``sigmoid``.
    The spike argument is ``H − θ`` (θ detached, as in :func:`multispike.neurons.lif_multistep`'s difference form).
    """
    if payload not in ("spike", "threshold"):
        raise ValueError(f"payload must be 'spike' or 'threshold', got {payload!r}")
    surrogate = surrogate if surrogate is not None else Sigmoid()
    theta = v_threshold
    q = w.sigmoid()
    v = torch.zeros_like(x_seq[0]) + v_init if state is None else state.v
    vr = 0.0 if v_reset is None else v_reset
    ys, vs = [], []
    for t in range(x_seq.shape[0]):
        x = x_seq[t]
        h = v + (x - (v - vr)) * q if decay_input else v - (v - vr) * q + x
        s = surrogate(h - (theta.detach() if isinstance(theta, torch.Tensor) else theta), fire_ge)
        s_r = s.detach() if detach_reset else s
        v = h - theta * s_r if v_reset is None else h * (1.0 - s_r) + v_reset * s_r
        ys.append(theta * s if payload == "threshold" else s)
        if store_v_seq:
            vs.append(v)
    return torch.stack(ys), LIFState(v), (torch.stack(vs) if store_v_seq else None)


register_kernel("plif", "torch", plif_multistep)


class ParametricLIFNode(BaseNeuron):
    """SpikingJelly's ``ParametricLIFNode`` (same defaults, argument names and outputs): a LIF whose time constant
    is learned, ``1/τ = sigmoid(w)`` with ``w`` initialised to ``−ln(init_tau − 1)``.

    Args:
        init_tau: initial τ > 1.
        decay_input: whether the input is scaled by ``1/τ`` too.
        v_threshold, v_reset, surrogate_function, detach_reset, step_mode, store_v_seq: as in
            :class:`multispike.IFNode` (hard reset to 0 by default).
        backend: only ``"auto"``/``"torch"`` (the reference; no fused PLIF kernel yet).
        v_init: initial membrane; ``None`` is SpikingJelly's choice (``v_reset``, or 0 for a soft reset).
        **kwargs: multispike's other options (see :class:`BaseNeuron`).

    Example::

        >>> import torch, multispike as ms
        >>> nrn = ms.neurons.ParametricLIFNode(init_tau=2.0, step_mode='m')
        >>> nrn(torch.tensor([[1.5], [1.5], [0.5]])).flatten().tolist()   # H: 0.75, 1.125 -> fire, 0.25
        [0.0, 1.0, 0.0]
    """

    family = "plif"

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float | torch.Tensor = 1.0,
                 v_reset: float | None = 0.0, surrogate_function: SurrogateFunction | str | None = None,
                 detach_reset: bool = False, step_mode: str = "s", *, backend: str = "auto",
                 store_v_seq: bool = False, v_init: float | torch.Tensor | None = None, **kwargs) -> None:
        from .if_lif import _sj_backend, _sj_surrogate
        if isinstance(init_tau, torch.Tensor):
            init_tau = float(init_tau)
        if not (isinstance(init_tau, (int, float)) and math.isfinite(init_tau) and init_tau > 1.0):
            raise ValueError(f"ParametricLIFNode: init_tau must be a finite number > 1, got {init_tau!r}")
        if kwargs.get("surrogate_form", "difference") != "difference":
            raise ValueError("ParametricLIFNode: only surrogate_form='difference' (SpikingJelly's H − θ) is supported")
        kwargs.pop("surrogate_form", None)
        if v_init is None:
            v_init = 0.0 if v_reset is None else v_reset
        super().__init__(v_threshold=v_threshold, v_reset=v_reset,
                         surrogate_function=_sj_surrogate(surrogate_function), detach_reset=detach_reset,
                         step_mode=step_mode, backend=_sj_backend(backend), store_v_seq=store_v_seq, v_init=v_init,
                         **kwargs)
        self.decay_input = bool(decay_input)
        # SpikingJelly: w = -ln(init_tau - 1) so that sigmoid(w) = 1/init_tau
        self.w = nn.Parameter(torch.as_tensor(-math.log(init_tau - 1.0)))

    @classmethod
    def from_w(cls, w: torch.Tensor, **kwargs) -> "ParametricLIFNode":
        """Build a node whose rate logit is a copy of ``w`` (dtype kept), e.g. from a trained SpikingJelly PLIF."""
        node = cls(**kwargs)
        node.w = nn.Parameter(_float_tensor(w).reshape(()), requires_grad=w.requires_grad)
        return node

    @property
    def tau(self) -> torch.Tensor:
        """The current time constant ``1/sigmoid(w)``."""
        return 1.0 / self.w.detach().sigmoid()

    params_type = None  # plif_multistep (the "plif" family) has no fused kernel and no record

    def dynamics_kwargs(self) -> dict:
        return dict(w=self.w, decay_input=self.decay_input, v_threshold=self.v_threshold, v_init=self.v_init,
                    v_reset=self.v_reset, fire_ge=self.fire_ge, surrogate=self.surrogate_function,
                    detach_reset=self.detach_reset, payload=self.payload)

    def extra_repr(self) -> str:
        return f"tau={float(self.tau):.4g}, decay_input={self.decay_input}, {super().extra_repr()}"
