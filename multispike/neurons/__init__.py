"""Spiking neurons: pure multi-step functions plus thin ``nn.Module`` wrappers."""
from .base import (MemoryModule, StepModule, check_sequence, input_checks, reset_net, set_backend,
                   set_step_mode)
from .if_lif import LEAK_MODES, BaseNeuron, IFNeuron, IFNode, LIFNeuron, LIFNode, LIFState, lif_multistep
from .surrogate import ATan, Rectangular, Sigmoid, SurrogateFunction, Triangle, get_surrogate, heaviside

__all__ = [
    "MemoryModule", "StepModule", "check_sequence", "input_checks", "reset_net", "set_backend", "set_step_mode",
    "LEAK_MODES", "BaseNeuron", "IFNeuron", "IFNode", "LIFNeuron", "LIFNode", "LIFState", "lif_multistep",
    "ATan", "Rectangular", "Sigmoid", "SurrogateFunction", "Triangle", "get_surrogate", "heaviside",
]
