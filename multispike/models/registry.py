"""Model registry in the style of timm: ``@register_model``, ``create_model``, ``list_models``, ``model_info``.

Every zoo entry is a factory function decorated with :func:`register_model`, which records it under the
function's name together with a :class:`ModelInfo` (input size, paper source, reference MAC count, notes).
``create_model(name, ...)`` resolves the name and builds the model with the neuron injected::

    >>> from multispike.models import create_model, list_models
    >>> net = create_model("vgg_small", num_classes=10, neuron="lif", T=2)
    >>> net.T, net.model_name
    (2, 'vgg_small')
    >>> "resnet20_cifar" in list_models("resnet20*")
    True
"""
from __future__ import annotations

import difflib
import fnmatch
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from torch import nn

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info", "is_model",
           "model_entrypoint"]


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a registered model (timm's ``default_cfg``, plus the paper it reproduces).

    Attributes:
        name: registry name.
        input_size: ``(C, H, W)`` of the paper's input (the default ``input_size`` of the factory).
        test_input_size: the smallest ``(C, H, W)`` the architecture accepts; the test suite uses it.
        input_layout: ``"image"`` (a static ``[B, C, H, W]`` image, direct encoding) or ``"events"``
            (time-major event frames ``[T, B, C, H, W]``). Every model accepts both ranks (see
            :class:`multispike.models.base.TimeMajorModel`); this names the data it was designed for.
        source: where the layer list comes from (paper, code file, ``algorithms.md`` section).
        reference_macs: multiply-accumulates of one sample at one timestep at ``input_size`` with the
            default ``num_classes`` (``algorithms.md`` §6.2), or ``None`` where no reference exists.
        reference_num_classes: the class count ``reference_macs`` refers to.
        default_neuron: the neuron used when ``create_model`` gets ``neuron=None``.
        cpu_scale: True for the small variants meant for CPU training, tests and demos.
        notes: free text (deviations from the sources, options).
    """

    name: str
    input_size: tuple[int, int, int]
    test_input_size: tuple[int, int, int]
    input_layout: str = "image"
    source: str = ""
    reference_macs: float | None = None
    reference_num_classes: int = 10
    default_neuron: str = "relu"
    cpu_scale: bool = False
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for saved configs and checkpoints)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["test_input_size"] = list(self.test_input_size)
        d["tags"] = list(self.tags)
        return d


_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_INFOS: dict[str, ModelInfo] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, **info: Any):
    """Register a model factory under its function name.

    Use bare (``@register_model``) or with :class:`ModelInfo` fields (``@register_model(input_size=(3, 32, 32),
    source="...")``). ``input_size`` defaults to ``(3, 32, 32)`` and ``test_input_size`` to ``input_size``.

    Raises:
        ValueError: the name is already registered, or an unknown metadata field is given.
    """
    unknown = set(info) - (set(ModelInfo.__dataclass_fields__) - {"name"})
    if unknown:
        raise ValueError(f"register_model: unknown metadata field(s) {sorted(unknown)}; valid fields: "
                         f"{sorted(set(ModelInfo.__dataclass_fields__) - {'name'})}")

    def decorate(func: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = func.__name__
        if name in _ENTRYPOINTS:
            raise ValueError(f"register_model: a model named {name!r} is already registered "
                             f"(by {_ENTRYPOINTS[name].__module__})")
        input_size = tuple(info.get("input_size", (3, 32, 32)))
        meta = dict(info, input_size=input_size, test_input_size=tuple(info.get("test_input_size", input_size)))
        _INFOS[name] = ModelInfo(name=name, **meta)
        _ENTRYPOINTS[name] = func
        module = sys.modules.get(func.__module__)
        if module is not None and hasattr(module, "__all__") and name not in module.__all__:
            module.__all__.append(name)
        return func

    return decorate(fn) if fn is not None else decorate


def _unknown_model_error(name: str) -> ValueError:
    names = list_models()
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    extra = ""
    if str(name).lower() == "resnet20":
        extra = (" There are two different ResNet-20s (algorithms.md §7.4): 'resnet20_cifar' (16/32/64 channels, "
                 "QCFS/LM-HT/QAC) and 'resnet20_diet' (64->512 channels, M-LIF).")
    elif str(name).lower() == "vgg16":
        extra = (" There are two VGG-16 variants (algorithms.md §7.1): 'vgg16_qcfs' (5 pools, FC 512) and "
                 "'vgg16_diet' (4 pools, FC 2048).")
    return ValueError(f"unknown model {name!r}.{extra}{hint} Registered models: {', '.join(names)}")


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    _ensure_loaded()
    return name in _ENTRYPOINTS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The factory function registered as ``name``."""
    _ensure_loaded()
    if name not in _ENTRYPOINTS:
        raise _unknown_model_error(name)
    return _ENTRYPOINTS[name]


def list_models(pattern: str | list[str] | None = None, exclude: str | list[str] | None = None,
                cpu_scale: bool | None = None) -> list[str]:
    """Sorted names of registered models.

    Args:
        pattern: a shell-style wildcard (``"resnet*"``) or a list of them; ``None`` lists everything.
        exclude: wildcard(s) to drop from the result.
        cpu_scale: keep only the small CPU variants (True) or only the paper-scale models (False).
    """
    _ensure_loaded()
    names = sorted(_ENTRYPOINTS)
    if pattern is not None:
        pats = [pattern] if isinstance(pattern, str) else list(pattern)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    if exclude is not None:
        pats = [exclude] if isinstance(exclude, str) else list(exclude)
        names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in pats)]
    if cpu_scale is not None:
        names = [n for n in names if _INFOS[n].cpu_scale == cpu_scale]
    return names


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model (raises ``ValueError`` listing the valid names)."""
    _ensure_loaded()
    if name not in _INFOS:
        raise _unknown_model_error(name)
    return _INFOS[name]


def create_model(name: str, num_classes: int = 10, neuron: Any = None, T: int = 1, in_channels: int | None = None,
                 neuron_kwargs: dict[str, Any] | None = None, **model_kw: Any) -> nn.Module:
    """Build a registered model with the activation/neuron injected.

    Args:
        name: a registered name (see :func:`list_models`).
        num_classes: classifier outputs.
        neuron: a registered neuron name (``relu``, ``qcfs``, ``qac``, ``if``, ``lif``, ``lmht``, ``mlif``), a
            neuron class or a ``functools.partial``. ``None`` uses the model's ``default_neuron`` (``"relu"``
            for every CNN, ``"lif"`` for the spike-driven transformer).
        T: timesteps of direct encoding (and of neurons with a T×T T-GIM). ``T = 1`` with an ANN activation
            is the plain ANN.
        in_channels: input channels; ``None`` takes the model's ``input_size`` (3 for images, 2 for DVS).
        neuron_kwargs: constructor arguments for every neuron, merged over the model's per-source defaults
            (e.g. the SDT LIF's τ = 2 and hard reset, TET's decay 0.5; see each model's docstring).
        **model_kw: architecture options of the model (e.g. ``dropout``, ``input_size``, ``stem``).

    Returns:
        The model, a :class:`~multispike.models.base.TimeMajorModel`, with ``model_name``, ``model_info`` and
        ``create_kwargs`` attributes for checkpoints and saved configs.

    Raises:
        ValueError: unknown model (lists the registered ones), unknown neuron (lists the registered ones),
            an unknown architecture option or neuron keyword (names it and the valid ones).
    """
    fn = model_entrypoint(name)
    info = _INFOS[name]
    if neuron is None:
        neuron = info.default_neuron
    model = fn(num_classes=num_classes, neuron=neuron, T=T, in_channels=in_channels, neuron_kwargs=neuron_kwargs,
               **model_kw)
    model.model_name = name
    model.model_info = info
    model.create_kwargs = dict(num_classes=num_classes, neuron=neuron if isinstance(neuron, str) else repr(neuron),
                               T=T, in_channels=model.in_channels, neuron_kwargs=dict(neuron_kwargs or {}),
                               **model_kw)
    return model


_LOADED = False


def _ensure_loaded() -> None:
    """Import the model modules so their ``@register_model`` decorators run (once)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from . import airbench, digits, resnet, transformer, vgg, vggsnn  # noqa: F401
