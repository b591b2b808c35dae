"""Backend dispatch: which function runs a neuron family's multi-step dynamics on which backend.

This module is the neutral point between :mod:`multispike.neurons` (which register their pure reference
functions under backend ``"torch"`` and look kernels up at call time) and :mod:`multispike.kernels` (which
register fused implementations of those references under other names, for example ``"cpp"`` or ``"triton"``).
It imports neither: neurons and kernels both import it, so neither has to import the other to dispatch.

Fused kernels live in *provider* modules (:data:`KERNEL_PROVIDERS`) that register themselves when imported.
Providers are imported on the first lookup that could select a non-reference backend, so ``backend="auto"``
sees them whichever subpackage the user imported first. ``resolve_backend(family, "auto", device)`` picks the
first registered backend of :data:`AUTO_PREFERENCE` that supports the device, falling back to the reference.

The public names are re-exported unchanged by :mod:`multispike.kernels.registry` and :mod:`multispike.kernels`.
"""
from __future__ import annotations

import importlib
import os
import threading
from typing import Callable

__all__ = ["register_kernel", "get_kernel", "available_backends", "resolve_backend", "AUTO_PREFERENCE",
           "KERNEL_PROVIDERS"]

_KERNELS: dict[tuple[str, str], Callable] = {}
_DEVICES: dict[tuple[str, str], tuple[str, ...]] = {}

# Order in which "auto" tries backends; the first one registered for the family and device wins.
AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {"cuda": ("triton", "torch"), "cpu": ("cpp", "torch")}

# Modules that register fused kernels on import. Named here (not imported at module level) because they import
# the neuron modules whose references they must match; importing them from here eagerly would recreate the
# neurons <-> kernels cycle this module exists to break.
KERNEL_PROVIDERS: tuple[str, ...] = ("multispike.kernels",)

_providers_loaded = False
_providers_lock = threading.Lock()


def _load_providers() -> None:
    """Import every provider once. An ImportError from a provider propagates: a broken kernel module must not
    silently turn ``backend="auto"`` into the reference."""
    global _providers_loaded
    if _providers_loaded:
        return
    with _providers_lock:
        if _providers_loaded:
            return
        # Set first: a provider importing a neuron module that queries the dispatcher at import time must not
        # re-enter the provider import.
        _providers_loaded = True
        try:
            for name in KERNEL_PROVIDERS:
                importlib.import_module(name)
        except BaseException:
            _providers_loaded = False
            raise


def _compiling() -> bool:
    try:
        import torch

        return bool(torch.compiler.is_compiling())
    except Exception:  # pragma: no cover - very old torch
        return False


def register_kernel(family: str, backend: str, fn: Callable, devices: tuple[str, ...] = ("cpu", "cuda")) -> None:
    """Register ``fn`` as the multi-step function of neuron ``family`` on ``backend``.

    Args:
        family: neuron family name (``"lif"``, ``"lmht"``, ``"mlif"``, ...).
        backend: backend name; ``"torch"`` is the family's pure reference.
        fn: the multi-step function, with the reference's signature.
        devices: device types ``fn`` runs on.
    """
    _KERNELS[(family, backend)] = fn
    _DEVICES[(family, backend)] = tuple(devices)


def available_backends(family: str, device_type: str | None = None) -> list[str]:
    """Backends registered for ``family`` (optionally only those supporting ``device_type``)."""
    _load_providers()
    return [b for (f, b), devs in _DEVICES.items() if f == family and (device_type is None or device_type in devs)]


def resolve_backend(family: str, backend: str, device_type: str) -> str:
    """Turn ``"auto"`` into a concrete backend for ``device_type``; validate an explicit choice.

    The environment variable ``MULTISPIKE_AUTO_BACKEND`` (e.g. ``torch``) overrides what ``"auto"`` picks, for
    A/B checks and for pinning the reference functions on a machine whose kernels have not been verified.

    Raises:
        ValueError: ``backend`` is not registered for ``family`` or does not run on ``device_type``.
    """
    if backend == "auto":
        if _compiling():
            # Under torch.compile the reference function is traced and fused by the compiler; the fused
            # kernels are opaque calls (ctypes / Triton launches) that would break the graph.
            return "torch"
        forced = os.environ.get("MULTISPIKE_AUTO_BACKEND")
        if forced:
            return resolve_backend(family, forced, device_type)
        _load_providers()
        for cand in AUTO_PREFERENCE.get(device_type, ("torch",)):
            if (family, cand) in _KERNELS and device_type in _DEVICES[(family, cand)]:
                return cand
        return "torch"
    if (family, backend) not in _KERNELS:
        _load_providers()
    if (family, backend) not in _KERNELS:
        raise ValueError(f"backend {backend!r} is not available for {family!r} neurons; available: "
                         f"{available_backends(family)} (or 'auto')")
    if device_type not in _DEVICES[(family, backend)]:
        raise ValueError(f"backend {backend!r} for {family!r} does not run on device type {device_type!r}; "
                         f"it supports {_DEVICES[(family, backend)]}. Use backend='auto' or 'torch'.")
    return backend


def get_kernel(family: str, backend: str) -> Callable:
    """The function registered for ``(family, backend)``.

    Raises:
        ValueError: nothing is registered under that pair.
    """
    if (family, backend) not in _KERNELS:
        _load_providers()
    try:
        return _KERNELS[(family, backend)]
    except KeyError:
        raise ValueError(f"no kernel registered for family={family!r}, backend={backend!r}; available: "
                         f"{available_backends(family)}") from None
