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

import difflib
from typing import Any

import torch
from torch import nn

from ..layers import DirectEncoder
from ..neurons.base import StepModule, check_positive_int, reset_net
from .blocks import TimeSharedDropout, conv1x1, conv3x3, conv_bn, init_weights, make_dropout
from .neuron_factory import NeuronFactory, _init_params

__all__ = ["TimeMajorModel", "NeuronFactory", "TimeSharedDropout", "conv_bn", "conv3x3", "conv1x1",
           "make_dropout", "init_weights", "resolve_input_size", "build_model", "EVENT_FRAME_MODES"]

EVENT_FRAME_MODES = ("sequence", "mean")


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

    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        # Validate the whole network before anything is switched, so a refused 's' leaves the model usable.
        if value == "s" and "_modules" in self.__dict__:
            refusing = [name for name, m in self.named_modules()
                        if m is not self and isinstance(m, StepModule) and "s" not in m.supported_step_modes()]
            if refusing:
                raise ValueError(f"{type(self).__name__}: step_mode='s' is impossible because {len(refusing)} "
                                 f"module(s) have no single-step form, e.g. {refusing[0]!r} "
                                 f"({type(self.get_submodule(refusing[0])).__name__}); such modules need the whole "
                                 f"sequence at once (LM-HT's learnable T-GIM is non-causal). Keep step_mode='m'.")
        StepModule.step_mode.fset(self, value)

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
