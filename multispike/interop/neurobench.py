"""NeuroBench (2.x) interop: run the ``neurobench`` package's metrics on a multispike model, next to
``multispike eval``'s own numbers.

:func:`neurobench_metrics` wraps a multispike network as a NeuroBench model (:class:`NeuroBenchWrapper`: batches
arrive batch-first ``[B, T, ...]`` as NeuroBench's data loaders give them, neuron state is reset per batch,
multispike's neurons are registered as activation layers) and runs NeuroBench's ``Footprint``,
``ConnectionSparsity``, ``ActivationSparsity`` and ``SynapticOperations``. :func:`compare_with_neurobench` runs
:func:`multispike.metrics.evaluate` (what ``multispike eval`` runs) on the same data and lines the numbers up.

Where the conventions agree - and so the numbers must be equal:

* **Footprint**: bytes of all parameters and buffers (NeuroBench's definition; multispike's thresholds and
  initial membranes are buffers and counted by both).
* **Activation sparsity**: zero outputs / all outputs of the spiking layers over every step and sample. multispike
  reports ``1 − spike_rate`` with ``spike_rate = active lanes / (neurons·T)``; for binary and count (M-HT/LM-HT)
  neurons an active lane is a non-zero output, as NeuroBench counts.
* **Synaptic operations**: NeuroBench's ``Effective_ACs``/``Effective_MACs``/``Dense`` equal multispike's
  ``neurobench_effective_acs``/``neurobench_effective_macs``/``neurobench_dense`` (a re-implementation of the same
  rule); for a binary-spike network with no zero weights they also equal multispike's own value-weighted ``acs``.

Where they differ, and why:

* **Multi-level spikes** (M-HT/LM-HT counts, θ-payload IF outputs with θ ≠ 1): NeuroBench treats an input as
  spiking only if every value is in {−1, 0, 1}, and binarises it, so a spike of count k costs one operation, and a
  layer fed by counts ≥ 2 (or by θ-scaled spikes) is counted as MACs. multispike charges k accumulates for a count
  of k (value-weighted, as sinabs and the hardware that accumulates k times do).
* **One-hot M-LIF lanes**: NeuroBench sees the merged output (one value per neuron), multispike counts the active
  lanes (up to S per neuron and step), so activation sparsity and ops differ whenever several lanes fire.
* **Pooling and residual additions**: multispike counts the additions of average pooling, ``ResidualAdd`` and
  spike-driven attention; NeuroBench counts Linear/Conv/RNN layers only.
* **Weights equal to zero**: both skip them for NeuroBench's numbers; multispike's value-weighted ``acs`` does not.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..metrics.monitors import spiking_layers
from ..neurons.base import reset_net

__all__ = ["NeuroBenchWrapper", "neurobench_metrics", "multispike_metrics", "compare_with_neurobench"]


def _require_neurobench():
    try:
        from neurobench.benchmarks import Benchmark
        from neurobench.metrics.static import ConnectionSparsity, Footprint
        from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
        from neurobench.models import TorchModel
    except ImportError as exc:  # pragma: no cover - exercised only without the peer
        raise ImportError("multispike.interop.neurobench needs NeuroBench 2.x (pip install --no-deps neurobench "
                          "snntorch tonic; see multispike's 'interop' extra)") from exc
    return Benchmark, TorchModel, (Footprint, ConnectionSparsity), (ActivationSparsity, SynapticOperations)


def NeuroBenchWrapper(net: nn.Module, *, time_major_input: bool = False):
    """A ``neurobench.models.TorchModel`` running a multispike network.

    Args:
        net: a time-major multispike network (input ``[T, B, ...]``) whose output is the prediction NeuroBench
            scores (e.g. ends in :class:`~multispike.MeanOverTime`).
        time_major_input: the data loader already yields ``[T, B, ...]``; by default batches are NeuroBench's
            batch-first ``[B, T, ...]`` and are transposed.

    Every spiking neuron class in ``net`` is registered as a NeuroBench activation module (NeuroBench itself
    knows only ``nn.ReLU``, ``nn.Sigmoid`` and snnTorch neurons), and neuron state is reset before each batch.
    """
    _, TorchModel, _, _ = _require_neurobench()

    class _Wrapper(TorchModel):
        def __init__(self) -> None:
            super().__init__(net)
            for cls in sorted({type(m) for _, m in spiking_layers(net)}, key=lambda c: c.__name__):
                self.add_activation_module(cls)

        def __call__(self, batch: torch.Tensor) -> torch.Tensor:
            reset_net(self.net)
            x = batch if time_major_input else batch.transpose(0, 1)
            return self.net(x)

    return _Wrapper()


def neurobench_metrics(net: nn.Module, loader: Iterable, *, time_major_input: bool = False) -> dict[str, Any]:
    """NeuroBench's ``Footprint``, ``ConnectionSparsity``, ``ActivationSparsity`` and ``SynapticOperations`` of
    ``net`` over ``loader`` (a ``DataLoader`` of ``(inputs, targets)``, inputs ``[B, T, ...]``), computed by the
    ``neurobench`` package itself."""
    Benchmark, _, static, workload = _require_neurobench()
    model = NeuroBenchWrapper(net, time_major_input=time_major_input)
    if not model.activation_layers():
        raise ValueError("neurobench_metrics: the network has no spiking neuron for NeuroBench to monitor")
    bench = Benchmark(model, loader, [], [], [list(static), list(workload)])
    with torch.no_grad():
        results = bench.run(quiet=True)
    model.cleanup_hooks()
    return dict(results)


def footprint_bytes(net: nn.Module) -> int:
    """Bytes of all parameters and buffers (NeuroBench's ``Footprint`` definition)."""
    return int(sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers())))


def multispike_metrics(net: nn.Module, loader: Iterable, *, T: int | None = None, time_major_input: bool = False,
                       input_events: str | None = None) -> dict[str, Any]:
    """The same quantities from :func:`multispike.metrics.evaluate` (what ``multispike eval`` reports).

    ``input_events``: ``"binary"``/``"count"`` when the inputs are spike trains (event frames), as for
    ``evaluate``.
    """
    from ..metrics.report import evaluate
    res = evaluate(net, loader, T, input_mode="time_major" if time_major_input else "batch_first",
                   input_events=input_events, energy="45nm")
    totals = res.ops["totals"]
    return {
        "footprint": footprint_bytes(net),
        "activation_sparsity": 1.0 - float(res.spikes["total"]["spike_rate"]),
        "neurobench_effective_acs": float(totals["neurobench_effective_acs"]),
        "neurobench_effective_macs": float(totals["neurobench_effective_macs"]),
        "neurobench_dense": float(totals["neurobench_dense"]),
        "value_weighted_acs": float(totals["acs"]),
        "analog_macs": float(totals["analog_macs"]),
        "dense_macs": float(totals["dense_macs"]),
        "samples": float(res.ops["samples"]),
        "result": res,
    }


def compare_with_neurobench(net: nn.Module, loader: Iterable, *, time_major_input: bool = False,
                            input_events: str | None = None, rtol: float = 1e-9) -> dict[str, Any]:
    """Run both and line the numbers up.

    Returns:
        ``{"rows": [{"metric", "neurobench", "multispike", "agree"}], "neurobench": ..., "multispike": ...}``;
        ``agree`` compares with relative tolerance ``rtol`` (the counts are sums of integers per sample).
    """
    nb = neurobench_metrics(net, loader, time_major_input=time_major_input)
    ms = multispike_metrics(net, loader, time_major_input=time_major_input, input_events=input_events)
    syn = nb["SynapticOperations"]
    pairs = [
        ("footprint (bytes)", nb["Footprint"], ms["footprint"]),
        ("activation sparsity", nb["ActivationSparsity"], ms["activation_sparsity"]),
        ("effective ACs / sample", syn["Effective_ACs"], ms["neurobench_effective_acs"]),
        ("effective MACs / sample", syn["Effective_MACs"], ms["neurobench_effective_macs"]),
        ("dense synaptic ops / sample", syn["Dense"], ms["neurobench_dense"]),
    ]
    rows = []
    for name, a, b in pairs:
        a, b = float(a), float(b)
        rows.append({"metric": name, "neurobench": a, "multispike": b,
                     "agree": abs(a - b) <= rtol * max(1.0, abs(a), abs(b))})
    return {"rows": rows, "neurobench": nb, "multispike": ms}
