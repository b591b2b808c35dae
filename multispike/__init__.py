"""multispike: low-latency spiking neural networks (LM-HT, QAC, one-hot M-LIF) in PyTorch.

Time-major ``[T, B, ...]`` tensors, SpikingJelly-style ``step_mode``/``reset()``, surrogate objects.
"""
from .layers import DirectEncoder, MeanOverTime, MultiStepContainer, SeqToANNContainer, to_time_major
from .neurons import (ATan, IFNeuron, IFNode, LIFNeuron, LIFNode, LMHTNeuron, MHTNeuron, OneHotMLIF, ParametricLIFNode,
                      Rectangular,
                      Sigmoid, SurrogateFunction, Triangle, input_checks, reset_net, set_backend, set_step_mode)
from .quant import QCFS, QACQuantizer

__version__ = "0.1.0"

__all__ = [
    "DirectEncoder", "MeanOverTime", "MultiStepContainer", "SeqToANNContainer", "to_time_major",
    "LMHTNeuron", "MHTNeuron", "OneHotMLIF", "ParametricLIFNode", "QCFS", "QACQuantizer", "ATan", "IFNeuron", "IFNode", "LIFNeuron", "LIFNode", "Rectangular", "Sigmoid", "SurrogateFunction", "Triangle",
    "input_checks", "reset_net", "set_backend", "set_step_mode", "__version__",
]
