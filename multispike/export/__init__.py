"""Exchange formats: NIR export and import with a stated, measured fidelity (ecosystem.md §3, §8).

* :func:`export_to_nir` ``(model, example_input, path=None, dt=1e-4, mode="exact"|"if"|"unrolled")`` returns
  ``(nir.NIRGraph, FidelityReport)``;
* :func:`import_from_nir` ``(graph_or_path)`` returns a time-major :class:`NIRNetwork`.

``nir``, ``nirtorch`` and ``h5py`` are the optional extra ``multispike[nir]``; this package imports without
them and raises an ``ImportError`` naming the extra when an export or import is attempted.
"""
from ._trace import NIRExportError
from .nir import (DEFAULT_DT, MODES, NIRImportError, NIRNetwork, export_to_nir, import_from_nir, read_nir,
                  require_nir)
from .report import FidelityReport, LayerFidelity, OutputAgreement

__all__ = ["export_to_nir", "import_from_nir", "read_nir", "NIRNetwork", "FidelityReport", "LayerFidelity",
           "OutputAgreement", "NIRExportError", "NIRImportError", "MODES", "DEFAULT_DT", "require_nir"]
