"""Kernel registry (compatibility location): the registry itself lives in :mod:`multispike._dispatch`.

It moved there so that :mod:`multispike.neurons` (which registers the ``"torch"`` reference functions) and
:mod:`multispike.kernels` (which registers fused implementations of them) both depend on one neutral module
instead of on each other. Every name importable from here before stays importable, and is the same object.
"""
from __future__ import annotations

from .._dispatch import (_DEVICES, _KERNELS, AUTO_PREFERENCE, available_backends,  # noqa: F401
                         get_kernel, register_kernel, resolve_backend)

__all__ = ["register_kernel", "get_kernel", "available_backends", "resolve_backend", "AUTO_PREFERENCE"]
