"""An independent NIR interpreter for cross-checking: nirtorch's graph executor with literal node semantics.

:func:`run_with_nirtorch` executes a graph one step at a time with ``nirtorch.nir_to_torch`` (its own wiring,
summation of incoming edges and one-step delay on recurrent edges), using the same Euler semantics as
:mod:`multispike.export._literal` (``I: v += dt·r·x``; ``LI/LIF: v += dt/τ·(v_leak − v + r·x)``; strict ``>``;
reset to ``v_reset``). It shares no graph-walking code with :func:`multispike.export.import_from_nir`, so
agreement between the two is evidence that the importer reads graphs the way a NIR runtime does.

Two nirtorch 2.6 details are handled here: its default ``Affine`` mapping does not load the bias, and its
``Flatten`` mapping passes NIR's batch-free dims to ``nn.Flatten`` unchanged; both are replaced.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._literal import SumPool2d, euler_gain
from .nir import require_nir

__all__ = ["run_with_nirtorch", "nirtorch_node_map"]


def _f32(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


class _Integrator(nn.Module):
    def __init__(self, node, dt: float, leaky: bool) -> None:
        super().__init__()
        self.leaky = leaky
        if leaky:
            self.register_buffer("alpha", euler_gain(dt, 1.0 / np.asarray(node.tau, np.float64)))
            self.register_buffer("r", _f32(node.r))
            self.register_buffer("v_leak", _f32(node.v_leak))
        else:
            self.register_buffer("gain", euler_gain(dt, node.r))

    def integrate(self, v, x):
        if self.leaky:
            return v + self.alpha * (self.v_leak - v + self.r * x)
        return v + (x if bool((self.gain == 1).all()) else self.gain * x)

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        v = self.integrate(v, x)
        return v, v


class _Spiking(_Integrator):
    def __init__(self, node, dt: float, leaky: bool) -> None:
        super().__init__(node, dt, leaky)
        self.register_buffer("v_threshold", _f32(node.v_threshold))
        self.register_buffer("v_reset", _f32(node.v_reset))

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        v = self.integrate(v, x)
        z = (v > self.v_threshold).to(x.dtype)
        v = torch.where(z > 0, self.v_reset.expand_as(v), v)
        return z, v


class _Threshold(nn.Module):
    def __init__(self, node) -> None:
        super().__init__()
        self.register_buffer("threshold", _f32(node.threshold))

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)


class _Scale(nn.Module):
    def __init__(self, node) -> None:
        super().__init__()
        self.register_buffer("scale", _f32(node.scale))

    def forward(self, x):
        return x * self.scale


def _pair(v):
    a = np.asarray(v).astype(np.int64).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else tuple(int(x) for x in a)


def nirtorch_node_map(dt: float) -> dict:
    """A ``node_map`` for ``nirtorch.nir_to_torch`` with literal NIR semantics at step ``dt``."""
    nir = require_nir()

    def affine(node):
        m = nn.Linear(node.weight.shape[1], node.weight.shape[0], bias=True)
        m.weight.data = _f32(node.weight)
        m.bias.data = _f32(node.bias)
        return m

    def linear(node):
        m = nn.Linear(node.weight.shape[1], node.weight.shape[0], bias=False)
        m.weight.data = _f32(node.weight)
        return m

    def flatten(node):
        s, e = int(np.asarray(node.start_dim)), int(np.asarray(node.end_dim))
        return nn.Flatten(s + 1 if s >= 0 else s, e + 1 if e >= 0 else e)

    def conv2d(node):
        w = _f32(node.weight)
        groups = int(np.asarray(node.groups))
        pad = node.padding if isinstance(node.padding, str) else _pair(node.padding)
        m = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_pair(node.stride), padding=pad,
                      dilation=_pair(node.dilation), groups=groups, bias=True)
        m.weight.data = w
        m.bias.data = _f32(node.bias).reshape(-1)
        return m

    return {
        nir.Affine: affine, nir.Linear: linear, nir.Flatten: flatten, nir.Conv2d: conv2d,
        nir.AvgPool2d: lambda n: nn.AvgPool2d(_pair(n.kernel_size), _pair(n.stride), _pair(n.padding)),
        nir.SumPool2d: lambda n: SumPool2d(_pair(n.kernel_size), _pair(n.stride), _pair(n.padding)),
        nir.Threshold: _Threshold, nir.Scale: _Scale,
        nir.I: lambda n: _Integrator(n, dt, False), nir.LI: lambda n: _Integrator(n, dt, True),
        nir.IF: lambda n: _Spiking(n, dt, False), nir.LIF: lambda n: _Spiking(n, dt, True),
    }


@torch.no_grad()
def run_with_nirtorch(graph, x_seq: torch.Tensor, dt: float | None = None) -> torch.Tensor:
    """Run ``graph`` on a time-major input ``[T, B, ...]`` with nirtorch, one step per call; returns
    ``[T, B, ...]``. ``dt`` defaults to the graph's ``"dt"`` metadata (else 1)."""
    require_nir()
    import nirtorch

    if dt is None:
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        dt = float(np.asarray(meta.get("dt", 1.0)))
    module = nirtorch.nir_to_torch(graph, nirtorch_node_map(dt))
    state = None
    outs = []
    for t in range(x_seq.shape[0]):
        out, state = module(x_seq[t], state)
        outs.append(out)
    return torch.stack(outs)
