"""Per-source neuron defaults (algorithms.md §1.1, §1.5, §5.2, §7.6, §7.7).

"Which leak form is in use changes results. Give every model-zoo entry its source's form" (§1.5). Each zoo
entry passes one of these tables to its :class:`~multispike.models.base.NeuronFactory`; the user's
``neuron_kwargs`` override any entry. Keys a neuron class does not accept are skipped, so the same table
serves ReLU/QCFS (nothing applies) and every spiking neuron.

* ``DIET``: DIET-SNN / IIR-SNN / M-LIF static CNNs (``vgg16_diet``, ``resnet20_diet``). LIF in the paper form
  ``u(t) = β·u(t−1) + I(t) − θ·s(t−1)`` (reset applied next step, not leaked), fire on ``u > θ``, learnable
  θ and β (β starts at 1), DIET triangle surrogate γ = 0.3 on ``u/θ − 1`` (MLIF-P eqs. 1, 4). One-hot M-LIF
  already defaults to this (soft paper-form reset, γ = 0.3, learnable θ/β).
* ``TET``: TET ``LIFSpike`` (``vggsnn``, ``vggsnn_woap``): ``m = 0.5·v + I``, θ = 1, hard reset to 0, fire on
  ``m > θ``, triangle γ = 1. M-LIF on DVS uses the same: hard reset, β = 0.5, θ = 1 fixed, γ = 1 (§5.2).
* ``SDT``: SpikingJelly multi-step LIF of the spike-driven transformer: τ = 2 with ``decay_input``
  (``m = v + (I − v)/2``), θ = 1, hard reset to 0, ``detach_reset``, sigmoid surrogate α = 4. M-LIF in the
  transformer (MLIF-C ``sps.py``): the same SpikingJelly charge (``decay_input`` with β = ½, i.e. τ = 2),
  scaled payload, hard reset, fixed θ = 1, sigmoid α = 4, detach_reset.
* ``NONE``: conversion and LM-HT sources (``vgg16_qcfs``, ``resnet20_cifar``, ``vgg13``, ResNets): the
  converter or the LM-HT recipe sets θ and v(0); the neuron classes' own defaults apply.
"""
from __future__ import annotations

from typing import Any

from ..neurons.surrogate import Sigmoid, Triangle

__all__ = ["DIET", "TET", "SDT", "NONE", "NEURON_DEFAULTS"]

NeuronDefaults = dict[str, dict[str, Any]]

DIET: NeuronDefaults = {
    "lif": dict(leak_mode="post_reset", decay=1.0, reset_leak=False, v_reset=None, learnable_leak=True,
                learnable_threshold=True, fire_ge=False, surrogate_function=Triangle(gamma=0.3, form="diet"),
                surrogate_form="normalized"),
    "if": dict(v_reset=None, learnable_threshold=True, fire_ge=False,
               surrogate_function=Triangle(gamma=0.3, form="diet"), surrogate_form="normalized"),
}

TET: NeuronDefaults = {
    "lif": dict(leak_mode="post_reset", decay=0.5, v_reset=0.0, v_threshold=1.0, fire_ge=False,
                surrogate_function=Triangle(gamma=1.0, form="tet")),
    "if": dict(v_reset=0.0, v_threshold=1.0, fire_ge=False, surrogate_function=Triangle(gamma=1.0, form="tet")),
    "mlif": dict(reset="hard", leak=0.5, v_threshold=1.0, learnable_threshold=False, learnable_leak=False,
                 gamma=1.0, surrogate_shape="triangle"),
}

SDT: NeuronDefaults = {
    "lif": dict(tau=2.0, leak_mode="decay_input", v_reset=0.0, v_threshold=1.0, detach_reset=True,
                surrogate_function=Sigmoid(alpha=4.0)),
    "if": dict(v_reset=0.0, v_threshold=1.0, detach_reset=True, surrogate_function=Sigmoid(alpha=4.0)),
    "mlif": dict(scaled=True, reset="hard", leak=0.5, decay_input=True, v_threshold=1.0, learnable_threshold=False,
                 learnable_leak=False, detach_reset=True, surrogate_shape="sigmoid", alpha=4.0),
}

NONE: NeuronDefaults = {}

NEURON_DEFAULTS: dict[str, NeuronDefaults] = {"diet": DIET, "tet": TET, "sdt": SDT, "none": NONE}
