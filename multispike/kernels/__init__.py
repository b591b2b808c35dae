"""Multi-step neuron kernels: a registry mapping (neuron family, backend) to a sequence function.

Backends registered here besides each family's ``"torch"`` reference:

* ``"cpp"`` (CPU): fused C++/OpenMP kernels built on first use with the system compiler
  (:mod:`multispike.kernels._build`); ``backend="auto"`` picks them on CPU.
* ``"triton"`` (CUDA): fused Triton kernels, imported lazily; ``"auto"`` picks them on CUDA devices.

Every fused kernel has its family's reference signature, reproduces the forward bit for bit, and falls back to
the reference for options it does not cover.
"""
from . import lif_cpp, lmht_cpp, mlif_cpp, triton_kernels  # noqa: F401  (register the "cpp"/"triton" kernels)
from ._build import CppBuildWarning, build_info
from ._common import empty_cache
from .registry import available_backends, get_kernel, register_kernel, resolve_backend

__all__ = ["available_backends", "get_kernel", "register_kernel", "resolve_backend", "build_info",
           "CppBuildWarning", "empty_cache"]
