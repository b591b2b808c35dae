"""Literal NIR semantics on time-major sequences: what a conforming NIR runtime computes, node by node.

Discretisation (forward Euler with the graph's step ``dt``; one call of the graph per time step; a recurrent
edge delivers the previous step's output, as in nirtorch)::

    I     v ← v + dt·r·x                                       output v
    LI    v ← v + (dt/τ)·(v_leak − v + r·x)                     output v
    IF    v ← v + dt·r·x;               z = [v > θ];  v ← v_reset where z        output z
    LIF   v ← v + (dt/τ)·(v_leak − v + r·x); z = [v > θ]; v ← v_reset where z     output z
    Threshold  z = [x > θ]          Scale  y = s ⊙ x         (several incoming edges are summed first)

``dt·r`` and ``dt/τ`` are computed in float64 and rounded to float32 once; a gain within 1e−6 of 1 is taken
as exactly 1 (the float round-off of ``r = 1/dt``). Two alternative readings of ``nir.IF``/``nir.LIF`` that
real backends use are available for measurement: ``"subtract"`` (binary spike, reset by subtracting θ:
Speck, sinabs ``SingleSpike``) and ``"sinabs"`` (``floor(v/θ)`` spikes per step, subtractive reset, membrane
clamped at −θ: sinabs' default ``MultiSpike`` + ``MembraneSubtract`` reading of ``nir.IF``).

The fused blocks :class:`LadderBlock` and :class:`LaneBlock` run the threshold-ladder and one-hot-lane
decompositions (ecosystem.md §3.3 (A)/(B)) as one module each, with exactly the arithmetic of the graph's
nodes, so a graph without multispike metadata still runs correctly.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..neurons.base import MemoryModule, check_sequence

__all__ = ["IF_SEMANTICS", "euler_gain", "ScaleLayer", "ThresholdLayer", "IntegratorBlock", "SpikingBlock",
           "LadderBlock", "LaneBlock", "SumPool2d", "MembraneSpec"]

IF_SEMANTICS = ("nir", "subtract", "sinabs")


def euler_gain(a: np.ndarray | float, b: np.ndarray | float) -> torch.Tensor:
    """``a·b`` in float64, snapped to 1 within 1e−6, as a float32 tensor (``dt·r`` or ``dt/τ``)."""
    g = np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)
    g = np.where(np.abs(g - 1.0) <= 1e-6, 1.0, g)
    return torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32))


def _buffer(module: nn.Module, name: str, value) -> None:
    t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value, np.float32))
    module.register_buffer(name, t.to(torch.float32))


class ScaleLayer(nn.Module):
    """``nir.Scale``: ``y = s ⊙ x`` (``s`` has the per-sample shape)."""

    def __init__(self, scale) -> None:
        super().__init__()
        _buffer(self, "scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ThresholdLayer(nn.Module):
    """``nir.Threshold``: ``z = [x > θ]`` (strict)."""

    def __init__(self, threshold) -> None:
        super().__init__()
        _buffer(self, "threshold", threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)


class SumPool2d(nn.Module):
    """``nir.SumPool2d``: sum over each window (average pooling times the window size, padding counted)."""

    def __init__(self, kernel_size, stride, padding) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size, stride, padding, count_include_pad=True)
        self.area = int(np.prod(np.broadcast_to(np.asarray(kernel_size), (2,))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) * self.area


class MembraneSpec:
    """Parameters of an ``I`` or ``LI`` membrane under Euler with step dt (see the module docstring)."""

    def __init__(self, kind: str, dt: float, r, tau=None, v_leak=None) -> None:
        self.kind = kind
        if kind == "I":
            self.gain = euler_gain(dt, r)
            self.alpha = None
            self.r = None
            self.v_leak = None
        else:
            self.alpha = euler_gain(dt, 1.0 / np.asarray(tau, dtype=np.float64))
            self.r = torch.from_numpy(np.ascontiguousarray(r, np.float32))
            self.v_leak = torch.from_numpy(np.ascontiguousarray(v_leak, np.float32))
            self.gain = None


class _Membrane(MemoryModule):
    """Shared Euler membrane update of the literal blocks."""

    def _init_membrane(self, mem: MembraneSpec) -> None:
        self.kind = mem.kind
        if mem.kind == "I":
            _buffer(self, "gain", mem.gain)
        else:
            _buffer(self, "alpha", mem.alpha)
            _buffer(self, "r", mem.r)
            _buffer(self, "v_leak", mem.v_leak)
        self.register_memory("v", None)

    def _integrate(self, v: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        if self.kind == "I":
            return v + (inp if bool((self.gain == 1).all()) else self.gain * inp)
        return v + self.alpha * (self.v_leak - v + self.r * inp)

    def supported_step_modes(self) -> tuple[str, ...]:
        return ("m",)

    def _start(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, type(self).__name__)
        self._check_state_shape(x_seq.shape[1:])
        return torch.zeros_like(x_seq[0]) if self.v is None else self.v


class IntegratorBlock(_Membrane):
    """``nir.I`` / ``nir.LI`` without a firing stage: outputs the membrane."""

    def __init__(self, mem: MembraneSpec) -> None:
        super().__init__(step_mode="m")
        self._init_membrane(mem)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        v = self._start(x_seq)
        out = []
        for t in range(x_seq.shape[0]):
            v = self._integrate(v, x_seq[t])
            out.append(v)
        self.v = v
        return torch.stack(out)


class SpikingBlock(_Membrane):
    """``nir.IF`` / ``nir.LIF`` under one of :data:`IF_SEMANTICS`; outputs the spike count per step."""

    def __init__(self, mem: MembraneSpec, v_threshold, v_reset, semantics: str = "nir") -> None:
        super().__init__(step_mode="m")
        if semantics not in IF_SEMANTICS:
            raise ValueError(f"if_semantics must be one of {IF_SEMANTICS}, got {semantics!r}")
        self._init_membrane(mem)
        _buffer(self, "v_threshold", v_threshold)
        _buffer(self, "v_reset", v_reset)
        self.semantics = semantics

    def spike_events(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        v = self._start(x_seq)
        out = []
        for t in range(x_seq.shape[0]):
            v = self._integrate(v, x_seq[t])
            if self.semantics == "sinabs":
                z = torch.clamp(torch.floor(v / self.v_threshold), min=0)
                v = torch.maximum(v - z * self.v_threshold, -self.v_threshold)
            else:
                z = (v > self.v_threshold).to(v.dtype)
                if self.semantics == "subtract":
                    v = v - z * self.v_threshold
                else:
                    v = torch.where(z > 0, self.v_reset.expand_as(v), v)
            out.append(z)
        self.v = v
        return torch.stack(out)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, semantics={self.semantics!r}"


class _FeedbackBlock(_Membrane):
    """A membrane fed back its own output: ``v ← integrate(v, x + f·o(t−1))``, ``o(t) = output(v)``; outputs o.

    Subclasses define :meth:`_output` (what the Threshold nodes and Scale nodes after the membrane compute)."""

    def _output(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        v = self._start(x_seq)
        fb = torch.zeros_like(x_seq[0])
        out = []
        for t in range(x_seq.shape[0]):
            v = self._integrate(v, x_seq[t] + fb)
            o = self._output(v)
            fb = self.feedback * o
            out.append(o)
        self.v = v
        return torch.stack(out)


class LadderBlock(_FeedbackBlock):
    """Threshold ladder (§3.3(A)): ``I``/``LI`` membrane, L ``Threshold`` nodes, ``Scale`` feedback.

    Per step: ``v ← integrate(v, x + f·C(t−1))``, ``C(t) = Σ_k [v > t_k]``; outputs the count C.
    """

    def __init__(self, mem: MembraneSpec, thresholds: list, feedback) -> None:
        super().__init__(step_mode="m")
        self._init_membrane(mem)
        _buffer(self, "thresholds", np.stack([np.asarray(t, np.float32) for t in thresholds]))
        _buffer(self, "feedback", feedback)
        self.levels = len(thresholds)

    def spike_events(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def _output(self, v: torch.Tensor) -> torch.Tensor:
        count = (v > self.thresholds[0]).to(v.dtype)
        for k in range(1, self.levels):
            count = count + (v > self.thresholds[k]).to(v.dtype)
        return count

    def extra_repr(self) -> str:
        return f"kind={self.kind}, levels={self.levels}"


class LaneBlock(_FeedbackBlock):
    """One-hot lanes (§3.3(B)): thermometer ``a_s = [v > t_s]``, lanes ``z_s = l_s·(a_s + n_{s+1}·a_{s+1})``,
    payload ``o = Σ_s c_s·z_s``, feedback ``f·o``; outputs o (the value the next layer consumes)."""

    def __init__(self, mem: MembraneSpec, thresholds: list, negs: list, lane_scales: list, payloads: list,
                 feedback) -> None:
        super().__init__(step_mode="m")
        self._init_membrane(mem)
        S = len(thresholds)
        _buffer(self, "thresholds", np.stack([np.asarray(t, np.float32) for t in thresholds]))
        _buffer(self, "negs", np.stack([np.asarray(n, np.float32) for n in negs]) if negs else np.zeros((0,)))
        _buffer(self, "lane_scales", np.stack([np.asarray(x, np.float32) for x in lane_scales]))
        _buffer(self, "payloads", np.stack([np.asarray(c, np.float32) for c in payloads]))
        _buffer(self, "feedback", feedback)
        self.lanes = S
        self.unit = float(np.min(np.abs(np.asarray([np.max(np.abs(c)) for c in payloads]))))

    def spike_events(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.unit if self.unit not in (0.0, 1.0) else y

    def _output(self, v: torch.Tensor) -> torch.Tensor:
        S = self.lanes
        above = [(v > self.thresholds[s]).to(v.dtype) for s in range(S)]
        o = None
        for s in range(S):
            lane_in = above[s] if s == S - 1 else above[s] + self.negs[s] * above[s + 1]
            pay = self.payloads[s] * (self.lane_scales[s] * lane_in)
            o = pay if o is None else o + pay
        return o

    def extra_repr(self) -> str:
        return f"kind={self.kind}, lanes={self.lanes}"
