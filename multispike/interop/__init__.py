"""Interoperability with the tools SNN researchers already use.

* :mod:`.spikingjelly`: swap the neurons of an existing SpikingJelly model for multispike's fused ones
  (:func:`from_spikingjelly`), translate SpikingJelly surrogates.
* :mod:`.neurobench`: footprint, activation sparsity and synaptic operations via the ``neurobench`` package, side by
  side with multispike's own metrics.
* :mod:`.tonic`: feed ``tonic`` datasets and transforms to multispike training.

Each submodule imports its peer package lazily, so ``import multispike.interop`` needs none of them.
"""
from __future__ import annotations

__all__ = ["from_spikingjelly", "convert_surrogate"]


def __getattr__(name: str):
    if name in ("from_spikingjelly", "convert_surrogate"):
        from . import spikingjelly
        return getattr(spikingjelly, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
