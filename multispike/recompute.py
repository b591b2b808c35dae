"""Training memory: a BatchNorm whose output the next spiking neuron rebuilds in its backward instead of saving it.

In ``conv -> BN -> neuron`` autograd keeps two full-size float tensors per layer: BN's input ``h`` (its backward
needs it) and the neuron's input ``y = BN(h)`` (the fused kernels recompute the membrane from it). ``y`` is an
affine map of ``h`` per channel, so the neuron can keep a *recipe* - a reference to ``h`` (already kept by BN)
and the batch statistics, weight and bias - and rebuild ``y`` when its backward runs: one elementwise pass
instead of a stored activation (measured: benchmarks/memory_breakdown.py, ``snn_recompute_bn``).

Exactness: the forward computes ``y`` with :func:`bn_apply` and the rebuild calls the same function on the same
tensors, so the rebuilt input is bit-identical and the neuron's backward sees exactly the spikes of the forward
(a rebuilt input that differed in the last bit could flip a threshold crossing). BN's own gradient comes from
ATen's ``native_batch_norm_backward`` with the saved statistics. The values differ from ``nn.BatchNorm2d``'s only
by float rounding (its fused CPU kernel orders the operations differently); tests/test_recompute_bn.py.

The recipe travels as an attribute of the container's output tensor and is used only if that very tensor, not
modified in place since (version counter), reaches a fused CPU kernel (:func:`multispike.kernels._fused.run_planned`);
anything else simply saves the tensor as before.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["BNRecipe", "bn_apply", "batch_norm_with_recipe", "attach_recipe", "recipe_of", "can_recompute_bn"]

_ATTR = "_ms_bn_recipe"
_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)   # not SyncBatchNorm: its statistics are global


def _channel_shape(h: torch.Tensor) -> tuple[int, ...]:
    return (1, h.shape[1]) + (1,) * (h.dim() - 2)


def bn_apply(h: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, weight: torch.Tensor | None,
             bias: torch.Tensor | None) -> torch.Tensor:
    """``(h − mean)·invstd·weight + bias`` per channel (dim 1), as ``h·scale + shift`` in one ``addcmul``.

    Deterministic for given inputs, so calling it again on the same tensors rebuilds the output bit for bit."""
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    shape = _channel_shape(h)
    return torch.addcmul(shift.view(shape), h, scale.view(shape))


class BNRecipe:
    """What rebuilds one BN output: the input ``h``, batch mean and inverse std, weight, bias; once attached
    (:func:`attach_recipe`), the shape and version of the tensor it describes."""

    __slots__ = ("h", "mean", "invstd", "weight", "bias", "shape", "version")

    def __init__(self, h, mean, invstd, weight, bias) -> None:
        self.h, self.mean, self.invstd, self.weight, self.bias = h, mean, invstd, weight, bias
        self.shape, self.version = None, None   # of the tensor it is attached to (attach_recipe)

    def tensors(self) -> tuple:
        return self.h, self.mean, self.invstd, self.weight, self.bias

    @staticmethod
    def rebuild(tensors, shape) -> torch.Tensor:
        """The output again, from :meth:`tensors` (as saved by the consumer) and ``shape``."""
        with torch.no_grad():
            return bn_apply(*tensors).view(shape)


class _BatchNormFunction(torch.autograd.Function):
    """``y = bn_apply(h, mean, invstd, w, b)`` with BN's training-mode gradient (the statistics are functions of
    ``h``); saves ``h`` and the statistics, not ``y``."""

    @staticmethod
    def forward(ctx, h, weight, bias, mean, invstd, eps: float):
        ctx.save_for_backward(h, weight, mean, invstd)
        ctx.eps = eps
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return bn_apply(h, mean, invstd, weight, bias)

    @staticmethod
    def backward(ctx, g):
        h, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        gh, gw, gb = torch.ops.aten.native_batch_norm_backward(
            g.contiguous(memory_format=_format_of(h)), h, weight, None, None, mean, invstd, True, ctx.eps,
            [need[0], need[1] and ctx.has_weight, need[2] and ctx.has_bias])
        return gh, (gw if need[1] else None), (gb if need[2] else None), None, None, None


def _format_of(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def can_recompute_bn(bn: nn.Module, h: torch.Tensor) -> bool:
    """Whether :func:`batch_norm_with_recipe` applies: a plain BatchNorm in training mode on a float32/float64
    input outside autocast, with autograd on (and not compiling or tracing)."""
    if not isinstance(bn, _PLAIN_BN) or not bn.training or not torch.is_grad_enabled():
        return False
    if h.dtype not in (torch.float32, torch.float64) or h.dim() < 2 or h.numel() == 0:
        return False
    if torch.is_autocast_enabled(h.device.type):
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if bn.momentum is None and bn.track_running_stats and bn.num_batches_tracked is None:
        return False
    return h.shape[0] * (h.numel() // (h.shape[0] * h.shape[1])) > 1   # BN needs more than one value per channel


def batch_norm_with_recipe(bn: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, BNRecipe]:
    """Training-mode ``bn(h)`` (running statistics updated as ``nn.BatchNorm`` does) and the recipe that rebuilds
    it. Call only where :func:`can_recompute_bn` holds."""
    with torch.no_grad():
        tracked = bn.track_running_stats and bn.running_mean is not None
        momentum = 0.0
        if tracked:
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        # ATen's one-pass statistics (batch mean, biased variance) and the running update nn.BatchNorm applies
        # (unbiased variance); 3x faster on CPU than var_mean over the non-channel dims
        mean, var = torch.batch_norm_update_stats(h, bn.running_mean if tracked else None,
                                                  bn.running_var if tracked else None, momentum)
        invstd = torch.rsqrt(var + bn.eps)
    y = _BatchNormFunction.apply(h, bn.weight, bn.bias, mean, invstd, bn.eps)
    return y, BNRecipe(h, mean, invstd, bn.weight, bn.bias)


def attach_recipe(out: torch.Tensor, recipe: BNRecipe) -> torch.Tensor:
    """Mark ``out`` (a view of the BN output, e.g. ``[T, B, ...]``) as rebuildable by ``recipe``."""
    recipe.shape, recipe.version = tuple(out.shape), out._version
    setattr(out, _ATTR, recipe)
    return out


def recipe_of(x: torch.Tensor) -> BNRecipe | None:
    """The recipe attached to ``x`` if it still describes ``x`` (same shape, not modified in place), else None."""
    recipe = getattr(x, _ATTR, None)
    if recipe is None or recipe.shape != tuple(x.shape) or recipe.version != x._version:
        return None
    return recipe
