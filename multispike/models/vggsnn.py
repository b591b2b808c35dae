"""VGGSNN for event cameras (algorithms.md §7.6; TET-C ``models/VGG_models.py``; MLIF-C DVS models).

Input: event frames ``[T, B, 2, 48, 48]`` (2 polarity channels; CIFAR10-DVS resized to 48×48). With one-hot
M-LIF the data pipeline merges the input lanes (``Σ_s 2^s·lane_s``) before the first conv, and every M-LIF
neuron emits its merged payload, so the lanes are merged before every conv and the FC as §7.6 requires.

* ``vggsnn`` (TET, with average pooling): ``3C64, 3C128, AP2, 3C256, 3C256, AP2, 3C512, 3C512, AP2, 3C512,
  3C512, AP2``, each conv ``conv(bias)+BN+N``, then flatten 512·3·3 -> FC10. 1361.7 M MACs per frame.
* ``vggsnn_woap`` (TET ``VGGSNNwoAP``, the M-LIF paper's VGGSNN): the same channels with stride-2 convs at
  layers 2, 4, 6 and 8 instead of pooling; the map also ends at 3×3. 660.9 M MACs per frame.
* ``vggsnn_small``: a CPU-scale variant for N-MNIST (2×34×34).

Default spiking neuron parameters follow TET's ``LIFSpike`` (``multispike.models.sources.TET``): decay 0.5,
θ = 1, hard reset, fire on ``m > θ``, triangle surrogate γ = 1; M-LIF gets the DVS settings of §5.2 (hard
reset, β = 0.5, θ = 1 fixed, γ = 1). Train with the TET loss on :meth:`forward_sequence`.
"""
from __future__ import annotations

from typing import Any

from .registry import register_model
from .sources import TET
from .base import build_model
from .vgg import VGG

__all__ = ["CFG_VGGSNN", "CFG_VGGSNN_WOAP", "CFG_VGGSNN_SMALL"]

CFG_VGGSNN = [64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A"]
CFG_VGGSNN_WOAP = [64, (128, 2), 256, (256, 2), 512, (512, 2), 512, (512, 2)]
CFG_VGGSNN_SMALL = [32, "A", 64, "A", 128, "A"]


def _vggsnn(cfg, kw: dict[str, Any], owner: str) -> VGG:
    args = dict(conv_bias=True, hidden=(), classifier_bias=True, dropout=None, neuron_defaults=TET,
                default_input_size=(2, 48, 48))
    args.update(kw)
    return build_model(VGG, args, owner, cfg)


@register_model(input_size=(2, 48, 48), test_input_size=(2, 16, 16), input_layout="events", reference_macs=1361.7e6,
                source="TET-C models/VGG_models.py VGGSNN; MLIF-C; algorithms.md §7.6", tags=("tet", "mlif", "dvs"),
                notes="Event frames [T, B, 2, 48, 48]; conv(bias)+BN+N, 4 AvgPools, flatten 512x3x3 -> FCn. "
                      "No dropout modules (dropout=0.2 adds them). TET LIF defaults; train with the TET loss.")
def vggsnn(**kwargs: Any) -> VGG:
    """TET's VGGSNN with average pooling, for 48×48 DVS frames."""
    return _vggsnn(CFG_VGGSNN, kwargs, "vggsnn")


@register_model(input_size=(2, 48, 48), test_input_size=(2, 16, 16), input_layout="events", reference_macs=660.9e6,
                source="TET-C models/VGG_models.py VGGSNNwoAP (the one-hot M-LIF paper's VGGSNN); algorithms.md §7.6",
                tags=("tet", "mlif", "dvs"),
                notes="Stride-2 convs at layers 2, 4, 6, 8 instead of pooling; flatten 512x3x3 -> FCn.")
def vggsnn_woap(**kwargs: Any) -> VGG:
    """TET's VGGSNN without pooling (stride-2 convs), the M-LIF paper's DVS network."""
    return _vggsnn(CFG_VGGSNN_WOAP, kwargs, "vggsnn_woap")


@register_model(input_size=(2, 34, 34), test_input_size=(2, 8, 8), input_layout="events", cpu_scale=True,
                source="multispike CPU-scale variant (not from a paper)", tags=("cpu", "dvs"),
                notes="For N-MNIST (2x34x34): 3C32-AP2-3C64-AP2-3C128-AP2 -> flatten 128x4x4 -> FCn, "
                      "conv(bias)+BN+N as VGGSNN, TET neuron defaults (10.7 M MACs per frame).")
def vggsnn_small(**kwargs: Any) -> VGG:
    """A small VGGSNN for N-MNIST on a CPU."""
    kwargs.setdefault("default_input_size", (2, 34, 34))
    return _vggsnn(CFG_VGGSNN_SMALL, kwargs, "vggsnn_small")
