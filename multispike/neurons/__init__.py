"""Spiking neurons: pure multi-step functions plus thin ``nn.Module`` wrappers.

* IF / LIF (:mod:`.if_lif`), LM-HT / M-HT (:mod:`.lmht`), one-hot M-LIF (:mod:`.mlif`);
* surrogate-gradient objects (:mod:`.surrogate`); step modes and state (:mod:`.base`);
* the name registry used by model builders (:mod:`.registry`).
"""
from .base import (MemoryModule, StepModule, check_sequence, input_checks, reset_net, set_backend,
                   set_step_mode)
from .if_lif import LEAK_MODES, BaseNeuron, IFNeuron, IFNode, LIFNeuron, LIFNode, LIFState, lif_multistep
from .lmht import LMHTNeuron, MHTNeuron, ReparameterizedIF, lmht_multistep, mht_multistep
from .mlif import OneHotMLIF, mlif_multistep
from .plif import ParametricLIFNode, plif_multistep
from .registry import list_neurons, make_neuron, register_neuron
from .surrogate import ATan, Rectangular, Sigmoid, SurrogateFunction, Triangle, get_surrogate, heaviside

register_neuron("mht", "multispike.neurons.lmht", "MHTNeuron", spiking=True)

__all__ = [
    "MemoryModule", "StepModule", "check_sequence", "input_checks", "reset_net", "set_backend", "set_step_mode",
    "LEAK_MODES", "BaseNeuron", "IFNeuron", "IFNode", "LIFNeuron", "LIFNode", "LIFState", "lif_multistep",
    "LMHTNeuron", "MHTNeuron", "ReparameterizedIF", "lmht_multistep", "mht_multistep",
    "OneHotMLIF", "mlif_multistep", "ParametricLIFNode", "plif_multistep", "list_neurons", "make_neuron", "register_neuron",
    "ATan", "Rectangular", "Sigmoid", "SurrogateFunction", "Triangle", "get_surrogate", "heaviside",
]
