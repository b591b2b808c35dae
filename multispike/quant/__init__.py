"""ANN-side quantizers: QCFS (and, in sibling modules, QAC and the log-quantized baseline)."""
from .qcfs import QCFS, floor_ste, qcfs, round_half_up

__all__ = ["QCFS", "floor_ste", "qcfs", "round_half_up"]
