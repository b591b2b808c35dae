"""ANN -> SNN conversion: BN folding, activation replacement with a report, LM-HT hybrid conversion and
reparameterisation, QAC mixed-timestep conversion and calibration, M-LIF hybrid initialisation."""
from .calibrate import CalibrationReport, calibrate
from .converter import ConversionError, ConversionReport, TimeMergedSNN, convert_to_snn
from .fuse import fold_bn, swap_maxpool
from .lmht import convert_qcfs_to_if, convert_qcfs_to_lmht, reparameterization_report, reparameterize_lmht
from .mixed_timestep import AlignedNeuron, to_mixed_timestep_snn, to_uniform_snn
from .mlif_init import mlif_hybrid_init

__all__ = ["CalibrationReport", "calibrate", "ConversionError", "ConversionReport", "TimeMergedSNN", "convert_to_snn",
           "fold_bn", "swap_maxpool", "convert_qcfs_to_if", "convert_qcfs_to_lmht", "reparameterization_report",
           "reparameterize_lmht", "AlignedNeuron", "to_mixed_timestep_snn", "to_uniform_snn", "mlif_hybrid_init"]
