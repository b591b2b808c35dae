"""VGG family (algorithms.md §7.1, §7.5) and the CPU-scale ``vgg_small``.

Layer notation as in §7: ``kCc`` conv + BN, ``N`` neuron, ``D`` dropout, ``AP2`` 2×2 average pooling.

* ``vgg16_qcfs`` (QCFS-C / LMHT-C ``ann_models/VGG.py`` / QAC, CIFAR): five blocks
  ``[64,64] [128,128] [256,256,256] [512,512,512] [512,512,512]``, each conv ``3Cc(bias)+BN+N+D``, each block
  ends with AP2 -> ``Flatten(512) -> FC4096 -> N -> D -> FC4096 -> N -> D -> FCn``. 332.1 M MACs at 32×32. On
  ImageNet (``input_size=224``) the first FC is 512·7·7 -> 4096 (15.47 G MACs).
* ``vgg16_diet`` (DIET / IIR-SNN / M-LIF, CIFAR): the same 13 convs with only **4** pools (map ends at 2×2×512),
  convs without bias (BN, later folded), ``D`` after every conv except where a pool follows, classifier
  ``FC(2048->4096) + N + D -> FC4096 + N + D -> FCn`` without biases. 338.4 M MACs (first layer 1.77 M).
* ``vgg13`` (LM-HT SNN VGG-13, ImageNet-200 / Tiny-ImageNet 64×64): ``[64,64,AP2] [128,128,AP2] [256,256,AP2]
  [512,512,512,AP2] [512, GAP] -> FCn``; every conv has a bias and is followed by BN, N and D (10 convs).
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import nn

from ..layers import SeqToANNContainer
from .base import TimeMajorModel, build_model, conv_bn, init_weights, make_dropout, resolve_input_size
from .registry import register_model
from .sources import DIET, NONE

__all__ = ["VGG", "CFG_VGG16_QCFS", "CFG_VGG16_DIET", "CFG_VGG13", "CFG_VGG_SMALL", "AIRBENCH_WIDTHS", "airbench_cfg"]

# A config item is a conv (int channels, or (channels, stride)) or "A" (2×2 average pooling).
CfgItem = Union[int, tuple[int, int], str]

CFG_VGG16_QCFS: list[CfgItem] = [64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A",
                                 512, 512, 512, "A"]
CFG_VGG16_DIET: list[CfgItem] = [64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512]
CFG_VGG13: list[CfgItem] = [64, 64, "A", 128, 128, "A", 256, 256, "A", 512, 512, 512, "A", 512]
CFG_VGG_SMALL: list[CfgItem] = [32, 32, "A", 64, 64, "A", 128, "A"]


class VGG(TimeMajorModel):
    """Plain conv stack + classifier, configured by a list (the whole VGG/VGGSNN family).

    Args:
        cfg: conv channels (``int`` or ``(channels, stride)``) and ``"A"`` (2×2 pool) in order.
        num_classes, T, neuron, neuron_kwargs: see :func:`multispike.models.create_model`.
        in_channels: input channels (``None``: ``input_size``'s).
        input_size: ``(C, H, W)``, ``(H, W)`` or an int side; fixes the flatten size of the classifier.
        conv_bias: conv layers have a bias (QCFS, LM-HT, TET) or not (DIET, where BN is folded into them).
        hidden: widths of the hidden FC layers (``FC -> N -> D`` each), e.g. ``(4096, 4096)``.
        classifier_bias: biases in the FC layers (False for DIET).
        global_pool: global average pooling before the classifier (VGG-13) instead of flattening the map.
        dropout: dropout probability; ``None`` builds no dropout modules at all (VGGSNN's exact layer list).
            With a float (even 0) there is a dropout module after every conv and hidden FC, so state-dict
            keys do not depend on the rate.
        dropout_mode: ``"independent"`` (new mask each step) or ``"shared"`` (one mask per sample for all steps).
        pool_replaces_dropout: no dropout after a conv that a pool follows (DIET's layer list).
        pool: ``"avg"`` (conversion-friendly; used by every source's SNN) or ``"max"``.
        neuron_defaults: per-source neuron defaults (:mod:`multispike.models.sources`).
        event_frames: ``"sequence"`` or ``"mean"`` for event input (see :class:`TimeMajorModel`).
        weight_init: ``"he"`` or ``"trunc_normal"``.

    Modules: ``stem`` (first conv+BN), ``encoder``, ``features`` (first neuron onwards), ``classifier``.
    """

    def __init__(self, cfg: Sequence[CfgItem], *, num_classes: int = 10, T: int = 1, neuron: Any = "relu",
                 neuron_kwargs: dict[str, Any] | None = None, in_channels: int | None = None,
                 input_size: int | tuple[int, ...] | None = None, conv_bias: bool = True,
                 hidden: Sequence[int] = (), classifier_bias: bool = True, global_pool: bool = False,
                 dropout: float | None = 0.0, dropout_mode: str = "independent", pool_replaces_dropout: bool = False,
                 pool: str = "avg", neuron_defaults: dict[str, dict[str, Any]] | None = None,
                 event_frames: str = "sequence", weight_init: str = "he", default_input_size=(3, 32, 32)) -> None:
        owner = type(self).__name__
        size = resolve_input_size(input_size, in_channels, tuple(default_input_size), owner)
        super().__init__(num_classes=num_classes, T=T, input_size=size, neuron=neuron, neuron_kwargs=neuron_kwargs,
                         neuron_defaults=neuron_defaults, event_frames=event_frames, owner=owner)
        if pool not in ("avg", "max"):
            raise ValueError(f"{owner}: pool must be 'avg' or 'max', got {pool!r}")
        items = list(cfg)
        if not items or not isinstance(items[0], (int, tuple)):
            raise ValueError(f"{owner}: cfg must start with a conv layer, got {items[:1]}")
        self.cfg = items

        def make_pool() -> nn.Module:
            return SeqToANNContainer(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))

        layers: list[nn.Module] = []
        channels, h, w = size
        stem = None
        for i, item in enumerate(items):
            if item == "A":
                layers.append(make_pool())
                h, w = h // 2, w // 2
                continue
            if isinstance(item, str):
                raise ValueError(f"{owner}: unknown cfg item {item!r}; use an int (conv channels), (channels, stride) "
                                 f"or 'A' (2x2 pool)")
            out, stride = (item, 1) if isinstance(item, int) else item
            unit = conv_bn(channels, out, 3, stride=stride, bias=conv_bias)
            if stem is None:
                stem = unit
            else:
                layers.append(unit)
            h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
            channels = out
            layers.append(self.make_neuron())
            next_is_pool = i + 1 < len(items) and items[i + 1] == "A"
            if dropout is not None and not (pool_replaces_dropout and next_is_pool):
                layers.append(make_dropout(dropout, dropout_mode))
            if h < 1 or w < 1:
                raise ValueError(f"{owner}: input {size[1]}x{size[2]} is too small for this network (the map "
                                 f"vanishes after cfg item {i}); use a larger input_size")
        if h < 1 or w < 1:
            raise ValueError(f"{owner}: input {size[1]}x{size[2]} is too small for this network (the map vanishes "
                             f"after the last pool); use a larger input_size")
        self.stem = stem
        self.features = nn.Sequential(*layers)

        head: list[nn.Module] = []
        if global_pool:
            head.append(SeqToANNContainer(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
            width = channels
        else:
            head.append(SeqToANNContainer(nn.Flatten()))
            width = channels * h * w
        self.feature_shape = (channels, h, w)
        for hid in hidden:
            head.append(SeqToANNContainer(nn.Linear(width, hid, bias=classifier_bias)))
            head.append(self.make_neuron())
            if dropout is not None:
                head.append(make_dropout(dropout, dropout_mode))
            width = hid
        head.append(SeqToANNContainer(nn.Linear(width, num_classes, bias=classifier_bias)))
        self.classifier = nn.Sequential(*head)
        init_weights(self, weight_init)

    def forward_body(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x_seq))


def _vgg(cfg, defaults, kw: dict[str, Any], owner: str, **model_args) -> VGG:
    args = dict(model_args)
    args.update(kw)
    args.setdefault("neuron_defaults", defaults)
    return build_model(VGG, args, owner, cfg)


@register_model(input_size=(3, 32, 32), reference_macs=332.1e6,
                source="QCFS-C Models/VGG.py, LMHT-C ann_models/VGG.py, QAC; algorithms.md §7.1",
                tags=("qcfs", "lmht-hybrid", "qac"),
                notes="5 AvgPools (MaxPool in the original ANN; pool='max' restores it), conv bias, FC 512->4096->"
                      "4096->n with dropout (default 0). input_size=224 and num_classes=1000 give the ImageNet "
                      "VGG-16 (15.47 G MACs). LM-HT's ANN version has one more dropout before the first FC; "
                      "not reproduced.")
def vgg16_qcfs(**kwargs: Any) -> VGG:
    """VGG-16 as used for QCFS/QAC conversion and LM-HT hybrid training (5 pools, FC 512 on CIFAR)."""
    return _vgg(CFG_VGG16_QCFS, NONE, kwargs, "vgg16_qcfs", conv_bias=True, hidden=(4096, 4096), classifier_bias=True,
                dropout=0.0)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 16, 16), reference_macs=338.4e6,
                source="MLIF-P A.3.1; MLIF-C cfg['VGG16'] (DIET-SNN/IIR-SNN); algorithms.md §7.1",
                tags=("mlif", "diet"),
                notes="4 AvgPools (map ends 2x2x512 = 2048), convs without bias (BN kept in the model; converters "
                      "fold it), dropout after every conv not followed by a pool and after each hidden FC, FCs "
                      "without bias. Dropout defaults to 0 (ANN stage); the M-LIF SNN recipe uses dropout=0.2 with "
                      "one mask for all timesteps (dropout_mode='shared', the default here).")
def vgg16_diet(**kwargs: Any) -> VGG:
    """VGG-16 of DIET-SNN / one-hot M-LIF (4 pools, FC 2048, no biases after BN folding)."""
    return _vgg(CFG_VGG16_DIET, DIET, kwargs, "vgg16_diet", conv_bias=False, hidden=(4096, 4096), classifier_bias=False,
                dropout=0.0, dropout_mode="shared", pool_replaces_dropout=True)


@register_model(input_size=(3, 64, 64), test_input_size=(3, 16, 16), reference_num_classes=200,
                source="LMHT-C models/VGG.py cfg 'VGG13' (the SNN variant); algorithms.md §7.5",
                tags=("lmht",),
                notes="10 convs (the SNN cfg; LMHT-C's ANN VGG13 has [512,512]x2), conv bias, BN, N, D after every "
                      "conv, global average pool, one FC. Tiny-ImageNet/ImageNet-200: num_classes=200, 64x64.")
def vgg13(**kwargs: Any) -> VGG:
    """LM-HT's SNN VGG-13 for ImageNet-200 (10 convs, GAP, single FC)."""
    kwargs.setdefault("default_input_size", (3, 64, 64))
    return _vgg(CFG_VGG13, NONE, kwargs, "vgg13", conv_bias=True, hidden=(), classifier_bias=True, global_pool=True,
                dropout=0.0)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 8, 8), cpu_scale=True,
                source="multispike CPU-scale variant (not from a paper)", tags=("cpu",),
                notes="3C32-3C32-AP2-3C64-3C64-AP2-3C128-AP2 -> flatten 128x4x4 -> FCn, convs without bias + BN, "
                      "dropout after every conv (default 0). About 29 M MACs per image: a CIFAR-10 epoch is minutes "
                      "on a laptop CPU. For demos, tests and CPU-scale recipes.")
def vgg_small(**kwargs: Any) -> VGG:
    """A small VGG for CIFAR-10 on a CPU (5 convs, one FC)."""
    return _vgg(CFG_VGG_SMALL, NONE, kwargs, "vgg_small", conv_bias=False, hidden=(), classifier_bias=True, dropout=0.0)


def airbench_cfg(widths: Sequence[int]) -> list[CfgItem]:
    """The layer list of :func:`airbench_cifar` for ``widths = (stem, block1, block2, block3)``."""
    if len(widths) != 4 or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"airbench_cifar: widths must be 4 positive ints (stem, block1, block2, block3), got "
                         f"{widths!r}")
    w0, w1, w2, w3 = widths
    return [w0, w1, "A", w1, w2, "A", w2, w3, "A", w3]


#: Default widths of :func:`airbench_cifar` (stem, block 1-3), picked by measured CPU throughput (see the notes).
AIRBENCH_WIDTHS = (32, 64, 128, 256)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 8, 8), cpu_scale=True,
                source="airbench94 (Jordan 2024, '94% on CIFAR-10 in 3.29 seconds') layout, adapted for conversion",
                tags=("cpu", "qcfs", "lmht-hybrid", "qac", "speedrun"),
                notes="stem 3Cw0 -> 3 blocks [3Cw, AP2, 3Cw] -> global average pool -> FCn; every conv 3x3 + BN + "
                      "neuron, no conv bias. airbench's whitened 2x2 stem, max pools and GELU are replaced by a "
                      "3x3 conv, average pools and the injected activation (ReLU/QCFS/QAC) so that `convert --to "
                      "lmht` and `--to mixed` apply unchanged. widths=(stem, b1, b2, b3) defaults to "
                      "AIRBENCH_WIDTHS; airbench94 uses (24, 64, 256, 256).")
def airbench_cifar(**kwargs: Any) -> VGG:
    """A fast CIFAR backbone in the layout of airbench94 (7 convs, 3 pools, GAP, one FC).

    ``widths=(w0, w1, w2, w3)`` sets the stem and block widths.
    """
    widths = tuple(kwargs.pop("widths", AIRBENCH_WIDTHS))
    return _vgg(airbench_cfg(widths), NONE, kwargs, "airbench_cifar", conv_bias=False, hidden=(),
                classifier_bias=True, global_pool=True, dropout=None)
