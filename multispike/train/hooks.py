"""The allow-list of hybrid conversion hooks: checkpoints name hooks, they never name code to import.

A hybrid run (``mode: hybrid``) turns the loaded ANN into the SNN with a *conversion hook*; its checkpoint records
the hook's name so that ``eval``, ``convert``, ``--init-from`` and :func:`~multispike.train.rebuild_model` can
rebuild the network later. A checkpoint is data: whoever wrote it must not be able to make multispike import and
call a function of their choosing (``os:system``, ``builtins:eval``...). So a name read from a checkpoint is
looked up in this registry and **nothing else**:

* the hooks that ship with multispike are registered here (``multispike.train.hybrid:lmht_hybrid``,
  ``multispike.train.hybrid:mlif_hybrid``, also under their short names ``lmht_hybrid`` / ``mlif_hybrid``);
* your own hook becomes loadable once your code registers it in the process that loads the checkpoint::

      from multispike.train import register_convert_hook

      @register_convert_hook                    # registered as "mypkg.hooks:my_hook" (module:qualname)
      def my_hook(ann, cfg): ...

* or, without code, an explicit opt-in: ``MULTISPIKE_TRUSTED_HOOKS="mypkg.hooks:my_hook,other.mod:fn"`` lists
  exact ``module:function`` names (no wildcards) that a checkpoint may name and that are then imported. Only set it
  for checkpoints you trust: importing a module runs its code.

A name on the command line (``multispike train --mode hybrid --convert-hook mypkg.hooks:my_hook``) or in a config
file you pass is your own choice, not the checkpoint's, and is imported as given
(:func:`resolve_convert_hook` with ``allow_import=True``).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable

from .checkpoint import CheckpointError

__all__ = ["TRUSTED_HOOKS_ENV", "UntrustedHookError", "register_convert_hook", "list_convert_hooks",
           "resolve_convert_hook", "is_allowed_hook"]

TRUSTED_HOOKS_ENV = "MULTISPIKE_TRUSTED_HOOKS"

# Hooks shipped with the package: (module, attribute) fixed here, so importing them never depends on a file's content.
_BUILTIN: dict[str, tuple[str, str]] = {
    "multispike.train.hybrid:lmht_hybrid": ("multispike.train.hybrid", "lmht_hybrid"),
    "multispike.train.hybrid:mlif_hybrid": ("multispike.train.hybrid", "mlif_hybrid"),
    "lmht_hybrid": ("multispike.train.hybrid", "lmht_hybrid"),
    "mlif_hybrid": ("multispike.train.hybrid", "mlif_hybrid"),
}
_REGISTERED: dict[str, Callable] = {}


class UntrustedHookError(CheckpointError):
    """A checkpoint names a conversion hook that is neither registered nor explicitly trusted."""


def _default_name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', getattr(fn, '__name__', '?'))}"


def register_convert_hook(fn: Callable | None = None, *, name: str | None = None,
                          aliases: tuple[str, ...] = ()) -> Any:
    """Register a conversion hook so that checkpoints naming it can be rebuilt in this process.

    Usable as ``@register_convert_hook``, ``@register_convert_hook(name="my_hook")`` or
    ``register_convert_hook(fn)``. The hook is registered under ``name`` (default ``"module:qualname"``, the
    spelling ``--convert-hook`` uses) and every alias.

    Raises:
        ValueError: ``fn`` is not callable, or a name is already registered to another function (a built-in
            hook cannot be replaced).
    """
    def register(f: Callable) -> Callable:
        if not callable(f):
            raise ValueError(f"register_convert_hook: {f!r} is not callable")
        for key in (name or _default_name(f), *aliases):
            if not isinstance(key, str) or not key:
                raise ValueError(f"register_convert_hook: hook names are non-empty strings, got {key!r}")
            if key in _BUILTIN:
                raise ValueError(f"register_convert_hook: {key!r} is a built-in multispike hook and cannot be "
                                 f"replaced; choose another name")
            old = _REGISTERED.get(key)
            if old is not None and old is not f:
                raise ValueError(f"register_convert_hook: {key!r} is already registered to {_default_name(old)}")
            _REGISTERED[key] = f
        return f

    return register(fn) if fn is not None else register


def list_convert_hooks() -> list[str]:
    """Names a checkpoint may use for its conversion hook (built-in and registered in this process)."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def _trusted_names() -> set[str]:
    raw = os.environ.get(TRUSTED_HOOKS_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def is_allowed_hook(spec: Any) -> bool:
    """Whether a checkpoint may name ``spec`` (built in, registered, or listed in ``$MULTISPIKE_TRUSTED_HOOKS``)."""
    return isinstance(spec, str) and (spec in _BUILTIN or spec in _REGISTERED or spec in _trusted_names())


def _import_hook(spec: str) -> Callable:
    if ":" not in spec:
        raise ValueError(f"convert_hook must be 'package.module:function' or a registered hook name "
                         f"({', '.join(list_convert_hooks())}), got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"convert_hook {spec!r}: cannot import {module_name!r} ({exc})") from exc
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"convert_hook {spec!r}: {module_name} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"convert_hook {spec!r} is not callable")
    return fn


def resolve_convert_hook(spec: str | Callable, *, allow_import: bool = False, source: str = "checkpoint"
                         ) -> Callable:
    """The conversion hook named ``spec``.

    Args:
        spec: a callable (returned as is), a built-in or registered hook name, or ``"package.module:function"``.
        allow_import: import a ``module:function`` that is not registered. Only for names the user gave
            (``--convert-hook``, a config file, :func:`~multispike.train.run_training`); never for names read
            from a checkpoint, where only registered names and those in ``$MULTISPIKE_TRUSTED_HOOKS`` resolve.
        source: what named the hook (for the error message).

    Raises:
        UntrustedHookError: ``allow_import`` is false and the name is not allowed; nothing was imported.
        ValueError: the name cannot be imported or is not callable.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise UntrustedHookError(f"{source}: convert_hook must be a hook name (string), got {spec!r}")
    if spec in _REGISTERED:
        return _REGISTERED[spec]
    if spec in _BUILTIN:
        module_name, attr = _BUILTIN[spec]
        return getattr(importlib.import_module(module_name), attr)
    if allow_import or spec in _trusted_names():
        return _import_hook(spec)
    raise UntrustedHookError(
        f"{source} names the conversion hook {spec!r}, which is not a registered hook; multispike does not import "
        f"code named by a checkpoint. Registered hooks: {', '.join(list_convert_hooks())}. If you wrote this hook "
        f"and trust the checkpoint, register it in your process with multispike.train.register_convert_hook, or "
        f"list its exact name in ${TRUSTED_HOOKS_ENV}.")
