"""Deprecated location of the demo's LM-HT, QAC and M-LIF rows; they live in :mod:`multispike.demo.rows`.

Importing this module gives the same objects, with a :class:`DeprecationWarning`.
"""
from __future__ import annotations

import warnings

from .demo.rows import lmht_rows, lq_ann, mlif_rows, qac_rows, qcfs_ann  # noqa: F401
from .metrics import count_ops, diet_energy  # noqa: F401  (were importable from here)

__all__ = ["qcfs_ann", "lmht_rows", "qac_rows", "lq_ann", "mlif_rows"]

warnings.warn("multispike.demo_rows moved to multispike.demo.rows; import from there", DeprecationWarning,
              stacklevel=2)
