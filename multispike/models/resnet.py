"""ResNet family (algorithms.md §7.2-§7.4): ResNet-18/34, MS-ResNet-18/34, ResNet-19, both ResNet-20s.

Notation as in §7 (``kCc`` conv + BN, ``N`` neuron, ``D`` dropout). All convs are bias-free and followed by BN.

* ``BasicBlock``: ``3Cp(stride)+BN -> N -> [D] -> 3Cp+BN -> (+ shortcut) -> N``; the shortcut is the identity
  or ``1Cp(stride)+BN`` when the shape changes. The addition is a :class:`~multispike.layers.ResidualAdd`.
* ``MSBlock`` (membrane shortcut, LMHT-C ``MSBlock``): ``out = conv1+BN(N(x)); out = conv2+BN(N(out)) + sc(x)``.
  Neurons act on the membrane-like sums; the stem output is not spiked before the first block and the head
  pools the last block's sum directly (as in LMHT-C).
* Stems: ``"cifar"`` ``3C64+BN+N``; ``"imagenet"`` ``7C64(/2)+BN+N+MaxPool3(/2)`` (``stem_pool="avg"`` for
  QAC/conversion); ``"diet"`` (ResNet20-DIET pre-process) ``3C64,N,D, 3C64,N,D, 3C64,N, AP2``.
* Heads: global average pool -> [FC -> N]* -> FCn, or (``resnet20_diet``) flatten 512·2·2 -> FCn without bias.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._validate import check_choice
from ..layers import ResidualAdd, SeqToANNContainer
from .base import TimeMajorModel, build_model, conv_bn, init_weights, make_dropout, resolve_input_size
from .registry import register_model
from .sources import DIET, NONE

__all__ = ["BasicBlock", "MSBlock", "ResNet", "STEMS", "BLOCKS"]

STEMS = ("cifar", "imagenet", "diet")
BLOCKS = ("basic", "ms")


class BasicBlock(nn.Module):
    """``3Cp(stride)+BN -> N -> [D] -> 3Cp+BN -> (+ shortcut) -> N`` on ``[T, B, C, H, W]``.

    Args:
        in_planes, planes, stride: channels in/out and the stride of the first conv.
        make_neuron: builds each activation module.
        dropout: a dropout module after the first neuron (DIET blocks), or ``None``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, make_neuron: Callable[[], nn.Module],
                 dropout: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_planes, planes, 3, stride)
        self.sn1 = make_neuron()
        self.dropout = dropout
        self.conv2 = conv_bn(planes, planes, 3, 1)
        self.downsample = conv_bn(in_planes, planes, 1, stride) if stride != 1 or in_planes != planes else None
        self.add = ResidualAdd()
        self.sn2 = make_neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.sn1(self.conv1(x))
        if self.dropout is not None:
            out = self.dropout(out)
        return self.sn2(self.add(self.conv2(out), identity))


class MSBlock(nn.Module):
    """Membrane-shortcut block: ``conv1+BN(N(x)) -> conv2+BN(N(.)) + shortcut(x)`` (no neuron after the add)."""

    def __init__(self, in_planes: int, planes: int, stride: int, make_neuron: Callable[[], nn.Module],
                 dropout: nn.Module | None = None) -> None:
        super().__init__()
        self.sn1 = make_neuron()
        self.conv1 = conv_bn(in_planes, planes, 3, stride)
        self.sn2 = make_neuron()
        self.dropout = dropout
        self.conv2 = conv_bn(planes, planes, 3, 1)
        self.downsample = conv_bn(in_planes, planes, 1, stride) if stride != 1 or in_planes != planes else None
        self.add = ResidualAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(self.sn1(x))
        out = self.sn2(out)
        if self.dropout is not None:
            out = self.dropout(out)
        return self.add(self.conv2(out), identity)


class ResNet(TimeMajorModel):
    """Configurable time-major ResNet.

    Args:
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        widths: channels per stage, e.g. ``(64, 128, 256, 512)``.
        strides: stride of each stage's first block, e.g. ``(1, 2, 2, 2)``.
        block: ``"basic"`` or ``"ms"`` (membrane shortcut).
        stem: ``"cifar"``, ``"imagenet"`` or ``"diet"`` (see the module docstring).
        stem_channels: stem width (64 everywhere except ResNet-20-CIFAR's 16).
        stem_pool: ``"max"`` or ``"avg"`` pooling of the ImageNet stem.
        hidden: hidden FC widths of the head (ResNet-19: ``(256,)``).
        global_pool: GAP before the head (True) or flatten the final map (ResNet20-DIET).
        classifier_bias: biases of the FC layers.
        dropout: dropout probability in the DIET stem and blocks (``None``: no dropout modules).
        dropout_mode: ``"independent"`` or ``"shared"`` (one mask for all timesteps).
        Other arguments: see :class:`multispike.models.vgg.VGG`.

    Modules: ``stem``, ``encoder``, ``pre`` (stem neuron/pool), ``stages``, ``head``.
    """

    def __init__(self, layers: Sequence[int], widths: Sequence[int], strides: Sequence[int], *,
                 block: str = "basic", stem: str = "cifar", stem_channels: int = 64, stem_pool: str = "max",
                 hidden: Sequence[int] = (), global_pool: bool = True, classifier_bias: bool = True,
                 dropout: float | None = None, dropout_mode: str = "independent", num_classes: int = 10, T: int = 1,
                 neuron: Any = "relu", neuron_kwargs: dict[str, Any] | None = None, in_channels: int | None = None,
                 input_size: int | tuple[int, ...] | None = None,
                 neuron_defaults: dict[str, dict[str, Any]] | None = None, event_frames: str = "sequence",
                 weight_init: str = "he", default_input_size=(3, 32, 32)) -> None:
        owner = type(self).__name__
        size = resolve_input_size(input_size, in_channels, tuple(default_input_size), owner)
        super().__init__(num_classes=num_classes, T=T, input_size=size, neuron=neuron, neuron_kwargs=neuron_kwargs,
                         neuron_defaults=neuron_defaults, event_frames=event_frames, owner=owner)
        check_choice(block, "block", BLOCKS, owner)
        check_choice(stem, "stem", STEMS, owner)
        check_choice(stem_pool, "stem_pool", ("max", "avg"), owner)
        if not (len(layers) == len(widths) == len(strides)) or not layers:
            raise ValueError(f"{owner}: layers, widths and strides need one entry per stage, got {list(layers)}, "
                             f"{list(widths)}, {list(strides)}")
        if stem == "diet" and block == "ms":
            raise ValueError(f"{owner}: the DIET stem is defined for basic blocks only")
        self.block_type, self.stem_type = block, stem
        ms = block == "ms"

        def drop() -> nn.Module | None:
            return None if dropout is None else make_dropout(dropout, dropout_mode)

        _, h, w = size
        pre: list[nn.Module] = []
        if stem == "imagenet":
            self.stem = conv_bn(size[0], stem_channels, 7, stride=2)
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            if not ms:
                pre.append(self.make_neuron())
            pool = nn.MaxPool2d(3, 2, 1) if stem_pool == "max" else nn.AvgPool2d(3, 2, 1)
            pre.append(SeqToANNContainer(pool))
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        elif stem == "diet":
            self.stem = conv_bn(size[0], stem_channels, 3)
            for i in range(2):
                pre += [self.make_neuron()] + ([drop()] if dropout is not None else [])
                pre.append(conv_bn(stem_channels, stem_channels, 3))
            pre += [self.make_neuron(), SeqToANNContainer(nn.AvgPool2d(2))]
            h, w = h // 2, w // 2
        else:
            self.stem = conv_bn(size[0], stem_channels, 3)
            if not ms:
                pre.append(self.make_neuron())
        self.pre = nn.Sequential(*pre)

        block_cls = MSBlock if ms else BasicBlock
        stages = []
        planes = stem_channels
        for n_blocks, width, stride in zip(layers, widths, strides):
            blocks = []
            for j in range(n_blocks):
                s = stride if j == 0 else 1
                blocks.append(block_cls(planes, width, s, self.make_neuron, drop()))
                planes = width
                h, w = (h - 1) // s + 1, (w - 1) // s + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        if h < 1 or w < 1:
            raise ValueError(f"{owner}: input {size[1]}x{size[2]} is too small for this network; use a larger input")
        self.feature_shape = (planes, h, w)

        head: list[nn.Module] = []
        if global_pool:
            head.append(SeqToANNContainer(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
            width = planes
        else:
            head.append(SeqToANNContainer(nn.Flatten()))
            width = planes * h * w
        for hid in hidden:
            head += [SeqToANNContainer(nn.Linear(width, hid, bias=classifier_bias)), self.make_neuron()]
            width = hid
        head.append(SeqToANNContainer(nn.Linear(width, num_classes, bias=classifier_bias)))
        self.head = nn.Sequential(*head)
        init_weights(self, weight_init)

    def forward_body(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.pre(x_seq)))


def _resnet(defaults, kw: dict[str, Any], owner: str, **model_args) -> ResNet:
    args = dict(model_args)
    args.update(kw)
    args.setdefault("neuron_defaults", defaults)
    return build_model(ResNet, args, owner)


_R18 = dict(layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), strides=(1, 2, 2, 2))
_R34 = dict(layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), strides=(1, 2, 2, 2))
_STEM_NOTE = ("stem='cifar' (3C64+BN+N, default) or stem='imagenet' (7C64/2+BN+N+MaxPool3/2; stem_pool='avg' for "
              "QAC/conversion) with input_size=224.")


@register_model(input_size=(3, 32, 32), test_input_size=(3, 8, 8), reference_macs=555.4e6,
                source="LMHT-C models/ResNet.py, QCFS-C; algorithms.md §7.2", tags=("lmht", "qac"),
                notes="BasicBlocks [2,2,2,2] at 64/128/256/512, GAP, FCn. " + _STEM_NOTE)
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (CIFAR stem by default; ``stem="imagenet"`` for 224×224)."""
    return _resnet(NONE, kwargs, "resnet18", **_R18)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 8, 8),
                source="LMHT-C models/ResNet.py, QCFS-C; algorithms.md §7.2", tags=("lmht",),
                notes="BasicBlocks [3,4,6,3] at 64/128/256/512, GAP, FCn. " + _STEM_NOTE)
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 (CIFAR stem by default; ``stem="imagenet"`` for 224×224)."""
    return _resnet(NONE, kwargs, "resnet34", **_R34)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 8, 8),
                source="LMHT-C models/ResNet.py MSBlock (LM-HT Table S1); algorithms.md §7.2", tags=("lmht",),
                notes="Membrane-shortcut blocks [2,2,2,2]; the stem output is not spiked and the head pools the last "
                      "block's sum directly (LMHT-C). " + _STEM_NOTE)
def ms_resnet18(**kwargs: Any) -> ResNet:
    """MS-ResNet-18: pre-activation membrane-shortcut ResNet-18."""
    return _resnet(NONE, kwargs, "ms_resnet18", block="ms", **_R18)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 8, 8),
                source="LMHT-C models/ResNet.py MSBlock (LM-HT ImageNet-1k ResNet-34); algorithms.md §7.2",
                tags=("lmht",),
                notes="Membrane-shortcut blocks [3,4,6,3]. LM-HT's ImageNet-1k model: stem='imagenet', "
                      "input_size=224, num_classes=1000. " + _STEM_NOTE)
def ms_resnet34(**kwargs: Any) -> ResNet:
    """MS-ResNet-34: pre-activation membrane-shortcut ResNet-34."""
    return _resnet(NONE, kwargs, "ms_resnet34", block="ms", **_R34)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 8, 8), reference_macs=2216.5e6,
                source="LMHT-C resnet19, TET-C resnet_models.py; algorithms.md §7.3", tags=("lmht", "tet", "qac"),
                notes="3C64+BN+N -> 128x3 (first block 1x1 shortcut 64->128, stride 1) -> 256x3 (/2) -> 512x2 (/2) -> "
                      "GAP -> FC(512->256) -> N -> FCn. 64-channel stem as in both codes (tdBN's original used 128). "
                      "LMHT-C's DVS variant: in_channels=2, strides=(2, 2, 2).")
def resnet19(**kwargs: Any) -> ResNet:
    """ResNet-19 (tdBN/TET/LM-HT), 64-channel stem, FC 512->256->n head."""
    kwargs.setdefault("strides", (1, 2, 2))
    return _resnet(NONE, kwargs, "resnet19", layers=(3, 3, 2), widths=(128, 256, 512), hidden=(256,))


@register_model(input_size=(3, 32, 32), test_input_size=(3, 8, 8), reference_macs=40.8e6,
                source="QCFS-C ResNet4Cifar (QCFS, LM-HT hybrid, QAC 'ResNet-20'); algorithms.md §7.4",
                tags=("qcfs", "lmht-hybrid", "qac"),
                notes="3C16+BN+N -> 3 blocks of 16 -> 3 of 32 (/2) -> 3 of 64 (/2) -> GAP -> FCn; 1x1 conv+BN "
                      "shortcuts where the shape changes. Not the same network as resnet20_diet.")
def resnet20_cifar(**kwargs: Any) -> ResNet:
    """The CIFAR ResNet-20 with 16/32/64 channels (QCFS, LM-HT hybrid, QAC)."""
    return _resnet(NONE, kwargs, "resnet20_cifar", layers=(3, 3, 3), widths=(16, 32, 64), strides=(1, 2, 2),
                   stem_channels=16)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 16, 16), reference_macs=215.7e6,
                source="MLIF-P A.3.1; MLIF-C RESNET_SNN (DIET/IIR-SNN ResNet-20); algorithms.md §7.4",
                tags=("mlif", "diet"),
                notes="Pre-process 3C64,N,D,3C64,N,D,3C64,N,AP2 -> 2 BasicBlocks each at 64, 128 (/2), 256 (/2), "
                      "512 (/2) with N -> D inside -> flatten 512x2x2 = 2048 -> FCn without bias; no global pool. "
                      "Convs without bias (BN kept; converters fold it). Dropout defaults to 0 (ANN stage); the "
                      "M-LIF SNN recipe uses dropout=0.2 (dropout_mode='shared', default). Not the same network "
                      "as resnet20_cifar.")
def resnet20_diet(**kwargs: Any) -> ResNet:
    """The DIET/IIR-SNN ResNet-20 with 64->512 channels and no global pooling (one-hot M-LIF)."""
    return _resnet(DIET, kwargs, "resnet20_diet", layers=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                   strides=(1, 2, 2, 2), stem="diet", global_pool=False, classifier_bias=False, dropout=0.0,
                   dropout_mode="shared")


@register_model(input_size=(3, 32, 32), test_input_size=(3, 8, 8), cpu_scale=True,
                source="multispike CPU-scale variant (not from a paper)", tags=("cpu",),
                notes="ResNet-8 for CIFAR: 3C16+BN+N -> one BasicBlock each at 16, 32 (/2), 64 (/2) -> GAP -> FCn "
                      "(12.5 M MACs). For demos, tests and CPU-scale recipes.")
def resnet8_cifar(**kwargs: Any) -> ResNet:
    """A small CIFAR ResNet (1 block per stage, 16/32/64 channels) for CPU runs."""
    return _resnet(NONE, kwargs, "resnet8_cifar", layers=(1, 1, 1), widths=(16, 32, 64), strides=(1, 2, 2),
                   stem_channels=16)
