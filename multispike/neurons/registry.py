"""Neuron registry: build the activation of a model from a name, a class or a partial (timm's act_layer).

Names: ``relu``, ``qcfs``, ``qac`` (ANN activations, elementwise) and ``if``, ``lif``, ``lmht``, ``mlif``
(spiking neurons, created in multi-step mode). Every factory accepts ``T`` (the model's timesteps; used by
neurons with a T×T T-GIM) and neuron keyword arguments.
"""
from __future__ import annotations

import importlib

from torch import nn

__all__ = ["register_neuron", "make_neuron", "list_neurons", "is_spiking_neuron_name", "NeuronSpec"]

NeuronSpec = "str | type | functools.partial | Callable[..., nn.Module]"

# name -> (module path, attribute, spiking?, accepts T?)
_REGISTRY: dict[str, tuple[str, str, bool, bool]] = {
    "relu": ("torch.nn", "ReLU", False, False),
    "gelu": ("torch.nn", "GELU", False, False),   # airbench94's float ANN
    "qcfs": ("multispike.quant.qcfs", "QCFS", False, False),
    "qac": ("multispike.quant.qac", "QACQuantizer", False, False),
    "if": ("multispike.neurons.if_lif", "IFNeuron", True, False),
    "lif": ("multispike.neurons.if_lif", "LIFNeuron", True, False),
    "lmht": ("multispike.neurons.lmht", "LMHTNeuron", True, True),
    "mlif": ("multispike.neurons.mlif", "OneHotMLIF", True, False),
}


def register_neuron(name: str, module_path: str, attribute: str, spiking: bool, takes_T: bool = False) -> None:
    """Register a neuron class by import path (imported lazily on first use)."""
    _REGISTRY[name.lower()] = (module_path, attribute, spiking, takes_T)


def list_neurons() -> list[str]:
    """Registered neuron names."""
    return sorted(_REGISTRY)


def is_spiking_neuron_name(name: str) -> bool:
    return _lookup(name)[2]


def _lookup(name: str) -> tuple[str, str, bool, bool]:
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown neuron {name!r}; registered neurons: {', '.join(list_neurons())} "
                         f"(or pass a class / functools.partial)")
    return _REGISTRY[key]


def make_neuron(spec, *, T: int | None = None, **kwargs) -> nn.Module:
    """Instantiate an activation/neuron module.

    Args:
        spec: a registered name, an ``nn.Module`` subclass, a ``functools.partial`` or any callable
            returning a module.
        T: the model's timesteps, passed to neurons that need it (LM-HT's T-GIM).
        **kwargs: constructor arguments. Spiking neurons default to ``step_mode='m'``.
    """
    if isinstance(spec, str):
        module_path, attr, spiking, takes_T = _lookup(spec)
        cls = getattr(importlib.import_module(module_path), attr)
        if spiking:
            kwargs.setdefault("step_mode", "m")
        if takes_T:
            if T is None:
                raise ValueError(f"neuron {spec!r} needs the number of timesteps T (its T-GIM is T×T)")
            kwargs.setdefault("T", T)
        return cls(**kwargs)
    if callable(spec):
        module = spec(**kwargs)
        if not isinstance(module, nn.Module):
            raise TypeError(f"neuron factory {spec!r} returned {type(module).__name__}, expected an nn.Module")
        return module
    raise TypeError(f"neuron must be a name, a class or a callable, got {type(spec).__name__}")
