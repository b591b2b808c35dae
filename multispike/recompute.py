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

Residual blocks (``BN(conv(s)) + shortcut -> neuron``, :class:`multispike.layers.ResidualAdd`): the sum gets an
:class:`AddRecipe` - the BN recipe plus the shortcut, which the block keeps anyway (the spikes its first conv
saves, or the uint8 copy ``spike_storage="bytes"`` made of them, or a downsampling BN's recipe) - so the neuron
after the addition saves no copy either.

The recipe travels as an attribute of the container's output tensor and is used only if that very tensor, not
modified in place since (version counter), reaches a fused CPU kernel (:func:`multispike.kernels._fused.run_planned`);
anything else simply saves the tensor as before.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["BNRecipe", "AddRecipe", "add_with_recipe", "packed_copy_of", "PACKED_COPY_ATTR", "bn_apply", "batch_norm_with_recipe", "attach_recipe", "recipe_of", "can_recompute_bn"]

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
        """What the consumer saves (``save_for_backward``) in place of the output."""
        return self.h, self.mean, self.invstd, self.weight, self.bias

    def rebuilder(self) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
        """A function of :meth:`tensors` (as saved) that returns the output again; holds no tensor itself."""
        shape = self.shape

        def rebuild(saved):
            with torch.no_grad():
                return bn_apply(*saved).view(shape)
        return rebuild


class AddRecipe:
    """What rebuilds a residual sum ``x + shortcut`` (:class:`multispike.layers.ResidualAdd`) whose ``x`` is a BN
    output with a :class:`BNRecipe`: that recipe, and the shortcut as a :class:`BNRecipe` (a downsampling
    conv + BN), as an exact ``uint8`` copy (spikes already packed by ``spike_storage="bytes"``), or as the tensor
    itself (a spike tensor the next conv keeps anyway). Rebuilt with the same operation in the same order as the
    forward's ``x + shortcut``, so bit for bit."""

    __slots__ = ("x", "shortcut", "shortcut_dtype", "shape", "version")

    def __init__(self, x: BNRecipe, shortcut: "BNRecipe | torch.Tensor", shortcut_dtype: torch.dtype | None = None):
        self.x, self.shortcut = x, shortcut
        self.shortcut_dtype = shortcut_dtype   # set when ``shortcut`` is the uint8 copy of a tensor of this dtype
        self.shape, self.version = None, None

    def tensors(self) -> tuple:
        tail = self.shortcut.tensors() if isinstance(self.shortcut, BNRecipe) else (self.shortcut,)
        return self.x.tensors() + tail

    def rebuilder(self) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
        rebuild_x, n_x = self.x.rebuilder(), len(self.x.tensors())
        if isinstance(self.shortcut, BNRecipe):
            rebuild_s = self.shortcut.rebuilder()
        elif self.shortcut_dtype is not None:
            dtype = self.shortcut_dtype

            def rebuild_s(saved):
                q = saved[0]
                return torch.empty_strided(q.shape, q.stride(), dtype=dtype, device=q.device).copy_(q)
        else:
            def rebuild_s(saved):
                return saved[0]

        def rebuild(saved):
            with torch.no_grad():
                return rebuild_x(saved[:n_x]) + rebuild_s(saved[n_x:])
        return rebuild


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


def attach_recipe(out: torch.Tensor, recipe: "BNRecipe | AddRecipe") -> torch.Tensor:
    """Mark ``out`` (e.g. the ``[T, B, ...]`` view of a BN output) as rebuildable by ``recipe``."""
    recipe.shape, recipe.version = tuple(out.shape), out._version
    setattr(out, _ATTR, recipe)
    return out


def recipe_of(x: torch.Tensor) -> "BNRecipe | AddRecipe | None":
    """The recipe attached to ``x`` if it still describes ``x`` (same shape, not modified in place), else None."""
    recipe = getattr(x, _ATTR, None)
    if recipe is None or recipe.shape != tuple(x.shape) or recipe.version != x._version:
        return None
    return recipe


PACKED_COPY_ATTR = "_ms_uint8_copy"


def packed_copy_of(t: torch.Tensor) -> torch.Tensor | None:
    """The exact ``uint8`` copy that a :class:`multispike.layers.SeqToANNContainer` with ``spike_storage="bytes"``
    saved of its input ``t`` (attribute ``PACKED_COPY_ATTR``; same shape, ``t`` not modified since), or None. A
    residual addition reuses it to keep its shortcut in a quarter of the bytes (:func:`add_with_recipe`)."""
    entry = getattr(t, PACKED_COPY_ATTR, None)
    if entry is None:
        return None
    q, version = entry
    return q if version == t._version and q.shape == t.shape else None


def add_with_recipe(x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``x + shortcut``, marked rebuildable (:class:`AddRecipe`) when ``x`` carries a :class:`BNRecipe`, autograd is
    on and the shortcut has ``x``'s shape: the next fused neuron then saves no copy of the sum. The shortcut is
    referenced through its own BN recipe, its exact uint8 copy (:func:`packed_copy_of`), or
    itself - never through another residual sum, whose rebuild would chain back through the whole network."""
    out = x + shortcut
    if not torch.is_grad_enabled() or not out.requires_grad or shortcut.shape != x.shape or \
            torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return out
    rx = recipe_of(x)
    if not isinstance(rx, BNRecipe):
        return out
    rs = recipe_of(shortcut)
    if isinstance(rs, BNRecipe):
        recipe = AddRecipe(rx, rs)
    else:
        q = packed_copy_of(shortcut)
        recipe = AddRecipe(rx, shortcut) if q is None else AddRecipe(rx, q, shortcut.dtype)
    return attach_recipe(out, recipe)
