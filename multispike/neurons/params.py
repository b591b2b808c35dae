"""Parameter records of the neuron families (in the spirit of Norse's ``LIFParameters``).

One frozen record per family holds every option of the family's multi-step dynamics - the keyword arguments of
its reference function (:func:`~multispike.neurons.lif_multistep`, :func:`~multispike.neurons.lmht.lmht_multistep`,
:func:`~multispike.neurons.mlif.mlif_multistep`). The record is what travels between the layers:

* a neuron module describes its dynamics with one (``module.dynamics_params()``);
* the fused kernels' planners (:mod:`multispike.kernels`) read the options from it and fill the family's single
  ctypes argument record (:mod:`multispike.kernels._abi`) for the C++ library, or the Triton launch;
* every kernel entry point (``lif_multistep_cpp``, ``lif_multistep_triton``, ...) takes the reference's keyword
  arguments through :func:`keyword_entry`, whose signature is generated from the record.

Adding an option to a family therefore means: a field here (with the reference's default), its use in the
reference function, and - if a fused kernel must implement it rather than fall back - its planner and kernel.
``tests/test_neuron_params.py`` checks that each reference function's keyword options are exactly its record's
fields with the same defaults.

Fields hold numbers or tensors (thresholds and leaks may be learnable tensors), so records compare by identity
(``eq=False``) and are not hashable by value.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

__all__ = ["NeuronParameters", "LIFParameters", "LMHTParameters", "MLIFParameters", "keyword_entry"]

_REQUIRED = inspect.Parameter.empty


class NeuronParameters:
    """Shared behaviour of the records: construction from keyword options, conversion back, replacement."""

    family: ClassVar[str]

    @classmethod
    def from_options(cls, options: dict[str, Any], owner: str | None = None):
        """The record of ``options`` (the reference function's keyword arguments).

        Raises:
            TypeError: an option the family does not have, or a required option missing; names ``owner``.
        """
        names, required = cls._option_table()
        if not names.issuperset(options):
            unknown = [k for k in options if k not in names]
            raise TypeError(f"{owner or cls.__name__}() got unexpected keyword argument(s) "
                            f"{', '.join(map(repr, unknown))}; the {cls.family!r} options are "
                            f"{', '.join(cls.option_names())}")
        missing = [name for name in required if name not in options]
        if missing:
            raise TypeError(f"{owner or cls.__name__}() missing required keyword argument(s) "
                            f"{', '.join(map(repr, missing))}")
        return cls(**options)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def _option_table(cls) -> tuple[frozenset[str], tuple[str, ...]]:
        """``(every option name, the required ones)``, computed once per record class: ``from_options`` runs
        on every kernel call, where ``dataclasses.fields`` cost several microseconds."""
        table = cls.__dict__.get("_options_cache")
        if table is None:
            fields = dataclasses.fields(cls)
            table = (frozenset(f.name for f in fields),
                     tuple(f.name for f in fields if f.default is dataclasses.MISSING))
            type.__setattr__(cls, "_options_cache", table)
        return table

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of the reference function (values not copied)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        """A copy with some options changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def signature_parameters(cls) -> list[inspect.Parameter]:
        """The options as keyword-only :class:`inspect.Parameter` objects (reference defaults)."""
        out = []
        for f in dataclasses.fields(cls):
            default = _REQUIRED if f.default is dataclasses.MISSING else f.default
            out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                         annotation=f.type))
        return out


@dataclass(frozen=True, kw_only=True, eq=False)
class LIFParameters(NeuronParameters):
    """Options of the IF/LIF dynamics (:func:`multispike.neurons.lif_multistep`, algorithms.md §1).

    Attributes:
        v_threshold: θ (number or tensor broadcastable to one step; may require grad).
        v_init: initial membrane ``v(0)``.
        leak: multiplicative leak λ of ``leak_mode="post_reset"`` (1 gives IF).
        tau: time constant of the ``decay_*`` leak modes.
        leak_mode: ``"post_reset"``, ``"decay_input"`` or ``"decay_state"``.
        v_reset: ``None`` for a soft reset (subtract θ), else the hard-reset value.
        reset_leak: soft reset only; False gives the DIET/M-LIF paper form.
        fire_ge: fire on ``m >= θ`` (True) or ``m > θ``.
        surrogate: surrogate gradient object (``None``: ``Sigmoid(4)``).
        surrogate_form: ``"difference"`` (``m − θ``) or ``"normalized"`` (``m/θ − 1``).
        detach_reset: the reset term gets no gradient.
        payload: ``"spike"`` (emit s) or ``"threshold"`` (emit θ·s).
        store_v_seq: also return the post-reset membrane of every step.
    """

    family: ClassVar[str] = "lif"
    v_threshold: float | torch.Tensor = 1.0
    v_init: float | torch.Tensor = 0.0
    leak: float | torch.Tensor = 1.0
    tau: float | torch.Tensor = 2.0
    leak_mode: str = "post_reset"
    v_reset: float | None = None
    reset_leak: bool = True
    fire_ge: bool = True
    surrogate: Any = None
    surrogate_form: str = "difference"
    detach_reset: bool = False
    payload: str = "spike"
    store_v_seq: bool = False


@dataclass(frozen=True, kw_only=True, eq=False)
class LMHTParameters(NeuronParameters):
    """Options of the LM-HT / M-HT dynamics (:func:`multispike.neurons.lmht.lmht_multistep`, algorithms.md §2).

    Attributes:
        levels: L >= 1 (required).
        omega: T-GIM ``Ω`` ``[T, T]``, or ``None`` (M-HT).
        leak: λ (number or tensor; may require grad).
        v_threshold: θ > 0 (required; fixed).
        v_init: initial membrane.
        in_scale: factor on ``x`` before the mixing.
        leak_schedule: per-step leak ``[T]`` replacing ``leak``.
        detach_temporal: the leak term sees ``stopgrad(v(t−1))``.
        detach_reset: the reset gets no gradient.
        surrogate_width: w of the rectangle surrogate.
        store_v_seq: also return the post-reset membranes.
    """

    family: ClassVar[str] = "lmht"
    levels: int
    omega: torch.Tensor | None = None
    leak: float | torch.Tensor = 1.0
    v_threshold: float | torch.Tensor
    v_init: float | torch.Tensor = 0.0
    in_scale: float | torch.Tensor = 1.0
    leak_schedule: torch.Tensor | None = None
    detach_temporal: bool = True
    detach_reset: bool = True
    surrogate_width: float = 0.5
    store_v_seq: bool = False


@dataclass(frozen=True, kw_only=True, eq=False)
class MLIFParameters(NeuronParameters):
    """Options of the one-hot M-LIF dynamics (:func:`multispike.neurons.mlif.mlif_multistep`, algorithms.md §5).

    Attributes:
        lanes: S >= 1.
        v_threshold: θ > 0 (may require grad).
        leak: β (may require grad).
        v_init: initial membrane ``u(0)``.
        reset: ``"soft"`` or ``"hard"``.
        reset_leak: soft reset: True code form, False paper form.
        decay_input: SpikingJelly's ``decay_input`` charge.
        lane_bounds: ``"paper"`` or ``"floor"``.
        scaled: scaled lanes ``2^{s−S+1}``.
        surrogate: ``"paper_difference"``, ``"code_sum"`` or ``"fast_unscaled"``.
        shape: window shape (``"triangle"``, ``"sigmoid"`` or a :class:`SurrogateFunction`).
        gamma, alpha: triangle width γ and sigmoid sharpness α.
        fire_ge: lowest edge ``r >= 1``.
        detach_reset: the reset gets no gradient.
        lane_mask: per-lane weights ``[B, S, ...]`` on the emitted payload.
        return_lanes: also return the one-hot lanes.
        store_v_seq: also return the post-reset membranes.
    """

    family: ClassVar[str] = "mlif"
    lanes: int = 3
    v_threshold: float | torch.Tensor = 1.0
    leak: float | torch.Tensor = 1.0
    v_init: float | torch.Tensor = 0.0
    reset: str = "soft"
    reset_leak: bool = False
    decay_input: bool = False
    lane_bounds: str = "paper"
    scaled: bool = False
    surrogate: str = "paper_difference"
    shape: Any = "triangle"
    gamma: float = 0.3
    alpha: float = 4.0
    fire_ge: bool = False
    detach_reset: bool = False
    lane_mask: torch.Tensor | None = None
    return_lanes: bool = False
    store_v_seq: bool = False


def keyword_entry(record: type[NeuronParameters], impl: Callable, name: str, module: str, doc: str) -> Callable:
    """A function ``name(x_seq, state=None, **options)`` with the family reference's keyword signature that
    calls ``impl(x_seq, state, record.from_options(options))``.

    The kernel entry points are built this way, so that their signature is declared once (by the record) instead
    of once per backend; ``inspect.signature`` shows the options and their defaults.
    """
    def entry(x_seq, state=None, **options):
        return impl(x_seq, state, record.from_options(options, owner=name))

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = doc
    entry.__module__ = module
    params = [inspect.Parameter("x_seq", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor),
              inspect.Parameter("state", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    entry.__signature__ = inspect.Signature(params + record.signature_parameters())
    return entry
