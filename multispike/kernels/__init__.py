"""Multi-step neuron kernels: a registry mapping (neuron family, backend) to a sequence function."""
from .registry import available_backends, get_kernel, register_kernel, resolve_backend

__all__ = ["available_backends", "get_kernel", "register_kernel", "resolve_backend"]
