"""``digits_cnn``: the small CNN of ``multispike demo`` for 8x8 inputs (the embedded scikit-learn digits).

A zoo entry like any other (``create_model("digits_cnn", neuron="qcfs", ...)``), so checkpoints of it rebuild by
name and the zoo's sweep (every model x every neuron) covers it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import SeqToANNContainer
from .base import TimeMajorModel, build_model
from .registry import register_model

__all__ = ["DigitsCNN"]


class DigitsCNN(TimeMajorModel):
    """A small time-major CNN for 8x8 inputs: 3 conv+BN layers, two average pools, a linear read-out.

    Average pooling from the start: swapping a trained MaxPool for AvgPool at conversion time changes the
    function the ANN computes (measured on the demo: about -15 points).

    ``neuron`` chooses the activation (``"relu"`` for the ANN, any registered neuron for an SNN). Static
    input is direct-encoded: the stem conv+BN runs once and its output is repeated over ``T`` steps
    (:class:`~multispike.models.base.TimeMajorModel`).

    Args:
        neuron, T, neuron_kwargs, num_classes: as for every zoo model.
        width: channels of the first conv (then 2x and 4x).
        in_channels: input channels (default: ``input_size[0]``, 1 for the digits).
        input_size: ``(C, H, W)``; H and W must be multiples of 4 (two 2x2 pools).
    """

    def __init__(self, neuron: Any = "relu", T: int = 1, neuron_kwargs: dict | None = None, num_classes: int = 10,
                 width: int = 16, in_channels: int | None = None,
                 input_size: tuple[int, int, int] = (1, 8, 8)) -> None:
        size = tuple(int(s) for s in input_size)
        if in_channels is not None:
            size = (int(in_channels), *size[1:])
        if len(size) != 3 or size[1] % 4 or size[2] % 4 or min(size) < 1:
            raise ValueError(f"DigitsCNN: input_size must be (C, H, W) with H and W multiples of 4 (two 2x2 "
                             f"pools), got {input_size}")
        super().__init__(num_classes=num_classes, T=T, input_size=size, neuron=neuron, neuron_kwargs=neuron_kwargs,
                         owner="digits_cnn")
        c = size[0]
        self.stem = SeqToANNContainer(nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.act1 = self.make_neuron()
        self.conv2 = SeqToANNContainer(nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(2 * width))
        self.act2 = self.make_neuron()
        self.conv3 = SeqToANNContainer(nn.AvgPool2d(2), nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(4 * width))
        self.act3 = self.make_neuron()
        flat = 4 * width * (size[1] // 4) * (size[2] // 4)
        self.head = SeqToANNContainer(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(flat, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_body(self, h: torch.Tensor) -> torch.Tensor:
        """Everything after the stem, ``[T, B, C, 8, 8] -> [T, B, classes]``. Free of data-dependent branches,
        so torch.fx can trace it (QAC's converter checks it for functional ReLU calls this way)."""
        h = self.act1(h)
        h = self.act2(self.conv2(h))
        h = self.act3(self.conv3(h))
        return self.head(h)


@register_model(input_size=(1, 8, 8), cpu_scale=True, source="multispike demo network (not from a paper)",
                tags=("cpu", "demo"),
                notes="3C16-3C32-AP2-3C64-AP2 -> FCn, convs without bias + BN, average pools only (a trained MaxPool "
                      "swapped for AvgPool at conversion costs ~15 points here). The network of `multispike demo` "
                      "and `multispike export --demo`; width=16 by default.")
def digits_cnn(**kwargs: Any) -> DigitsCNN:
    """The demo's CNN for the embedded 8x8 digits (about 0.6 M MACs per image and step)."""
    return build_model(DigitsCNN, kwargs, "digits_cnn")
