"""Shared machinery of the model zoo: the time-major base class, neuron injection and small blocks.

Every zoo model is a :class:`TimeMajorModel`:

* it runs on time-major tensors ``[T, B, ...]``; stateless layers (conv, BN, pooling, linear, dropout,
  flatten) sit in :class:`~multispike.layers.SeqToANNContainer` (one call on the merged ``T·B`` batch);
* every activation is its own module, built by :class:`NeuronFactory` through
  :func:`multispike.neurons.registry.make_neuron`, so converters swap them by module replacement;
* residual additions go through :class:`~multispike.layers.ResidualAdd` modules;
* a static image ``[B, C, H, W]`` passes the stem conv+BN **once** and :attr:`TimeMajorModel.encoder`
  repeats the result ``T`` times (direct encoding, LM-HT §2.5; equal to repeating the image first, and T
  times cheaper). An event tensor ``[T, B, C, H, W]`` runs the stem on all frames and skips the encoder;
* ``forward(x)`` returns the time-mean of the per-step logits ``[B, classes]``; ``forward_sequence(x)`` the
  per-step logits ``[T_out, B, classes]`` (for TET or per-prefix evaluation). The classifier never spikes.

ANN activations (ReLU, QCFS, QAC) are elementwise, so the same model at ``T = 1`` is the ANN.
"""
from __future__ import annotations

import copy
import difflib
import functools
import importlib
import inspect
import math
import sys
from typing import Any

import torch
from torch import nn

from ..layers import DirectEncoder, SeqToANNContainer
from ..neurons.base import MemoryModule, StepModule, check_positive_int, reset_net
from ..neurons.registry import _REGISTRY as _NEURON_REGISTRY
from ..neurons.registry import list_neurons, make_neuron

__all__ = ["TimeMajorModel", "NeuronFactory", "TimeSharedDropout", "conv_bn", "conv3x3", "conv1x1",
           "make_dropout", "init_weights", "resolve_input_size", "EVENT_FRAME_MODES"]

EVENT_FRAME_MODES = ("sequence", "mean")


# ----------------------------------------------------------------------------------------------- neurons
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


# ----------------------------------------------------------------------------------------------- blocks
class TimeSharedDropout(StepModule):
    """Dropout whose mask is drawn once per sample and reused at every timestep (MLIF-C, algorithms.md §5.6).

    Input ``[T, B, ...]``; the mask has shape ``[1, B, ...]``. In ``'s'`` mode (the model fed one step at a
    time) the mask of the first step is kept until :meth:`reset`, so a sequence sees one mask either way.
    Identity in eval mode and for ``p = 0``. At ``T = 1`` it is ordinary (inverted) dropout.
    """

    _is_stateful = True  # reset_net() calls reset() on it

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        if not (0.0 <= float(p) < 1.0):
            raise ValueError(f"TimeSharedDropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.step_mode = "m"
        self.mask: torch.Tensor | None = None

    def reset(self) -> None:
        self.mask = None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x_seq
        shape = (1, *x_seq.shape[1:])
        mask = self.mask if self.step_mode == "s" else None
        if mask is None or mask.shape != shape:
            mask = torch.empty(shape, device=x_seq.device, dtype=x_seq.dtype).bernoulli_(1.0 - self.p)
            mask = mask / (1.0 - self.p)
            if self.step_mode == "s":
                self.mask = mask
        return x_seq * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_dropout(p: float, mode: str = "independent") -> nn.Module:
    """A dropout module for time-major data.

    Args:
        p: drop probability in [0, 1). ``p = 0`` still returns a module, so the layer indices (and state-dict
            keys) do not depend on the dropout rate: an ANN trained without dropout loads into the SNN with it.
        mode: ``"independent"`` (a fresh mask for every step: ``SeqToANNContainer(nn.Dropout)``, LM-HT/QCFS
            code) or ``"shared"`` (:class:`TimeSharedDropout`, one mask for all steps, MLIF-C).
    """
    if not (0.0 <= float(p) < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    if mode == "independent":
        return SeqToANNContainer(nn.Dropout(float(p)))
    if mode == "shared":
        return TimeSharedDropout(p)
    raise ValueError(f"dropout_mode must be 'independent' or 'shared', got {mode!r}")


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3×3 convolution with padding 1."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1×1 convolution."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=bias)


def conv_bn(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, bias: bool = False) -> SeqToANNContainer:
    """``SeqToANNContainer(Conv(k, padding k//2), BatchNorm2d)``: the unit converters fold."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)
    return SeqToANNContainer(conv, nn.BatchNorm2d(out_ch))


@torch.no_grad()
def _trunc_normal_(w: torch.Tensor, std: float, bound: float = 2.0) -> torch.Tensor:
    """N(0, std²) truncated to ±bound·std by rejection sampling: the exact truncated normal, several times
    faster than ``nn.init.trunc_normal_``'s inverse-CDF method on large tensors (about 4.6% of draws redrawn)."""
    w.normal_(0.0, std)
    if w.device.type == "meta":
        return w
    flat = w.view(-1)
    bad = flat.abs() > bound * std
    while bool(bad.any()):
        idx = bad.nonzero().squeeze(1)
        flat[idx] = torch.empty(idx.numel(), dtype=w.dtype, device=w.device).normal_(0.0, std)
        bad = torch.zeros_like(bad)
        bad[idx] = flat[idx].abs() > bound * std
    return w


def init_weights(model: nn.Module, scheme: str = "he") -> None:
    """Initialise conv/linear/BN weights.

    Args:
        scheme: ``"he"`` (Kaiming normal: fan-out for convs as in LMHT-C/torchvision, fan-in for linear layers;
            biases 0) or ``"trunc_normal"`` (SDT-C: convs and linears N(0, 0.02²) truncated at ±2σ, biases 0).
            BN always starts at γ = 1, β = 0.
    """
    if scheme not in ("he", "trunc_normal"):
        raise ValueError(f"weight init scheme must be 'he' or 'trunc_normal', got {scheme!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if scheme == "he":
                mode = "fan_in" if isinstance(m, nn.Linear) else "fan_out"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            else:
                _trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resolve_input_size(input_size: int | tuple[int, ...] | None, in_channels: int | None,
                       default: tuple[int, int, int], owner: str) -> tuple[int, int, int]:
    """``(C, H, W)`` from an ``input_size`` (int side, ``(H, W)`` or ``(C, H, W)``) and ``in_channels``."""
    if input_size is None:
        size = tuple(default)
    elif isinstance(input_size, int):
        size = (default[0], input_size, input_size)
    else:
        size = tuple(int(s) for s in input_size)
        if len(size) == 2:
            size = (default[0], *size)
        if len(size) != 3:
            raise ValueError(f"{owner}: input_size must be an int, (H, W) or (C, H, W), got {input_size!r}")
    if in_channels is not None:
        size = (check_positive_int(in_channels, "in_channels", fix="Use 3 for RGB images, 2 for DVS events."),
                *size[1:])
    for s, what in zip(size, ("channels", "height", "width")):
        if s < 1:
            raise ValueError(f"{owner}: input {what} must be >= 1, got input_size={size}")
    return size  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- base model
class TimeMajorModel(StepModule):
    """Base class of every zoo model: time-major execution, direct encoding, time-mean readout.

    Subclasses build ``self.stem`` (a ``SeqToANNContainer(conv, BN)``: the layers before the first neuron)
    and implement :meth:`forward_body` on the encoded sequence ``[T, B, C', H', W']``.

    Input layouts (the attribute ``input_layout`` documents it as ``"image|events"``):

    * ``[B, C, H, W]``: a static image. The stem runs once and :attr:`encoder` (a
      :class:`~multispike.layers.DirectEncoder`) repeats its output ``T`` times. A mixed-timestep converter
      may set ``encoder.T = 1`` and let the first neuron expand the sequence.
    * ``[T, B, C, H, W]``: event frames, used as they are (``T`` comes from the data, not from ``self.T``).
      With ``event_frames="mean"`` the frames are averaged into one image first, which is then encoded like a
      static image (LMHT-C's DVS path, algorithms.md §2.10).

    Attributes:
        T: timesteps of direct encoding.
        auto_reset: reset every neuron at the start of each :meth:`forward_sequence` call (default True;
            set False to stream a sequence chunk by chunk with persistent state).
        step_mode: ``'m'`` (default) runs each layer on the whole sequence; ``'s'`` (set with
            ``multispike.set_step_mode(model, 's')``) feeds the network one step at a time with every neuron in
            single-step mode - the same function for causal neurons, checked by the tests.
        time_major: True (the converters convert such models by module replacement).
    """

    time_major = True
    input_layout = "image|events"

    def __init__(self, *, num_classes: int, T: int, input_size: tuple[int, int, int], neuron: Any,
                 neuron_kwargs: dict[str, Any] | None = None, neuron_defaults: dict[str, dict[str, Any]] | None = None,
                 event_frames: str = "sequence", owner: str | None = None) -> None:
        super().__init__()
        owner = owner or type(self).__name__
        self.step_mode = "m"
        self.T = check_positive_int(T, "T", fix="Use T >= 1 timesteps (T = 1 with relu/qcfs/qac is the ANN).")
        self.num_classes = check_positive_int(num_classes, "num_classes", fix="A classifier needs >= 1 class.")
        self.input_size = tuple(input_size)
        self.in_channels = self.input_size[0]
        if event_frames not in EVENT_FRAME_MODES:
            raise ValueError(f"{owner}: event_frames must be one of {EVENT_FRAME_MODES}, got {event_frames!r}")
        self.event_frames = event_frames
        self.auto_reset = True
        self.encoder = DirectEncoder(self.T)
        self.neuron_factory = NeuronFactory(neuron, self.T, neuron_defaults, neuron_kwargs, owner=owner)
        self.neuron_name = self.neuron_factory.describe()

    # -- construction helpers for subclasses
    def make_neuron(self, site: dict[str, Any] | None = None, site_user: dict[str, Any] | None = None) -> nn.Module:
        """A new activation module (see :class:`NeuronFactory` for keyword precedence)."""
        return self.neuron_factory(site, site_user)

    # -- execution
    def forward_body(self, x_seq: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Everything after the encoder: ``[T, B, C', H', W'] -> [T, B, num_classes]``."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Stem plus encoding: ``[B, C, H, W]`` or ``[T, B, C, H, W]`` -> the first neuron's input ``[T, B, ...]``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: expected a torch.Tensor, got {type(x).__name__}")
        rank = len(self.input_size) + 1
        if x.dim() not in (rank, rank + 1):
            dims = ", ".join(map(str, self.input_size))
            raise ValueError(f"{type(self).__name__}: expected a static input [B, {dims}] or event frames "
                             f"[T, B, {dims}], got shape {tuple(x.shape)}. For batch-first frames use "
                             f"multispike.to_time_major(x, layout='BT').")
        if x.shape[-len(self.input_size)] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[-len(self.input_size)]} channels (shape "
                             f"{tuple(x.shape)}) but the model was built with in_channels={self.in_channels}")
        if x.dim() == rank + 1 and self.event_frames == "mean":
            x = x.mean(0)
        if x.dim() == rank:
            return self.encoder(self.stem(x.unsqueeze(0))[0])
        return self.stem(x)

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step logits ``[T_out, B, num_classes]`` (``T_out`` is ``T`` unless a converter changed it)."""
        if self.auto_reset:
            self.reset()
        x_seq = self.encode(x)
        if self.step_mode == "m":
            return self.forward_body(x_seq)
        return torch.cat([self.forward_body(x_seq[t:t + 1]) for t in range(x_seq.shape[0])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``: the time-mean of :meth:`forward_sequence`."""
        return self.forward_sequence(x).mean(0)

    # -- state and timesteps
    def reset(self) -> None:
        """Reset every stateful sub-module (neurons, time-shared dropout)."""
        reset_net(self)

    def set_timesteps(self, T: int) -> None:
        """Set ``T`` of the model and of its encoder.

        Neurons whose parameters depend on T (LM-HT's T×T T-GIM) are not rebuilt: convert or re-create them.
        """
        self.T = check_positive_int(T, "T", fix="Use T >= 1 timesteps.")
        self.encoder.T = self.T

    def extra_repr(self) -> str:
        return f"T={self.T}, input_size={self.input_size}, num_classes={self.num_classes}, neuron={self.neuron_name!r}"


def _flat_features(channels: int, spatial: tuple[int, int], owner: str) -> int:
    h, w = spatial
    if h < 1 or w < 1:
        raise ValueError(f"{owner}: the input is too small - the feature map shrinks to {h}x{w} before the "
                         f"classifier; use a larger input_size")
    return channels * h * w


def _check_divisible(size: tuple[int, int, int], factor: int, owner: str) -> None:
    h, w = size[1:]
    if h % factor or w % factor:
        raise ValueError(f"{owner}: input height and width must be multiples of {factor} (the network halves them "
                         f"{int(math.log2(factor))} times before a flattening classifier), got {h}x{w}")


def build_model(cls: type, args: dict[str, Any], owner: str, *positional: Any) -> nn.Module:
    """``cls(*positional, **args)`` after checking every keyword; an unknown one is a ``ValueError`` that names it,
    suggests the closest valid option and lists them all (instead of Python's bare ``TypeError``)."""
    accepted = _init_params(cls) or set()
    bad = [k for k in args if k not in accepted]
    if bad:
        hints = {k: difflib.get_close_matches(k, sorted(accepted), n=1) for k in bad}
        hint = "; ".join(f"{k!r} -> did you mean {h[0]!r}?" for k, h in hints.items() if h)
        raise ValueError(f"{owner}: unknown option(s) {bad}. {hint + '. ' if hint else ''}Valid options: "
                         f"{', '.join(sorted(a for a in accepted if not a.startswith('_')))}")
    return cls(*positional, **args)
