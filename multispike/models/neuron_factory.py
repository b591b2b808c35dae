"""Neuron injection: build every activation of a model from one spec (timm's ``act_layer``, SpikingJelly's
``spiking_neuron=``), with per-source defaults and checked keywords."""
from __future__ import annotations

import copy
import difflib
import functools
import importlib
import inspect
import sys
from typing import Any

from torch import nn

from ..neurons.base import MemoryModule, StepModule
from ..neurons.registry import _REGISTRY as _NEURON_REGISTRY
from ..neurons.registry import list_neurons, make_neuron

__all__ = ["NeuronFactory"]


def _init_params(cls: type) -> set[str] | None:
    """Keyword names accepted by ``cls(...)``, following ``**kwargs`` up the MRO; ``None`` if unknowable."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            return names
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):  # builtins without a signature
            return None
        var_kw = False
        for p in params:
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                var_kw = True
            elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
                names.add(p.name)
        if not var_kw:
            return names
    return names


def _registered_name_of(target: Any) -> str | None:
    """The registry name whose class is ``target`` (only modules already imported are inspected)."""
    for name, (module_path, attr, _spiking, _takes_T) in _NEURON_REGISTRY.items():
        module = sys.modules.get(module_path)
        if module is not None and getattr(module, attr, None) is target:
            return name
    return None


class NeuronFactory:
    """Builds every activation of one model from one neuron spec, with per-source defaults.

    Keyword precedence for each neuron, lowest first: the model's per-source ``defaults[neuron name]`` <
    the user's ``neuron_kwargs`` < architecture-fixed values of a site (``site=``, e.g. θ = 0.5 of SDT's
    KV neuron) < the user's per-site keywords (``site_user=``). Defaults and site values a neuron class does
    not accept are skipped (a ReLU has no threshold); the user's keywords are checked and a misspelt one is
    an error that names the valid keywords.

    Args:
        spec: a registered name (``multispike.neurons.registry``), a class, a ``functools.partial`` or a
            callable returning an ``nn.Module``.
        T: the model's timesteps (passed to neurons that take ``T``, e.g. LM-HT's T×T T-GIM).
        defaults: ``{neuron name: kwargs}`` of the model's source paper.
        neuron_kwargs: the user's keywords for every neuron.
        owner: model name used in error messages.
    """

    def __init__(self, spec: Any, T: int, defaults: dict[str, dict[str, Any]] | None = None,
                 neuron_kwargs: dict[str, Any] | None = None, owner: str = "model") -> None:
        self.spec = spec
        self.T = T
        self.owner = owner
        if isinstance(spec, str):
            key = spec.lower()
            if key not in _NEURON_REGISTRY:
                close = difflib.get_close_matches(key, list_neurons(), n=2, cutoff=0.5)
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(f"{owner}: unknown neuron {spec!r}.{hint} Registered neurons: "
                                 f"{', '.join(list_neurons())} (or pass a class / functools.partial)")
            module_path, attr, spiking, takes_T = _NEURON_REGISTRY[key]
            try:
                cls = getattr(importlib.import_module(module_path), attr)
            except (ImportError, AttributeError) as exc:
                raise ImportError(f"{owner}: neuron {spec!r} is registered as {module_path}.{attr}, which cannot be "
                                  f"imported ({type(exc).__name__}: {exc}). Use another neuron "
                                  f"({', '.join(list_neurons())}) or install the missing module.") from exc
            self.name: str | None = key
            self.cls: Any = cls
            self.takes_T = takes_T
            self.spiking = spiking
            self._bound: dict[str, Any] = {}
        elif isinstance(spec, functools.partial) or callable(spec):
            target = spec.func if isinstance(spec, functools.partial) else spec
            self._bound = dict(spec.keywords) if isinstance(spec, functools.partial) else {}
            self.cls = target
            self.name = _registered_name_of(target)
            self.takes_T = False
            self.spiking = isinstance(target, type) and issubclass(target, MemoryModule)
        else:
            raise TypeError(f"{owner}: neuron must be a registered name, a class, a functools.partial or a callable "
                            f"returning an nn.Module, got {type(spec).__name__}")
        self.accepted = _init_params(self.cls) if isinstance(self.cls, type) else None
        if self.accepted is not None and "T" in self.accepted and not isinstance(spec, str):
            self.takes_T = "T" not in self._bound
        self.user_kwargs = dict(neuron_kwargs or {})
        self._check_user(self.user_kwargs, "neuron_kwargs")
        # A partial's bound keywords are the user's choice: source defaults never override them.
        self.defaults = {k: v for k, v in self._filter((defaults or {}).get(self.name or "", {})).items()
                         if k not in self._bound}

    def _filter(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.accepted is None:
            return {}  # unknown signature: never guess keywords for it
        return {k: v for k, v in kwargs.items() if k in self.accepted}

    def _check_user(self, kwargs: dict[str, Any], what: str) -> None:
        if self.accepted is None:
            return
        bad = [k for k in kwargs if k not in self.accepted]
        if bad:
            suggestions = {k: difflib.get_close_matches(k, sorted(self.accepted), n=1) for k in bad}
            hint = "; ".join(f"{k!r} -> did you mean {s[0]!r}?" for k, s in suggestions.items() if s)
            raise ValueError(f"{self.owner}: {what} {bad} not accepted by neuron {self.describe()}. "
                             f"{hint + '. ' if hint else ''}Valid keywords: {', '.join(sorted(self.accepted))}")

    def describe(self) -> str:
        """The neuron as a short string (its registry name or class name)."""
        return self.name or getattr(self.cls, "__name__", repr(self.cls))

    def resolved_kwargs(self, site: dict[str, Any] | None = None,
                        site_user: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keywords a neuron at a site would be built with (before per-neuron copies of modules)."""
        if site_user:
            self._check_user(site_user, "site keywords")
        return {**self.defaults, **self.user_kwargs, **self._filter(site or {}), **(site_user or {})}

    def __call__(self, site: dict[str, Any] | None = None, site_user: dict[str, Any] | None = None) -> nn.Module:
        # Each neuron gets its own copy of module-valued keywords (surrogate objects), so converters and
        # learnable surrogates never share state between layers by accident.
        kwargs = {k: copy.deepcopy(v) if isinstance(v, nn.Module) else v
                  for k, v in self.resolved_kwargs(site, site_user).items()}
        if isinstance(self.spec, str):
            module = make_neuron(self.spec, T=self.T, **kwargs)
        else:
            if self.takes_T:
                kwargs.setdefault("T", self.T)
            module = make_neuron(self.spec, **kwargs)
        if isinstance(module, StepModule) and "m" in module.supported_step_modes():
            module.step_mode = "m"
        return module
