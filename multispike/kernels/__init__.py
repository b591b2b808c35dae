"""Multi-step neuron kernels: a registry mapping (neuron family, backend) to a sequence function.

Backends registered here besides each family's ``"torch"`` reference:

* ``"cpp"`` (CPU): fused C++/OpenMP kernels built on first use with the system compiler
  (:mod:`multispike.kernels._build`); ``backend="auto"`` picks them on CPU.
* ``"triton"`` (CUDA): fused Triton kernels, imported lazily; ``"auto"`` picks them on CUDA devices.

Every fused kernel has its family's reference signature, reproduces the forward bit for bit, and falls back to
the reference for options it does not cover. Select one per module (``IFNeuron(backend="auto")``) or for a
whole network (``multispike.set_backend(net, "auto")``).

The CPU kernels write their large outputs into cached buffers (:class:`~multispike.kernels._common.BufferPool`:
a block is reused only once no tensor refers to it; ``MULTISPIKE_KERNEL_POOL_MB`` bounds it, default 1024,
0 disables); :func:`empty_cache` releases the unused ones. :func:`build_info` reports how the C++ library was
built (or why it could not be).
"""
from . import lif_cpp, lmht_cpp, mlif_cpp, triton_kernels  # noqa: F401  (register the "cpp"/"triton" kernels)
from ._build import CppBuildWarning, build_info
from ._common import empty_cache
from .registry import available_backends, get_kernel, register_kernel, resolve_backend

__all__ = ["available_backends", "get_kernel", "register_kernel", "resolve_backend", "build_info",
           "CppBuildWarning", "empty_cache"]
