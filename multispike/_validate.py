"""Argument validation shared across subpackages (no torch; imports only :mod:`multispike._errors`).

These helpers used to live in :mod:`multispike.neurons.base`, which made :mod:`multispike.data` import the neuron
package only to check an integer. They stay re-exported there under their old names.
"""
from __future__ import annotations

import math


from ._errors import ParameterError

__all__ = ["check_positive_int", "finite_number", "check_choice"]


def check_positive_int(value, name: str, minimum: int = 1, fix: str = "") -> int:
    """Return ``int(value)`` or raise :class:`~multispike._errors.ParameterError` (a ``ValueError``) naming the
    value, the allowed range and the fix.

    Args:
        value: an ``int`` or an integral ``float`` (``bool`` is rejected).
        name: how the error message names the argument; a Python parameter name (``"timesteps"``) lets the
            command line write it as its flag (``--timesteps``).
        minimum: smallest allowed value.
        fix: a sentence appended to the error, telling the user what to do.
    """
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
            isinstance(value, float) and value.is_integer()):
        raise ParameterError(f"{{{name}}} must be an integer >= {minimum}, got {value!r}. {fix}".strip(), name)
    value = int(value)
    if value < minimum:
        raise ParameterError(f"{{{name}}} must be >= {minimum}, got {value}. {fix}".strip(), name)
    return value


def check_choice(value, name: str, choices, owner: str = ""):
    """Return ``value`` if it is one of ``choices``, else raise :class:`~multispike._errors.ParameterError` (a
    ``ValueError``) ``"{owner}: {name} must be one of {choices}, got {value!r}"`` naming the parameter ``name``.
    """
    if value in choices:
        return value
    prefix = f"{owner}: " if owner else ""
    raise ParameterError(f"{prefix}{{{name}}} must be one of {tuple(choices)}, got {value!r}", name)


def finite_number(value, name: str, owner: str, positive: bool = False) -> float:
    """Return ``float(value)`` or raise ``ValueError`` (prefixed with ``owner``) if it is not finite, or not
    ``> 0`` when ``positive``."""
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        rng = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"{owner}: {name} must be {rng}, got {value!r}")
    return v
