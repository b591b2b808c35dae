"""Spike statistics, value-weighted operation counting, energy models and evaluation reports (algorithms.md §6).

* :class:`SpikeMonitor` - per-layer spike rate over lanes and timesteps, count and payload rates, per-step
  firing, membrane statistics.
* :class:`OpCounter` - per-layer dense MACs, value-weighted accumulates with exact fan-out, analog first-layer
  MACs and NeuroBench-compatible numbers, side by side; spike-driven attention blocks declare their q/k/v
  neurons (``spike_roles`` or :func:`register_attention`).
* Energy: :func:`diet_energy` (δ = E_ANN / E_SNN), :func:`sop_energy`, :func:`sdt_energy`,
  :func:`value_weighted_energy`, :func:`neurobench_energy`, :func:`memory_energy` (our model), presets
  ``45nm`` / ``fp16`` / ``int8``.
* :func:`prefix_correct`, :func:`prefix_accuracy` - the one accuracy-at-every-prefix evaluator.
* :func:`evaluate`, :func:`write_report`, :func:`compare_reports` - accuracy at every timestep prefix plus all
  of the above, saved as JSON, Markdown and PNG plots.
"""
from .attention import SPIKE_ROLES, declared_spike_roles, register_attention, unregister_attention
from .energy import (ENERGY_PRESETS, EnergyConstants, MemoryModel, diet_energy, energy_report, get_constants,
                     memory_energy, neurobench_energy, sdt_energy, sop_energy, value_weighted_energy)
from .fanout import adaptive_fanout, avgpool_fanout, conv_fanout
from .monitors import LayerSpikeStats, SpikeMonitor, declared_timesteps, is_spiking_neuron, spiking_layers
from .opcount import CONVENTIONS, LayerOps, NeuronOps, OpCounter, OpCountResult, count_ops, format_count
from .prefix import prefix_accuracy, prefix_correct, sequence_outputs
from .report import EvalResult, compare_reports, evaluate, load_result, write_report

__all__ = [
    "SpikeMonitor", "LayerSpikeStats", "is_spiking_neuron", "spiking_layers", "declared_timesteps",
    "OpCounter", "OpCountResult", "register_attention", "unregister_attention", "declared_spike_roles",
    "SPIKE_ROLES", "LayerOps", "NeuronOps", "count_ops", "CONVENTIONS", "format_count",
    "conv_fanout", "avgpool_fanout", "adaptive_fanout",
    "EnergyConstants", "ENERGY_PRESETS", "get_constants", "MemoryModel", "diet_energy", "sop_energy", "sdt_energy",
    "value_weighted_energy", "neurobench_energy", "memory_energy", "energy_report",
    "prefix_correct", "prefix_accuracy", "sequence_outputs",
    "EvalResult", "evaluate", "write_report", "compare_reports", "load_result",
]
