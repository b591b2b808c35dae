"""Step modes, state handling and input validation shared by every stateful spiking module.

Conventions (SpikingJelly 2.0 vocabulary, ecosystem.md §8):

* ``step_mode='s'``: ``forward(x)`` takes one step ``[B, ...]`` and keeps the membrane between calls.
* ``step_mode='m'``: ``forward(x_seq)`` takes a time-major sequence ``[T, B, ...]``.
* ``reset()`` restores the initial state. State lives in plain tensor attributes (not buffers), so it
  is neither saved in ``state_dict`` nor broadcast by DDP.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .._validate import check_positive_int  # noqa: F401  (re-exported: its historical home)
from .._validate import finite_number as _finite_number  # noqa: F401  (used by the neuron modules)

__all__ = [
    "MemoryModule",
    "StepModule",
    "check_sequence",
    "check_positive_int",
    "input_checks",
    "input_checks_enabled",
    "reset_net",
    "set_step_mode",
    "set_backend",
]

_CHECK_FINITE = False


@contextlib.contextmanager
def input_checks(enabled: bool = True) -> Iterator[None]:
    """Context manager turning on (or off) the non-finite-input check of every neuron.

    The check costs one reduction per call, so it is off by default::

        with multispike.input_checks():
            net(x)   # raises ValueError on NaN/Inf inputs, naming the module
    """
    global _CHECK_FINITE
    old = _CHECK_FINITE
    _CHECK_FINITE = enabled
    try:
        yield
    finally:
        _CHECK_FINITE = old


def input_checks_enabled() -> bool:
    """Whether :func:`input_checks` is active."""
    return _CHECK_FINITE


def check_sequence(x: torch.Tensor, owner: str, min_rank: int = 2, expected_T: int | None = None) -> None:
    """Validate a time-major ``[T, B, ...]`` input.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: wrong rank, ``T == 0``, a T that differs from ``expected_T``, or (when
            :func:`input_checks` is on) non-finite values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_rank:
        raise ValueError(
            f"{owner}: multi-step input must be time-major [T, B, ...] with at least {min_rank} dims, got shape "
            f"{tuple(x.shape)}. For a single step use step_mode='s'; for batch-first data use "
            f"multispike.to_time_major(x, layout='BT').")
    if x.shape[0] == 0:
        raise ValueError(f"{owner}: T (dim 0 of the input) must be >= 1, got an input of shape {tuple(x.shape)}")
    if expected_T is not None and x.shape[0] != expected_T:
        raise ValueError(f"{owner}: input has T={x.shape[0]} steps (dim 0 of shape {tuple(x.shape)}) but the module "
                         f"was built for T={expected_T}; rebuild it with T={x.shape[0]} or fix the input.")
    if _CHECK_FINITE and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{owner}: input contains {bad} non-finite value(s) (NaN/Inf); check the previous layer, "
                         f"the learning rate or the data.")


class StepModule(nn.Module):
    """A module with a validated ``step_mode`` attribute (``'s'`` single step or ``'m'`` multi step)."""

    def supported_step_modes(self) -> tuple[str, ...]:
        return ("s", "m")

    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value not in self.supported_step_modes():
            raise ValueError(f"{type(self).__name__}: step_mode must be one of {self.supported_step_modes()}, "
                             f"got {value!r}")
        self._step_mode = value


class MemoryModule(StepModule):
    """A stateful module: ``reset()`` clears the state registered with :meth:`register_memory`.

    State is kept as plain attributes, so it stays out of ``state_dict`` and out of DDP buffer broadcasts.
    A state value of ``None`` means "initialise lazily from the input on the next step".
    """

    def __init__(self, step_mode: str = "s", backend: str = "torch") -> None:
        super().__init__()
        self._memories: dict[str, object] = {}
        self.step_mode = step_mode
        self.backend = backend

    #: registered memories holding the membrane (a tensor, or a state tuple with ``.v``) of shape ``[B, ...]``
    _STATE_NAMES = ("state", "v")

    def register_memory(self, name: str, reset_value: object = None) -> None:
        self._memories[name] = reset_value
        object.__setattr__(self, name, reset_value)

    def reset(self) -> None:
        """Restore every registered state to its reset value."""
        for name, value in self._memories.items():
            object.__setattr__(self, name, value.clone() if isinstance(value, torch.Tensor) else value)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """Default multi-step: loop the single step (subclasses override with a fused sequence function)."""
        return torch.stack([self.single_step_forward(x) for x in x_seq])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._step_mode == "m":
            check_sequence(x, type(self).__name__)
            self._check_state_shape(x.shape[1:])
            return self.multi_step_forward(x)
        if isinstance(x, torch.Tensor):
            self._check_state_shape(x.shape)
        return self.single_step_forward(x)

    def _check_state_shape(self, step_shape: torch.Size) -> None:
        """Refuse a carried membrane whose shape is not one step of the new input.

        Without this a state of batch 2 meeting a batch of 1 would silently broadcast (the output then has
        the old batch size, or mixes samples). Costs one shape comparison per call: the shapes are Python
        tuples, so it adds no kernel and no graph break under ``torch.compile`` (the shapes are guarded on).
        """
        d = self.__dict__   # memories live in the instance dict (register_memory); "v" of a neuron is a property
        for name in self._STATE_NAMES:
            state = d.get(name)
            if state is None:
                continue
            v = state if isinstance(state, torch.Tensor) else getattr(state, "v", None)
            if isinstance(v, torch.Tensor) and v.shape != step_shape:
                self._state_shape_error(v.shape, step_shape)

    def _state_shape_error(self, state_shape: torch.Size, step_shape: torch.Size) -> None:
        raise ValueError(
            f"{type(self).__name__}: the stored membrane state has shape {tuple(state_shape)} but this input step has "
            f"shape {tuple(step_shape)} (a new batch of another size, or another input size). Call "
            f"multispike.reset_net(model) (or this module's reset()) before feeding a new batch.")

    def extra_repr(self) -> str:
        return f"step_mode={self._step_mode!r}, backend={self.backend!r}"


def reset_net(net: nn.Module) -> None:
    """Call ``reset()`` on every stateful sub-module (SpikingJelly's ``functional.reset_net``)."""
    for m in net.modules():
        if isinstance(m, MemoryModule) or (m is not net and hasattr(m, "reset") and getattr(m, "_is_stateful", False)):
            m.reset()


def set_step_mode(net: nn.Module, step_mode: str) -> None:
    """Set ``step_mode`` on every :class:`StepModule` in ``net``."""
    for m in net.modules():
        if isinstance(m, StepModule):
            m.step_mode = step_mode


def set_backend(net: nn.Module, backend: str, instance: type | tuple[type, ...] | None = None) -> None:
    """Set ``backend`` on every neuron (optionally only instances of ``instance``) in ``net``."""
    for m in net.modules():
        if isinstance(m, MemoryModule) and hasattr(m, "supported_backends"):
            if instance is None or isinstance(m, instance):
                m.backend = backend
