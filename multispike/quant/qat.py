"""Quantization-aware training preparation (algorithms.md §4.3 step 1): a ReLU/QCFS network -> a QAC-quantized ANN.

:func:`prepare_qat` replaces every ReLU (module or functional, found by tracing) and QCFS activation by a
:class:`~multispike.quant.qac.QACQuantizer`, max pooling by average pooling, and refuses nonlinearities a
quantizer cannot stand in for (:data:`UNSUPPORTED_ACTIVATIONS`); :class:`QATReport` lists what changed.
Split from :mod:`multispike.quant.qac` (which re-exports these names, with a deprecation warning).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

from torch import nn

from .qac import QACQuantizer
from .qcfs import QCFS

__all__ = ["prepare_qat", "QATReport", "find_functional_activations", "UNSUPPORTED_ACTIVATIONS"]

_MAXPOOL_TO_AVG = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
_ADAPTIVE_MAX_TO_AVG = {nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
                        nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d}
# Nonlinearities a quantizer cannot stand in for: converting them silently would change the network.
UNSUPPORTED_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Hardtanh,
                           nn.ReLU6, nn.PReLU, nn.Softplus, nn.Mish, nn.CELU, nn.SELU, nn.Hardsigmoid, nn.RReLU,
                           nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Threshold)
_FUNCTIONAL_RELU_NAMES = ("relu", "relu_")


@dataclass
class QATReport:
    """What :func:`prepare_qat` changed. ``replaced``: ``{"name", "old", "new"}`` per module;
    ``unsupported``: modules or functional calls that were left alone; ``notes``: anything to know."""

    model: str
    param: str
    replaced: list[dict] = field(default_factory=list)
    unsupported: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n_quantizers(self) -> int:
        return sum(1 for r in self.replaced if r["new"] == "QACQuantizer")

    def to_dict(self) -> dict:
        return asdict(self) | {"n_quantizers": self.n_quantizers}


def _named_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def find_functional_activations(model: nn.Module) -> list[dict] | None:
    """Functional ReLU calls (``F.relu``, ``torch.relu``, ``x.relu()``) in ``model.forward``, found with torch.fx.

    multispike's own time-major modules (containers, neurons, quantizers, ``ResidualAdd``) are treated as
    leaves; for zoo models whose ``forward`` validates the input layout, ``forward_body`` is traced instead.
    Returns ``None`` (and a warning is the caller's business) when the model cannot be traced symbolically,
    e.g. because its forward branches on tensor values.
    """
    import torch.fx as fx

    from ..layers import DirectEncoder, MeanOverTime, ResidualAdd, SeqToANNContainer, TemporalAlign
    from ..neurons.base import StepModule

    leaves = (SeqToANNContainer, StepModule, ResidualAdd, TemporalAlign, DirectEncoder, MeanOverTime, QACQuantizer,
              QCFS)

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    class _Body(nn.Module):
        # Zoo models (TimeMajorModel) validate the input layout in forward(); their layers live in forward_body().
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(self, x):
            return self.model.forward_body(x)

    prefix = ""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure only means "cannot check"
        if not callable(getattr(model, "forward_body", None)):
            return None
        try:
            graph = _Tracer().trace(_Body(model))
            prefix = "model."
        except Exception:  # noqa: BLE001
            return None
    sites = []
    for node in graph.nodes:
        target = node.target
        hit = (node.op == "call_function" and getattr(target, "__name__", "") in _FUNCTIONAL_RELU_NAMES) or \
              (node.op == "call_method" and target in _FUNCTIONAL_RELU_NAMES)
        if hit:
            stack = node.meta.get("nn_module_stack") or {}
            where = next(reversed(stack.values()))[0] if stack else ""
            where = where if isinstance(where, str) else ""
            where = where[len(prefix):] if prefix and where.startswith(prefix) else where
            sites.append({"node": node.name, "call": f"{getattr(target, '__module__', 'Tensor')}.{node.target}"
                          if node.op == "call_function" else f"Tensor.{target}", "module": where})
    return sites


def prepare_qat(model: nn.Module, param: str = "t_alpha", alpha: float = 8.0, t: float = 4.0,
                t_to_T: str = "round", t_max: int = 64, init_from_qcfs: bool = True, strict: bool = True,
                check_functional: bool = True) -> QATReport:
    """Prepare ``model`` in place for QAC quantization-aware training (§4.3 step 1, §3.1).

    * every ``nn.ReLU`` -> :class:`QACQuantizer` (``param``, ``alpha``, ``t``, ``t_to_T``, ``t_max``);
    * every :class:`~multispike.quant.qcfs.QCFS` -> QACQuantizer, initialised from its ϑ and levels
      (``alpha = ϑ``, ``t = levels``) when ``init_from_qcfs``;
    * every ``MaxPool{1,2,3}d`` -> ``AvgPool`` with the same kernel, stride, padding and ceil mode, and
      ``AdaptiveMaxPool`` -> ``AdaptiveAvgPool`` (a max over spike trains is not a max over rates).

    Args:
        strict: raise on constructs the quantizer cannot replace (other activations such as GELU,
            dilated or index-returning max pools, functional ReLU calls); with ``strict=False`` they are
            listed in ``report.unsupported`` and left alone.
        check_functional: trace the forward with torch.fx to find functional ReLU calls.

    Returns:
        A :class:`QATReport` listing every replaced module (``name``, ``old``, ``new``).

    Example::

        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2))
        >>> report = prepare_qat(net, t=3.0)
        >>> [(r["name"], r["new"]) for r in report.replaced]
        [('1', 'QACQuantizer'), ('2', 'AvgPool2d')]
    """
    if isinstance(model, (nn.ReLU, QCFS, *_MAXPOOL_TO_AVG, *_ADAPTIVE_MAX_TO_AVG)):
        raise ValueError(f"prepare_qat: the model itself is a {type(model).__name__}; wrap it in a container "
                         f"(nn.Sequential) so it can be replaced in place")
    # Validate the quantizer arguments once, before touching the model.
    QACQuantizer(param=param, alpha=alpha, t=t, t_to_T=t_to_T, t_max=t_max)
    report = QATReport(model=type(model).__name__, param=param)
    for name, m in list(model.named_modules()):
        if not name:
            continue
        new: nn.Module | None = None
        if isinstance(m, nn.ReLU):
            new = QACQuantizer(param=param, alpha=alpha, t=t, t_to_T=t_to_T, t_max=t_max)
        elif isinstance(m, QCFS):
            a0, t0 = (float(m.threshold.detach()), float(m.levels)) if init_from_qcfs else (alpha, t)
            if not 1.0 <= t0 <= t_max:
                raise ValueError(f"prepare_qat: QCFS {name!r} has levels={m.levels} outside [1, t_max={t_max}]; "
                                 f"raise t_max or use init_from_qcfs=False")
            new = QACQuantizer(param=param, alpha=a0, t=t0, t_to_T=t_to_T, t_max=t_max)
        elif type(m) in _MAXPOOL_TO_AVG:
            dil = m.dilation if isinstance(m.dilation, tuple) else (m.dilation,)
            if any(d != 1 for d in dil) or m.return_indices:
                report.unsupported.append({"name": name, "type": type(m).__name__,
                                           "why": "dilated or index-returning max pool has no AvgPool equivalent"})
                continue
            new = _MAXPOOL_TO_AVG[type(m)](m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode,
                                           count_include_pad=True)
        elif type(m) in _ADAPTIVE_MAX_TO_AVG:
            if m.return_indices:
                report.unsupported.append({"name": name, "type": type(m).__name__,
                                           "why": "index-returning adaptive max pool"})
                continue
            new = _ADAPTIVE_MAX_TO_AVG[type(m)](m.output_size)
        elif isinstance(m, UNSUPPORTED_ACTIVATIONS):
            report.unsupported.append({"name": name, "type": type(m).__name__,
                                       "why": "QAC replaces ReLU only; this nonlinearity has no IF equivalent"})
            continue
        if new is not None:
            # Keep the model's dtype/device for the new parameters (a float64 model stays float64).
            ref = next(m.parameters(), None)
            ref = next(model.parameters(), None) if ref is None else ref
            if ref is not None and ref.is_floating_point():
                new = new.to(device=ref.device, dtype=ref.dtype)
            parent, attr = _named_parent(model, name)
            setattr(parent, attr, new)
            report.replaced.append({"name": name, "old": type(m).__name__, "new": type(new).__name__})
    if check_functional:
        sites = find_functional_activations(model)
        if sites is None:
            msg = (f"prepare_qat: could not trace {type(model).__name__}.forward with torch.fx, so functional "
                   f"ReLU calls (F.relu, torch.relu) were not checked; use nn.ReLU modules")
            report.notes.append(msg)
            warnings.warn(msg, stacklevel=2)
        else:
            for s in sites:
                report.unsupported.append({"name": s["module"] or s["node"], "type": s["call"],
                                           "why": "functional ReLU: make it an nn.ReLU module (or use the generic "
                                                  "converter in multispike.convert.converter) so it is quantized"})
    if strict and report.unsupported:
        lines = "; ".join(f"{u['name']} ({u['type']}): {u['why']}" for u in report.unsupported)
        raise ValueError(f"prepare_qat: {type(model).__name__} contains constructs QAC cannot quantize: {lines}. "
                         f"Pass strict=False to leave them in place.")
    if report.n_quantizers == 0:
        report.notes.append("no ReLU or QCFS module found: nothing was quantized")
    return report
