"""Exact per-input fan-out of convolutions and pooling windows, and exact sum pooling of event maps.

The fan-out of an input element is the number of (output element, kernel tap) pairs that read it. Near a
border it is smaller than ``C_out·k²/stride²`` because taps that fall into the zero padding read nothing.
Following sinabs (``synopcounter.py``), the map is a transposed convolution of ones; because the count
factorises over channels and spatial axes it is computed axis by axis (exact, and far cheaper than one
float64 convolution of the layer's size). Padding modes that read real inputs in the pad (reflect,
circular, replicate) are counted by enumerating the (output, tap) pairs of each axis. Pool windows are
counted by differentiating a sum pool of ones. Every count is an exact integer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv_fanout", "avgpool_fanout", "adaptive_windows", "adaptive_fanout", "sum_pool", "adaptive_sum_pool"]

_DT = torch.float64


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _axis_counts(n: int, k: int, s: int, d: int, pad_left: int, n_out: int, mode: str) -> torch.Tensor:
    """Connections per input index along one axis, for padding modes that read real inputs in the pad
    (reflect, circular, replicate): loop over the ``n_out·k`` (output, tap) pairs."""
    counts = torch.zeros(n, dtype=_DT)
    for o in range(n_out):
        for t in range(k):
            i = o * s - pad_left + t * d
            if not 0 <= i < n:
                if mode == "zeros":
                    continue
                i = i % n if mode == "circular" else min(max(i, 0), n - 1) if mode == "replicate" else \
                    (-i if i < 0 else 2 * (n - 1) - i)
            counts[i] += 1
    return counts


def conv_fanout(conv: nn.Conv1d | nn.Conv2d, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Fan-out of every input element of ``conv`` for one sample of shape ``in_shape = (C_in, *spatial)``.

    Returns a float64 tensor of shape ``in_shape`` on the layer's device; ``fanout.sum()`` is the number of
    real connections (the dense MACs minus the taps that read padding).

    The count factorises: every input channel feeds ``C_out/groups`` output channels, and along each spatial
    axis the number of (output position, tap) pairs reading index i is the transposed convolution of ones
    along that axis. So the map is ``(C_out/groups) · ⊗_axes conv_transpose1d(1, 1)`` - sinabs' transposed
    convolution of ones, computed axis by axis instead of as one full float64 convolution.

    Example::

        >>> conv = nn.Conv2d(1, 1, 3, padding=1)
        >>> conv_fanout(conv, (1, 3, 3))[0].tolist()
        [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]
    """
    nd = conv.weight.dim() - 2
    if len(in_shape) != nd + 1:
        raise ValueError(f"conv_fanout: in_shape must be (C_in, {nd} spatial dims), got {tuple(in_shape)}")
    if in_shape[0] != conv.in_channels:
        raise ValueError(f"conv_fanout: in_shape has {in_shape[0]} channels, {conv} expects {conv.in_channels}")
    k, s, d = _tuple(conv.kernel_size, nd), _tuple(conv.stride, nd), _tuple(conv.dilation, nd)
    spatial = tuple(in_shape[1:])
    if isinstance(conv.padding, str):  # 'valid' or 'same' (stride 1): PyTorch puts the smaller half left
        left = [0] * nd if conv.padding == "valid" else [di * (ki - 1) // 2 for ki, di in zip(k, d)]
        total = [0] * nd if conv.padding == "valid" else [di * (ki - 1) for ki, di in zip(k, d)]
    else:
        left = list(_tuple(conv.padding, nd))
        total = [2 * p for p in left]
    out = [(n + tp - di * (ki - 1) - 1) // si + 1 for n, tp, ki, si, di in zip(spatial, total, k, s, d)]
    if min(out) < 1:
        raise ValueError(f"conv_fanout: input {tuple(in_shape)} is smaller than the kernel of {conv}")
    axes = []
    for n, o, ki, si, di, pl, tp in zip(spatial, out, k, s, d, left, total):
        if conv.padding_mode == "zeros" and tp == 2 * pl:
            # output_padding restores the input length that integer division dropped (always < stride).
            op = n - ((o - 1) * si - 2 * pl + di * (ki - 1) + 1)
            axes.append(F.conv_transpose1d(torch.ones(1, 1, o, dtype=_DT), torch.ones(1, 1, ki, dtype=_DT),
                                           stride=si, padding=pl, output_padding=op, dilation=di)[0, 0])
        else:
            axes.append(_axis_counts(n, ki, si, di, pl, o, conv.padding_mode))
    fan = axes[0]
    for a in axes[1:]:
        fan = torch.outer(fan.flatten(), a).view(*fan.shape, a.numel())
    fan = fan * (conv.out_channels // conv.groups)
    return fan.expand(in_shape[0], *spatial).clone().to(conv.weight.device)


def _pool2d_args(pool: nn.AvgPool1d | nn.AvgPool2d) -> tuple:
    if isinstance(pool, nn.AvgPool1d):
        k, s, p = (_tuple(pool.kernel_size, 1)[0], _tuple(pool.stride, 1)[0], _tuple(pool.padding, 1)[0])
        return (1, k), (1, s), (0, p)
    return _tuple(pool.kernel_size, 2), _tuple(pool.stride if pool.stride is not None else pool.kernel_size, 2), \
        _tuple(pool.padding, 2)


def sum_pool(pool: nn.AvgPool1d | nn.AvgPool2d, x: torch.Tensor) -> torch.Tensor:
    """Window *sums* (not means) of ``x`` with the geometry of ``pool``: ``[N, C, *spatial]`` in and out.

    Used to carry unit events through an average pool: an averaged spike is ``1/k²`` of a spike, so
    downstream it costs exactly what the events in its window cost with pre-scaled weights.
    """
    k, s, p = _pool2d_args(pool)
    one_d = isinstance(pool, nn.AvgPool1d)
    x2 = x.unsqueeze(-2) if one_d else x
    y = F.avg_pool2d(x2, k, s, p, ceil_mode=pool.ceil_mode, count_include_pad=True, divisor_override=1)
    return y.squeeze(-2) if one_d else y


def avgpool_fanout(pool: nn.AvgPool1d | nn.AvgPool2d, in_shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Number of pooling windows that contain each input element (float64, shape ``in_shape``)."""
    x = torch.ones(1, *in_shape, dtype=_DT, device=device, requires_grad=True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(sum_pool(pool, x).sum(), x)
    return g[0]


def adaptive_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive-pool windows along one axis: ``[⌊i·n/o⌋, ⌈(i+1)·n/o⌉)`` for i < o."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def _membership(n_in: int, n_out: int, device) -> torch.Tensor:
    m = torch.zeros(n_out, n_in, dtype=_DT, device=device)
    for i, (a, b) in enumerate(adaptive_windows(n_in, n_out)):
        m[i, a:b] = 1.0
    return m


def _adaptive_out(pool: nn.Module, spatial: tuple[int, ...]) -> tuple[int, ...]:
    size = _tuple(pool.output_size, len(spatial))
    return tuple(n if o is None else int(o) for n, o in zip(spatial, size))


def adaptive_fanout(pool: nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d, in_shape: tuple[int, ...],
                    device=None) -> torch.Tensor:
    """Number of adaptive-pool windows containing each input element (windows may overlap)."""
    spatial = tuple(in_shape[1:])
    out = _adaptive_out(pool, spatial)
    counts = [_membership(n, o, device).sum(0) for n, o in zip(spatial, out)]
    fan = counts[0] if len(counts) == 1 else torch.outer(counts[0], counts[1])
    return fan.expand(in_shape[0], *spatial).clone()


def adaptive_sum_pool(pool: nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d, x: torch.Tensor) -> torch.Tensor:
    """Window sums of an adaptive average pool, computed exactly with 0/1 membership matrices."""
    spatial = tuple(x.shape[-(2 if isinstance(pool, nn.AdaptiveAvgPool2d) else 1):])
    out = _adaptive_out(pool, spatial)
    mats = [_membership(n, o, x.device) for n, o in zip(spatial, out)]
    xd = x.to(_DT)
    if len(mats) == 1:
        y = torch.einsum("...h,oh->...o", xd, mats[0])
    else:
        y = torch.einsum("...hw,ih,jw->...ij", xd, mats[0], mats[1])
    return y.to(x.dtype)
