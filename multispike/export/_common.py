"""Small helpers shared by the NIR exporter and importer (no dependency on ``nir`` at import time)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ._trace import NIRExportError

__all__ = ["require_nir", "DEFAULT_DT"]

DEFAULT_DT = 1e-4


def require_nir():
    """Import ``nir`` or raise an ``ImportError`` that names the optional extra."""
    try:
        import nir  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("NIR export/import needs the optional dependencies nir, nirtorch and h5py: "
                          "pip install 'multispike[nir]'") from exc
    return nir


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def _full(value, shape: tuple[int, ...]) -> torch.Tensor:
    t = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    t = t.to("cpu", torch.float32)
    try:
        return torch.broadcast_to(t, shape).clone()
    except RuntimeError:
        raise NIRExportError(f"a neuron parameter of shape {tuple(t.shape)} does not broadcast to the layer's "
                             f"per-sample shape {shape}") from None


def _ge(c: torch.Tensor) -> torch.Tensor:
    """Largest float32 below ``c``: ``x > _ge(c)`` equals ``x >= c`` for every float32 ``x``."""
    return torch.nextafter(c.to(torch.float32), torch.tensor(-math.inf, dtype=torch.float32))


def _all(t: torch.Tensor, value: float) -> bool:
    return bool((t == value).all())


def _sanitize(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out or "node"


def _as_str(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SOU":
        v = v.item()
        return v.decode("utf8") if isinstance(v, bytes) else str(v)
    return str(v)


def _meta(node) -> dict:
    m = getattr(node, "metadata", None)
    return m if isinstance(m, dict) else {}


def _meta_str(meta: dict, key: str, default: str | None = None) -> str | None:
    if key not in meta:
        return default
    return _as_str(meta[key])


def _int(v, default=None):
    try:
        return int(np.asarray(v).item())
    except (TypeError, ValueError):
        return default


def _pair(v) -> tuple[int, ...]:
    a = np.asarray(v).astype(np.int64).reshape(-1)
    if a.size == 1:
        return (int(a[0]), int(a[0]))
    return tuple(int(x) for x in a)
