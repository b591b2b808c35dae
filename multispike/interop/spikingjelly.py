"""SpikingJelly (2.0) interop: run an existing SpikingJelly model on multispike's neurons.

:func:`from_spikingjelly` replaces every ``IFNode``, ``LIFNode`` and ``ParametricLIFNode`` of a SpikingJelly model
by multispike's :class:`~multispike.IFNode`, :class:`~multispike.LIFNode` (both run by the fused CPU/Triton kernels
with ``backend="auto"``) and :class:`~multispike.neurons.ParametricLIFNode` (reference function). Spikes and
membranes are bit-identical to SpikingJelly's; gradients agree to float rounding (the surrogate derivatives are the
same formulas, evaluated in a different order).

Everything else in the model (SpikingJelly ``layer.*`` wrappers, containers) is left as it is, and SpikingJelly's
``functional.reset_net`` keeps working: it calls ``reset()`` on every module that has one (it logs a warning
because multispike's neurons are not SpikingJelly ``MemoryModule``s; :func:`multispike.reset_net` does the same
silently).

Example::

    from spikingjelly.activation_based import functional, layer, neuron
    net = nn.Sequential(layer.Linear(8, 4), neuron.LIFNode(tau=2.0))
    functional.set_step_mode(net, "m")
    fast = from_spikingjelly(net)          # a deep copy; pass inplace=True to modify net itself
"""
from __future__ import annotations

import copy

from torch import nn

from ..neurons.if_lif import IFNode, LIFNode
from ..neurons.plif import ParametricLIFNode
# convert_surrogate lives beside the surrogates it produces, so the SpikingJelly-compatible neurons can use it
# without importing this package (which imports them).
from ..neurons.surrogate import convert_spikingjelly_surrogate as convert_surrogate

__all__ = ["from_spikingjelly", "convert_surrogate", "SUPPORTED_NEURONS"]

SUPPORTED_NEURONS = ("IFNode", "LIFNode", "ParametricLIFNode")


def _import_spikingjelly():
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError as exc:  # pragma: no cover - exercised only without the peer
        raise ImportError("multispike.interop.spikingjelly needs SpikingJelly 2.0 (pip install --no-deps "
                          "spikingjelly loguru packaging; see multispike's 'interop' extra)") from exc
    return neuron, surrogate


def _check_float(value, what: str, node_name: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"from_spikingjelly: {node_name}.{what} must be a number, got {type(value).__name__}")
    return float(value)


def _common_kwargs(node, node_name: str, backend: str) -> dict:
    precision = getattr(node, "_neuron_precision", None)
    if precision is not None:
        raise ValueError(f"from_spikingjelly: {node_name} uses SpikingJelly's explicit neuron precision "
                         f"{precision!r} (CUDA Triton fp16/bf16 state); multispike computes in the input dtype")
    v_reset = node.v_reset
    return dict(v_threshold=_check_float(node.v_threshold, "v_threshold", node_name),
                v_reset=None if v_reset is None else _check_float(v_reset, "v_reset", node_name),
                surrogate_function=convert_surrogate(node.surrogate_function), detach_reset=bool(node.detach_reset),
                step_mode=node.step_mode, backend=backend, store_v_seq=bool(getattr(node, "store_v_seq", False)))


def _check_reset(node, node_name: str) -> None:
    v = getattr(node, "v", 0.0)
    start = 0.0 if node.v_reset is None else node.v_reset
    if not isinstance(v, (int, float)) or float(v) != float(start):
        raise ValueError(f"from_spikingjelly: {node_name} holds a membrane state; call "
                         f"spikingjelly.activation_based.functional.reset_net(model) before converting")


def convert_neuron(node, node_name: str = "neuron", backend: str = "auto") -> nn.Module:
    """The multispike neuron equivalent to one SpikingJelly ``IFNode``/``LIFNode``/``ParametricLIFNode``.

    Only the exact classes are converted (a subclass may change the dynamics); the node must hold no state
    (call ``functional.reset_net`` first) so the new module starts where SpikingJelly would.
    """
    neuron, _ = _import_spikingjelly()
    kind = type(node)
    if kind not in (neuron.IFNode, neuron.LIFNode, neuron.ParametricLIFNode):
        raise TypeError(f"from_spikingjelly: {node_name} is {kind.__module__}.{kind.__name__}; supported are "
                        f"exactly spikingjelly.activation_based.neuron.{SUPPORTED_NEURONS}")
    _check_reset(node, node_name)
    kw = _common_kwargs(node, node_name, backend)
    if kind is neuron.IFNode:
        new = IFNode(**kw)
    elif kind is neuron.LIFNode:
        new = LIFNode(tau=_check_float(node.tau, "tau", node_name), decay_input=bool(node.decay_input), **kw)
    else:
        kw["backend"] = "auto"  # PLIF runs its reference function on every device
        new = ParametricLIFNode.from_w(node.w.detach(), decay_input=bool(node.decay_input), **kw)
        new.w.requires_grad_(node.w.requires_grad)
    new.train(node.training)
    return new


def from_spikingjelly(model: nn.Module, *, inplace: bool = False, backend: str = "auto") -> nn.Module:
    """Replace the SpikingJelly ``IFNode``/``LIFNode``/``ParametricLIFNode`` neurons of ``model`` by multispike's.

    Args:
        model: a SpikingJelly model (any ``nn.Module`` tree); its neurons must be reset (no stored membrane).
        inplace: modify ``model`` itself instead of a deep copy.
        backend: backend of the new IF/LIF neurons (``"auto"``: the fused kernel where it supports the options).

    Returns:
        The converted model. Each new neuron keeps the old one's step mode, threshold, reset, surrogate,
        ``detach_reset``, ``store_v_seq`` and ``training`` flag; a PLIF keeps its learned ``w`` (same dtype).

    Raises:
        TypeError: a neuron of another SpikingJelly class (a subclass, ``QIFNode``, ...) or an untranslatable
            surrogate; ValueError: a neuron holding state or using SpikingJelly's explicit low-precision mode.
        LookupError: the model has no neuron to convert.
    """
    neuron, _ = _import_spikingjelly()
    targets = (neuron.IFNode, neuron.LIFNode, neuron.ParametricLIFNode)
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_spikingjelly: expected an nn.Module, got {type(model).__name__}")
    for name, m in model.named_modules():
        if isinstance(m, targets):
            _check_reset(m, name or "model")  # before the deep copy, which cannot copy a live autograd state
    if not inplace:
        model = copy.deepcopy(model)
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, targets):
                full = f"{parent_name}.{child_name}" if parent_name else child_name
                setattr(parent, child_name, convert_neuron(child, full, backend))
                replaced += 1
    if isinstance(model, targets):
        return convert_neuron(model, "model", backend)
    if replaced == 0:
        raise LookupError("from_spikingjelly: the model has no SpikingJelly IFNode/LIFNode/ParametricLIFNode")
    try:  # SpikingJelly caches the resettable modules of a model; the swap invalidates that list
        from spikingjelly.activation_based.functional import invalidate_reset_cache
        invalidate_reset_cache(model)
    except (ImportError, TypeError):  # pragma: no cover - older SpikingJelly without the cache
        pass
    return model
