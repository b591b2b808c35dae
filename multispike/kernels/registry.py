"""Kernel registry: which function runs a neuron family's multi-step dynamics on which backend.

Every neuron family registers its pure reference function under backend ``"torch"``. Fused kernels
register under other names (for example ``"inductor"``, ``"cpp"``, ``"triton"``) and must match the
reference (tests in ``tests/test_kernels*.py``). ``resolve_backend(family, "auto", device)`` picks the
fastest registered backend that supports the device, falling back to the reference.
"""
from __future__ import annotations

import os
from typing import Callable

__all__ = ["register_kernel", "get_kernel", "available_backends", "resolve_backend", "AUTO_PREFERENCE"]

_KERNELS: dict[tuple[str, str], Callable] = {}
_DEVICES: dict[tuple[str, str], tuple[str, ...]] = {}

# Order in which "auto" tries backends; the first one registered for the family and device wins.
AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {"cuda": ("triton", "torch"), "cpu": ("cpp", "torch")}


def _compiling() -> bool:
    try:
        import torch

        return bool(torch.compiler.is_compiling())
    except Exception:  # pragma: no cover - very old torch
        return False


def register_kernel(family: str, backend: str, fn: Callable, devices: tuple[str, ...] = ("cpu", "cuda")) -> None:
    """Register ``fn`` as the multi-step function of neuron ``family`` on ``backend``."""
    _KERNELS[(family, backend)] = fn
    _DEVICES[(family, backend)] = tuple(devices)


def available_backends(family: str, device_type: str | None = None) -> list[str]:
    """Backends registered for ``family`` (optionally only those supporting ``device_type``)."""
    return [b for (f, b), devs in _DEVICES.items() if f == family and (device_type is None or device_type in devs)]


def resolve_backend(family: str, backend: str, device_type: str) -> str:
    """Turn ``"auto"`` into a concrete backend for ``device_type``; validate an explicit choice.

    The environment variable ``MULTISPIKE_AUTO_BACKEND`` (e.g. ``torch``) overrides what ``"auto"`` picks, for
    A/B checks and for pinning the reference functions on a machine whose kernels have not been verified.
    """
    if backend == "auto":
        if _compiling():
            # Under torch.compile the reference function is traced and fused by the compiler; the fused
            # kernels are opaque calls (ctypes / Triton launches) that would break the graph.
            return "torch"
        forced = os.environ.get("MULTISPIKE_AUTO_BACKEND")
        if forced:
            return resolve_backend(family, forced, device_type)
        for cand in AUTO_PREFERENCE.get(device_type, ("torch",)):
            if (family, cand) in _KERNELS and device_type in _DEVICES[(family, cand)]:
                return cand
        return "torch"
    if (family, backend) not in _KERNELS:
        raise ValueError(f"backend {backend!r} is not available for {family!r} neurons; available: "
                         f"{available_backends(family)} (or 'auto')")
    if device_type not in _DEVICES[(family, backend)]:
        raise ValueError(f"backend {backend!r} for {family!r} does not run on device type {device_type!r}; "
                         f"it supports {_DEVICES[(family, backend)]}. Use backend='auto' or 'torch'.")
    return backend


def get_kernel(family: str, backend: str) -> Callable:
    try:
        return _KERNELS[(family, backend)]
    except KeyError:
        raise ValueError(f"no kernel registered for family={family!r}, backend={backend!r}; available: "
                         f"{available_backends(family)}") from None
