"""ANN-side quantizers: QCFS (§3), the QAC quantizer with four parameterisations (§4), log quantization (§5.4)."""
from .logquant import LogQuant, log_quant, log_quant_levels
from .qac import QACQuantizer, average_timestep, quantizer_summary
from .qat import prepare_qat
from .qcfs import QCFS, floor_ste, qcfs, round_half_up

__all__ = ["QCFS", "floor_ste", "qcfs", "round_half_up", "QACQuantizer", "average_timestep", "prepare_qat",
           "quantizer_summary", "LogQuant", "log_quant", "log_quant_levels"]
