"""``airbench94_cifar``: airbench94's network (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds") as a time-major zoo
model that QCFS/QAC quantizers and the LM-HT / mixed-timestep converters use unchanged.

Layout (widths ``(w0, w1, w2, w3)``, default airbench94's ``(24, 64, 256, 256)``)::

    stem   2x2 conv (no padding) 3->w0 + BN -> N                       32x32 -> 31x31
    block  3x3 conv + BN -> pool 2x2 -> N -> 3x3 conv + BN -> N       31 -> 15 -> 7 -> 3  (three blocks)
    head   global average pool -> FC (no bias) -> x logit_scale (1/9)

airbench94 pools between the conv and its BN (conv -> pool -> BN -> act). Here the pool sits between BN and the
neuron, which in eval mode is the same function (BN is a per-channel affine map: it commutes with average pools,
and with max pools while its scale is positive; the scale is fixed at 1 here) and keeps BN right after its conv,
where the converters fold it. The neuron then runs at the pooled resolution, as in airbench94.

Other airbench94 details reproduced: BN without a learnable scale (``bn_affine_weight=False``: weight fixed at 1,
bias learnable), BN momentum 0.4 in PyTorch's convention (airbench's 0.6) and eps 1e-12, Dirac ("identity") init
of the first ``in_channels`` filters of every 3x3 conv, and a whitened stem: :meth:`AirbenchNet.init_whitening`
sets the 2x2 filters to the eigenvectors of the training images' 2x2-patch covariance scaled by
``1/sqrt(λ + eps)``, paired with their negatives, and freezes them.

Differences, for conversion: average pools by default (``pool="max"`` gives airbench's max pools for the float
ANN; a max pool over spikes is not exact in an SNN), a global average pool instead of airbench's 3x3 max pool
before the classifier, and the activation is the model's neuron (GELU for airbench's ANN, QCFS/QAC to convert).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..layers import SeqToANNContainer
from .base import TimeMajorModel, build_model, resolve_input_size
from .registry import register_model

__all__ = ["AirbenchNet", "AIRBENCH94_WIDTHS", "LogitScale", "whitening_filters"]

#: airbench94's widths: (stem, block 1, block 2, block 3).
AIRBENCH94_WIDTHS = (24, 64, 256, 256)


class LogitScale(nn.Module):
    """Multiply by a constant (airbench94 scales its logits by 1/9). Linear, so every converter passes it through."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        if not (isinstance(scale, (int, float)) and scale > 0 and scale == scale and scale != float("inf")):
            raise ValueError(f"LogitScale: scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


@torch.no_grad()
def whitening_filters(images: torch.Tensor, count: int, eps: float = 5e-4, patch: int = 2) -> torch.Tensor:
    """``count`` whitening filters ``[count, C, patch, patch]`` from the ``patch x patch`` patches of ``images``.

    The eigenvectors of the patch covariance, largest eigenvalue first, each scaled by ``1/sqrt(λ + eps)``: the
    filter responses on these images are uncorrelated with variance ``λ/(λ + eps)`` (airbench94's ``init_whiten``).
    ``count`` is at most ``C·patch²``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"whitening_filters: expected float images [N, C, H, W], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}"
                         f"{'' if not isinstance(images, torch.Tensor) else ' ' + str(images.dtype)}")
    N, C, H, W = images.shape
    dim = C * patch * patch
    if not 1 <= count <= dim:
        raise ValueError(f"whitening_filters: count must be in [1, {dim}] (= C·patch² for C={C}, patch={patch}), "
                         f"got {count}")
    if H < patch or W < patch:
        raise ValueError(f"whitening_filters: images of {H}x{W} pixels have no {patch}x{patch} patch")
    if not torch.isfinite(images).all():
        raise ValueError("whitening_filters: the images contain NaN or infinite values")
    patches = images.double().unfold(2, patch, 1).unfold(3, patch, 1)        # N, C, H', W', p, p
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, dim)
    if patches.shape[0] <= dim:
        raise ValueError(f"whitening_filters: {patches.shape[0]} patches cannot estimate a {dim}x{dim} covariance; "
                         f"pass more images")
    patches = patches - patches.mean(0)
    cov = patches.T @ patches / (patches.shape[0] - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)                          # ascending
    order = torch.argsort(eigenvalues, descending=True)[:count]
    lam, vec = eigenvalues[order].clamp_min(0), eigenvectors[:, order]
    filters = (vec / torch.sqrt(lam + eps)).T                                  # count, dim
    return filters.reshape(count, C, patch, patch).to(images.dtype)


class AirbenchNet(TimeMajorModel):
    """airbench94's conv net, time-major (see the module docstring).

    Args:
        widths: ``(stem, block1, block2, block3)`` channels; the stem width must be even and at most 24 for
            :meth:`init_whitening` (filters and their negatives from 12 eigenvectors of 3-channel 2x2 patches).
        pool: ``"avg"`` (conversion-exact) or ``"max"`` (airbench94's, for the float ANN).
        bn_affine_weight: learn BN's scale (airbench94: no, fixed at 1).
        bn_momentum, bn_eps: BatchNorm settings (PyTorch's momentum convention).
        logit_scale: constant factor on the logits (airbench94: 1/9).
        dirac: Dirac-initialise the first ``in_channels`` filters of each 3x3 conv.
        whiten_frozen: :meth:`init_whitening` freezes the stem filters (airbench94 never trains them).
        bn_after_pool: airbench94's own order ``conv -> pool -> BN -> act`` (BN's batch statistics then come from
            the pooled map, which differs in training mode); the default ``conv -> BN -> pool -> act`` keeps BN
            next to its conv for the converters. For float-ANN experiments.
        head_pool: ``"avg"`` (global average pool, conversion-exact) or ``"max"`` (airbench94's 3x3 max pool over
            the final map, a global max for 32x32 inputs; float-ANN experiments).
        stem_bn: BN after the whitened stem conv (default); ``False``: airbench94's conv bias instead (zero at
            the start; airbench94 trains it at the weights' lr for 3 epochs, then freezes it: the trainer's
            ``bias_lr_scope: norm`` and ``freeze_after: {stem.0.bias: 3}``).
    """

    def __init__(self, *, num_classes: int = 10, T: int = 1, neuron: Any = "relu",
                 neuron_kwargs: dict[str, Any] | None = None, widths: Sequence[int] = AIRBENCH94_WIDTHS,
                 pool: str = "avg", bn_affine_weight: bool = False, bn_momentum: float = 0.4, bn_eps: float = 1e-12,
                 logit_scale: float = 1.0 / 9.0, dirac: bool = True, whiten_frozen: bool = True,
                 bn_after_pool: bool = False, head_pool: str = "avg", stem_bn: bool = True, input_size: int | tuple[int, ...] | None = None, in_channels: int | None = None,
                 neuron_defaults: dict[str, dict[str, Any]] | None = None, event_frames: str = "sequence") -> None:
        owner = "airbench94_cifar"
        size = resolve_input_size(input_size, in_channels, (3, 32, 32), owner)
        super().__init__(num_classes=num_classes, T=T, input_size=size, neuron=neuron, neuron_kwargs=neuron_kwargs,
                         neuron_defaults=neuron_defaults, event_frames=event_frames, owner=owner)
        widths = tuple(widths)
        if len(widths) != 4 or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise ValueError(f"{owner}: widths must be 4 positive ints (stem, block1, block2, block3), got {widths!r}")
        if pool not in ("avg", "max"):
            raise ValueError(f"{owner}: pool must be 'avg' or 'max', got {pool!r}")
        if head_pool not in ("avg", "max"):
            raise ValueError(f"{owner}: head_pool must be 'avg' or 'max', got {head_pool!r}")
        for name, flag in (("bn_after_pool", bn_after_pool), ("stem_bn", stem_bn)):
            if not isinstance(flag, bool):
                raise ValueError(f"{owner}: {name} must be true or false, got {flag!r}")
        if not 0.0 <= float(bn_momentum) <= 1.0 or not float(bn_eps) > 0:
            raise ValueError(f"{owner}: bn_momentum must be in [0, 1] and bn_eps > 0, got {bn_momentum!r}, {bn_eps!r}")
        self.widths, self.pool, self.whiten_frozen = widths, pool, bool(whiten_frozen)
        C, H, W = size

        def bn(ch: int) -> nn.BatchNorm2d:
            norm = nn.BatchNorm2d(ch, eps=bn_eps, momentum=bn_momentum)
            if not bn_affine_weight:
                norm.weight.requires_grad_(False)
            return norm

        def conv3(cin: int, cout: int) -> nn.Conv2d:
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            if dirac:   # airbench94: the first cin filters start as the identity (then trained)
                with torch.no_grad():
                    nn.init.dirac_(conv.weight[:min(cin, cout)])
            return conv

        w0, w1, w2, w3 = widths
        self.stem = (SeqToANNContainer(nn.Conv2d(C, w0, 2, padding=0, bias=False), bn(w0)) if stem_bn else
                     SeqToANNContainer(nn.Conv2d(C, w0, 2, padding=0, bias=True)))
        if not stem_bn:   # airbench94 starts its conv biases at zero
            nn.init.zeros_(self.stem[0].bias)
        H, W = H - 1, W - 1
        layers: list[nn.Module] = [self.make_neuron()]
        cin = w0
        for cout in (w1, w2, w3):
            H, W = H // 2, W // 2
            if H < 1 or W < 1:
                raise ValueError(f"{owner}: input {size[1]}x{size[2]} is too small (the map vanishes in a pool); "
                                 f"use at least 16x16")
            pool_layer = nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)
            if bn_after_pool:
                layers += [SeqToANNContainer(conv3(cin, cout), pool_layer, bn(cout))]
            else:
                layers += [SeqToANNContainer(conv3(cin, cout), bn(cout)), SeqToANNContainer(pool_layer)]
            layers += [self.make_neuron(),
                       SeqToANNContainer(conv3(cout, cout), bn(cout)), self.make_neuron()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.feature_shape = (w3, H, W)
        self.classifier = nn.Sequential(
            SeqToANNContainer(nn.AdaptiveAvgPool2d(1) if head_pool == "avg" else nn.AdaptiveMaxPool2d(1), nn.Flatten()),
            SeqToANNContainer(nn.Linear(w3, num_classes, bias=False), LogitScale(logit_scale)))

    def forward_body(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x_seq))

    @torch.no_grad()
    def fold_logit_scale(self) -> None:
        """Fold ``logit_scale`` into the readout weight and drop the :class:`LogitScale` (the same outputs), for tools
        that expect the network to end with a plain layer (NIR export). Not before training: the scale sets the
        readout's effective learning rate."""
        head = self.classifier[-1]
        if not isinstance(head[-1], LogitScale):
            return
        head[0].weight.mul_(head[-1].scale)
        self.classifier[-1] = SeqToANNContainer(head[0])

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> torch.Tensor:
        """Set the 2x2 stem filters from ``images`` (normalised training images ``[N, C, H, W]``; airbench94 uses
        5,000): the top ``w0/2`` whitening filters (:func:`whitening_filters`) and their negatives. Frozen when
        ``whiten_frozen``. Returns the eigen-filters used."""
        conv = self.stem[0]
        w0 = conv.out_channels
        if w0 % 2 or w0 // 2 > conv.in_channels * 4:
            raise ValueError(f"airbench94_cifar: init_whitening needs an even stem width <= {conv.in_channels * 8} "
                             f"(filters and their negatives), got {w0}")
        filters = whitening_filters(images.to(conv.weight.device), w0 // 2, eps)
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight.dtype))
        if self.whiten_frozen:
            conv.weight.requires_grad_(False)
        return filters


@register_model(input_size=(3, 32, 32), test_input_size=(3, 16, 16), cpu_scale=True, reference_macs=118.1e6,
                source="airbench94 (Jordan 2024, '94% on CIFAR-10 in 3.29 seconds'), time-major and conversion-ready",
                tags=("cpu", "qcfs", "lmht-hybrid", "qac", "speedrun"),
                notes="whitened 2x2 stem (init_whitening; the trainer's whiten_images) -> 3 blocks [3x3 conv + BN, "
                      "pool, N, 3x3 conv + BN, N] -> GAP -> FC without bias x 1/9. BN scale fixed at 1, Dirac init. "
                      "pool='avg' (default, exact conversion) or 'max' (airbench94's float ANN); widths=(24, 64, "
                      "256, 256). The speedrun recipe v2 trains it (configs/speedrun/airbench94_*.yaml).")
def airbench94_cifar(**kwargs: Any) -> AirbenchNet:
    """airbench94's network with any neuron (see :class:`AirbenchNet`)."""
    return build_model(AirbenchNet, dict(kwargs), "airbench94_cifar")
