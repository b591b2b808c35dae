"""Library error classes shared across subpackages (no torch, no multispike imports).

They live here, below every subpackage, so that a low layer (the conversion recipes in :mod:`multispike.convert`,
the validators in :mod:`multispike._validate`) can raise the same class a higher layer catches, without importing
that higher layer.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

__all__ = ["CheckpointError", "ParameterMessage", "ParameterError", "MissingDataError"]




class ParameterMessage:
    """Mixin of errors whose message names function parameters.

    The message is a template in which ``{name}`` stands for the parameter ``name`` (one of :attr:`params`).
    ``str(error)`` writes the Python parameter names; :meth:`render` writes other spellings, which is how the
    command line turns ``timesteps must be >= 1`` into ``--timesteps must be >= 1`` without the library knowing
    any flag. Only the listed parameters are substituted, so other braces in the text are left alone.
    """

    template: str
    params: tuple[str, ...]

    def _set_template(self, template: str, params: Iterable[str]) -> str:
        self.template = template
        self.params = tuple(params)
        return self.render()

    @property
    def param(self) -> str | None:
        """The first (main) parameter the error is about."""
        return self.params[0] if self.params else None

    def render(self, names: Mapping[str, str] | Callable[[str], str | None] | None = None) -> str:
        """The message with each ``{param}`` written as ``names[param]`` (missing: the parameter's own name)."""
        lookup = names.get if isinstance(names, Mapping) else names
        text = self.template
        for p in self.params:
            spelled = lookup(p) if lookup is not None else None
            text = text.replace("{" + p + "}", spelled or p)
        return text



class CheckpointError(ParameterMessage, ValueError):
    """A checkpoint is missing, corrupt, truncated or incompatible with the model/config it is loaded into.

    Also raised by :mod:`multispike.convert.recipe` when a recorded conversion recipe cannot be replayed.
    Re-exported as :class:`multispike.train.CheckpointError`. The message may name parameters
    (:class:`ParameterMessage`); most messages are plain text.
    """

    def __init__(self, template: str = "", *params: str) -> None:
        ValueError.__init__(self, self._set_template(template, params))


class ParameterError(ParameterMessage, ValueError):
    """A bad value of a named function parameter (a ``ValueError``; see :class:`ParameterMessage`).

    Example::

        err = ParameterError("{timesteps} must be >= 1, got 0", "timesteps")
        str(err)                                        # 'timesteps must be >= 1, got 0'
        err.render({"timesteps": "--timesteps"})        # '--timesteps must be >= 1, got 0'
    """

    def __init__(self, template: str, *params: str) -> None:
        ValueError.__init__(self, self._set_template(template, params))


class MissingDataError(ParameterMessage, FileNotFoundError):
    """Data files that are not where a parameter (or the environment) says they are (a ``FileNotFoundError``;
    see :class:`ParameterMessage`)."""

    def __init__(self, template: str, *params: str) -> None:
        FileNotFoundError.__init__(self, self._set_template(template, params))
