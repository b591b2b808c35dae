"""Surrogate gradients as objects.

A spike is a Heaviside step in the forward pass; in the backward pass its derivative is replaced by a
smooth pseudo-derivative ``h'(x)``. Every surrogate here is an ``nn.Module`` (SpikingJelly style) with

* ``derivative(x)``  - the analytic ``h'(x)`` (pure torch ops, usable by fused kernels),
* ``primitive(x)``   - a smooth function whose derivative is ``h'(x)`` (used when ``spiking=False``),
* ``forward(x, fire_ge=True)`` - the exact step with the surrogate gradient attached,
* ``area``           - the integral of ``h'`` over the real line (algorithms.md §1.2).

The argument ``x`` is whatever the neuron passes: ``m - θ`` (difference form) or ``m/θ - 1`` (normalised
form); the neuron's ``surrogate_form`` option chooses (algorithms.md §0, §1.2).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "convert_spikingjelly_surrogate",
    "SurrogateFunction",
    "Rectangular",
    "Triangle",
    "Sigmoid",
    "ATan",
    "heaviside",
    "get_surrogate",
    "SURROGATES",
]


def heaviside(x: torch.Tensor, fire_ge: bool = True) -> torch.Tensor:
    """Exact step: ``1{x >= 0}`` if ``fire_ge`` else ``1{x > 0}``, in ``x``'s dtype."""
    return (x >= 0).to(x.dtype) if fire_ge else (x > 0).to(x.dtype)


class _SurrogateSpike(torch.autograd.Function):
    """Heaviside forward, ``grad * h'(x)`` backward. Saves only ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: "SurrogateFunction", fire_ge: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return heaviside(x, fire_ge)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.derivative(x), None, None


class SurrogateFunction(nn.Module):
    """Base class. Subclasses implement :meth:`derivative` and :meth:`primitive`.

    Args:
        alpha: width/sharpness hyper-parameter (meaning depends on the subclass).
        spiking: if False, ``forward`` returns the smooth primitive instead of the step (for ANN-like
            pre-training, as in SpikingJelly).
    """

    area: float = 1.0

    def __init__(self, alpha: float = 1.0, spiking: bool = True) -> None:
        super().__init__()
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"{type(self).__name__}: alpha must be a finite positive number, got {alpha!r}")
        self.alpha = float(alpha)
        self.spiking = spiking

    def derivative(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def primitive(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, fire_ge: bool = True) -> torch.Tensor:
        if not self.spiking:
            return self.primitive(x)
        return _SurrogateSpike.apply(x, self, fire_ge)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, spiking={self.spiking}"


class Rectangular(SurrogateFunction):
    """Rectangular window ``h'(x) = (1/a)·1{|x| < a/2}`` (STBP); area 1. ``alpha`` is the width ``a``."""

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        return (x.abs() < a / 2).to(x.dtype) / a

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        return (x / a + 0.5).clamp(0.0, 1.0)


class Triangle(SurrogateFunction):
    """Triangle surrogate in the two forms used by the papers (algorithms.md §1.2).

    * ``form="tet"`` (TET "ZIF"): ``h'(x) = (1/γ²)·max(0, γ − |x|)``, area 1, default γ = 1.
    * ``form="diet"`` (DIET-SNN / M-LIF): ``h'(x) = γ·max(0, 1 − |x|)`` on the normalised argument
      ``x = m/θ − 1``; in membrane space this is ``(γ/θ)·max(0, 1 − |m/θ − 1|)`` with area γ. Default γ = 0.3.

    Args:
        gamma: γ (alias of ``alpha``).
        form: ``"tet"`` or ``"diet"``.
    """

    def __init__(self, gamma: float | None = None, form: str = "tet", spiking: bool = True) -> None:
        if form not in ("tet", "diet"):
            raise ValueError(f"Triangle: form must be 'tet' or 'diet', got {form!r}")
        if gamma is None:
            gamma = 1.0 if form == "tet" else 0.3
        super().__init__(alpha=gamma, spiking=spiking)
        self.form = form
        self.area = 1.0 if form == "tet" else float(gamma)

    @property
    def gamma(self) -> float:
        return self.alpha

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        g = self.alpha
        if self.form == "tet":
            return (g - x.abs()).clamp(min=0.0) / (g * g)
        return g * (1.0 - x.abs()).clamp(min=0.0)

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "tet":
            g = self.alpha
            u = (x / g).clamp(-1.0, 1.0)
            return torch.where(u < 0, 0.5 * (1 + u) ** 2, 1 - 0.5 * (1 - u) ** 2)
        u = x.clamp(-1.0, 1.0)
        return self.alpha * torch.where(u < 0, 0.5 * (1 + u) ** 2, 1 - 0.5 * (1 - u) ** 2)

    def extra_repr(self) -> str:
        return f"gamma={self.alpha}, form={self.form!r}, spiking={self.spiking}"


class Sigmoid(SurrogateFunction):
    """Derivative of a sigmoid: ``h'(x) = α·σ(αx)·(1 − σ(αx))``; area 1. Default α = 4 (SDT, M-LIF)."""

    def __init__(self, alpha: float = 4.0, spiking: bool = True) -> None:
        super().__init__(alpha=alpha, spiking=spiking)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1.0 - s)

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.alpha * x)


class ATan(SurrogateFunction):
    """SpikingJelly's ``surrogate.ATan``: ``h'(x) = (α/2) / (1 + (π/2·α·x)²)``; area 1. Default α = 2.

    Its primitive is ``arctan(π/2·α·x)/π + 1/2``, whose derivative is exactly the expression above.
    """

    def __init__(self, alpha: float = 2.0, spiking: bool = True) -> None:
        super().__init__(alpha=alpha, spiking=spiking)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atan(math.pi / 2 * self.alpha * x) / math.pi + 0.5


SURROGATES: dict[str, type[SurrogateFunction]] = {
    "rectangular": Rectangular,
    "rect": Rectangular,
    "triangle": Triangle,
    "sigmoid": Sigmoid,
    "atan": ATan,
}


def get_surrogate(spec: "str | SurrogateFunction | None", default: SurrogateFunction | None = None,
                  **kwargs) -> SurrogateFunction:
    """Resolve a surrogate given as an object, a registered name or None (-> ``default`` or ``ATan()``)."""
    if spec is None:
        return default if default is not None else ATan()
    if isinstance(spec, SurrogateFunction):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key not in SURROGATES:
            raise ValueError(f"unknown surrogate {spec!r}; choose one of {sorted(SURROGATES)}")
        return SURROGATES[key](**kwargs)
    raise TypeError(f"surrogate must be a SurrogateFunction, a name or None, got {type(spec).__name__}")


# SpikingJelly surrogate class name -> the multispike surrogate with the same derivative.
_SJ_SURROGATES = {"Sigmoid": Sigmoid, "ATan": ATan}


def convert_spikingjelly_surrogate(sg) -> SurrogateFunction:
    """The multispike surrogate computing the same derivative as SpikingJelly surrogate ``sg``.

    Supported: ``Sigmoid(alpha)`` (derivative ``α·σ(αx)(1 − σ(αx))``) and ``ATan(alpha)``
    (``(α/2) / (1 + (π/2·α·x)²)``), both with ``spiking=True``. Others raise ``TypeError``. Only the type's
    module and name are inspected, so SpikingJelly itself is not imported. Also importable as
    :func:`multispike.interop.spikingjelly.convert_surrogate`.
    """
    if isinstance(sg, SurrogateFunction):
        return sg
    name = type(sg).__name__
    module = type(sg).__module__ or ""
    if not module.startswith("spikingjelly") or name not in _SJ_SURROGATES:
        raise TypeError(f"cannot translate surrogate {module}.{name}: multispike translates SpikingJelly's "
                        f"{sorted(_SJ_SURROGATES)} (pass a multispike SurrogateFunction for anything else)")
    if not getattr(sg, "spiking", True):
        raise TypeError(f"SpikingJelly {name}(spiking=False) (smooth forward) has no multispike equivalent")
    return _SJ_SURROGATES[name](alpha=float(sg.alpha))
