"""How :class:`~multispike.metrics.OpCounter` finds spike-driven self-attention blocks and their q/k/v neurons.

A spike-driven attention block (SDSA: ``Q ⊙ N(Σ_tokens K ⊙ V)``) is counted as additions and masks, which needs
the spiking neurons that produce Q, K, V and (optionally) the KV gate. A block says which they are, explicitly:

* by a class attribute ``spike_roles`` mapping each role to the dotted path of the neuron inside the block::

      class MySDSA(nn.Module):
          spike_roles = {"q": "q_lif", "k": "k_lif", "v": "v_lif", "kv": "kv_lif"}

* or, for a class you cannot edit (a third-party block), with :func:`register_attention`::

      register_attention(TheirSDSA, q="q_lif", k="k_lif", v="v_lif", kv="talking_heads_lif")

Registration covers subclasses (``isinstance``); a registration wins over a ``spike_roles`` attribute.

Undeclared blocks whose class name looks like attention (``Attention``, ``Attn``, ``SDSA``, ``SSA``) are still
recognised by the old name heuristic (neurons named ``q_lif``/``k_lif``/``v_lif``/``kv_lif`` and variants), with a
``FutureWarning``: that fallback is deprecated because a renamed attribute silently changes what is counted.
"""
from __future__ import annotations

import re
import warnings
from typing import Mapping

from torch import nn

__all__ = ["SPIKE_ROLES", "register_attention", "unregister_attention", "declared_spike_roles"]

SPIKE_ROLES = ("q", "k", "v", "kv")
_REQUIRED = ("q", "k", "v")

_REGISTRY: dict[type, dict[str, str]] = {}


def _check_roles(roles: Mapping[str, str], owner: str) -> dict[str, str]:
    if not isinstance(roles, Mapping):
        raise TypeError(f"{owner}: spike roles must be a mapping role -> neuron path, got {type(roles).__name__}")
    unknown = sorted(set(roles) - set(SPIKE_ROLES))
    if unknown:
        raise ValueError(f"{owner}: unknown spike roles {unknown}; allowed: {list(SPIKE_ROLES)}")
    missing = [r for r in _REQUIRED if r not in roles]
    if missing:
        raise ValueError(f"{owner}: spike roles {missing} are required (q, k and v; kv is optional)")
    for role, path in roles.items():
        if not isinstance(path, str) or not path:
            raise ValueError(f"{owner}: spike role {role!r} must name a sub-module path such as 'q_lif', got {path!r}")
    return dict(roles)


def register_attention(cls: type, *, q: str, k: str, v: str, kv: str | None = None) -> None:
    """Declare ``cls`` (and its subclasses) a spike-driven attention block for operation counting.

    Args:
        cls: the attention module class.
        q, k, v: dotted paths (relative to the block) of the spiking neurons producing Q, K and V.
        kv: path of the neuron gating ``Σ K ⊙ V`` (SDSA's KV / talking-heads neuron), if the block has one.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_attention: cls must be an nn.Module subclass, got {cls!r}")
    roles = {"q": q, "k": k, "v": v, **({"kv": kv} if kv is not None else {})}
    _REGISTRY[cls] = _check_roles(roles, f"register_attention({cls.__name__})")


def unregister_attention(cls: type) -> None:
    """Remove a registration made by :func:`register_attention` (no error if there is none)."""
    _REGISTRY.pop(cls, None)


def declared_spike_roles(module: nn.Module) -> dict[str, str] | None:
    """The ``role -> neuron path`` map ``module`` declares (registration first, then ``spike_roles``), or None."""
    for klass in type(module).__mro__:
        if klass in _REGISTRY:
            return dict(_REGISTRY[klass])
    roles = getattr(type(module), "spike_roles", None)
    if roles is None:
        return None
    return _check_roles(roles, f"{type(module).__name__}.spike_roles")


# ----------------------------------------------------------------------------- deprecated name heuristic
_ATTENTION_NAME = re.compile(r"(?i:attention|attn|sdsa)|SSA")
_NEURON_SUFFIX = r"(lif|if|neuron|spike|sn|node|mlif|lmht)"
_ROLE_NAMES = {
    "q": re.compile(rf"^q(_?{_NEURON_SUFFIX})?$", re.IGNORECASE),
    "k": re.compile(rf"^k(_?{_NEURON_SUFFIX})?$", re.IGNORECASE),
    "v": re.compile(rf"^v(_?{_NEURON_SUFFIX})?$", re.IGNORECASE),
    "kv": re.compile(rf"^(kv|attn|talking_heads)_?{_NEURON_SUFFIX}$", re.IGNORECASE),
}


def looks_like_attention(module: nn.Module) -> bool:
    """Whether the deprecated name heuristic takes ``module`` for an attention block."""
    return bool(_ATTENTION_NAME.search(type(module).__name__))


def guessed_spike_roles(module: nn.Module, neuron_names: set[str], prefix: str) -> dict[str, str]:
    """Roles guessed from the last component of neuron attribute names (deprecated fallback), warning once."""
    warnings.warn(f"OpCounter recognised {type(module).__module__}.{type(module).__name__} as spike-driven attention "
                  "by its class and attribute names; this is deprecated. Declare the neurons explicitly: a class "
                  "attribute spike_roles = {'q': 'q_lif', 'k': 'k_lif', 'v': 'v_lif', 'kv': 'kv_lif'} or "
                  "multispike.metrics.register_attention(cls, q=..., k=..., v=..., kv=...)",
                  FutureWarning, stacklevel=4)
    found: dict[str, str] = {}
    for child_name, _ in module.named_modules():
        full = prefix + child_name
        if not child_name or full not in neuron_names:
            continue
        last = child_name.split(".")[-1]
        for role, pat in _ROLE_NAMES.items():
            if pat.match(last) and role not in found:
                found[role] = full
    return found
