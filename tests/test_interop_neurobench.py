"""multispike's metrics vs the installed ``neurobench`` package (issue 17; runs in CI via the 'interop' extra)."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import multispike as ms

pytest.importorskip("neurobench.benchmarks", reason="NeuroBench is in the 'interop' test extra (make test installs it)")
from multispike.interop.neurobench import compare_with_neurobench, neurobench_metrics  # noqa: E402


def _loader(analog: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(12, 6, 2, 8, 8, generator=g)  # NeuroBench's batch-first [B, T, C, H, W]
    if not analog:
        x = (x < 0.3).float()  # event frames: a binary spike train
    y = torch.randint(0, 5, (12,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _net(second_neuron: nn.Module, zero_weights: bool = False):
    torch.manual_seed(0)
    net = nn.Sequential(ms.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1)), ms.IFNode(step_mode="m"),
                        ms.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 8 * 8, 5)), second_neuron,
                        ms.MeanOverTime())
    if zero_weights:
        with torch.no_grad():
            net[2][1].weight[:, ::3] = 0.0
    return net


def _rows(result):
    return {r["metric"]: r for r in result["rows"]}


def test_binary_spike_network_agrees_with_neurobench_on_every_metric():
    net = _net(ms.IFNode(step_mode="m", v_threshold=0.5))
    res = compare_with_neurobench(net, _loader(), input_events="binary")
    rows = _rows(res)
    assert all(r["agree"] for r in res["rows"]), res["rows"]
    nb, ours = res["neurobench"], res["multispike"]
    assert 0.5 < rows["activation sparsity"]["neurobench"] < 1.0          # spikes occur: not a vacuous match
    assert nb["SynapticOperations"]["Effective_ACs"] > 0 and nb["SynapticOperations"]["Effective_MACs"] == 0
    # binary spikes, no zero weights: multispike's value-weighted count is NeuroBench's effective ACs
    assert ours["value_weighted_acs"] == pytest.approx(nb["SynapticOperations"]["Effective_ACs"], rel=1e-12)
    # footprint by hand: conv 2*4*9+4, linear 256*5+5, and θ, v_init of both neurons, all float32
    assert nb["Footprint"] == 4 * (2 * 4 * 9 + 4 + 256 * 5 + 5 + 4)


def test_analog_input_and_zero_weights_follow_neurobench_rules():
    net = _net(ms.IFNode(step_mode="m", v_threshold=0.5), zero_weights=True)
    res = compare_with_neurobench(net, _loader(analog=True))
    assert all(r["agree"] for r in res["rows"]), res["rows"]
    syn = res["neurobench"]["SynapticOperations"]
    assert syn["Effective_MACs"] > 0  # the first conv sees analog frames: MACs in both
    # zero weights are no operation for NeuroBench; multispike's value-weighted count still charges them
    assert res["multispike"]["value_weighted_acs"] > syn["Effective_ACs"]


def test_multilevel_spikes_are_where_the_conventions_differ():
    # an M-HT neuron emits counts up to 3: NeuroBench sees values outside {-1, 0, 1}, so the layer it feeds
    # is counted as MACs with binarised inputs; multispike charges k accumulates for a count of k.
    torch.manual_seed(0)
    net = nn.Sequential(ms.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1)),
                        ms.MHTNeuron(levels=3, v_threshold=0.25, step_mode="m"),
                        ms.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 8 * 8, 5)), ms.IFNode(step_mode="m"),
                        ms.MeanOverTime())
    res = compare_with_neurobench(net, _loader(), input_events="binary")
    assert all(r["agree"] for r in res["rows"]), res["rows"]  # our NeuroBench re-implementation still matches
    syn, ours = res["neurobench"]["SynapticOperations"], res["multispike"]
    assert syn["Effective_MACs"] > 0  # the linear layer, fed by counts, is "not spiking" for NeuroBench
    layers = {l["name"]: l for l in ours["result"].ops["layers"]}
    lin = layers["2.1"]
    assert lin["input_spiking"] and lin["acs"] > lin["nb_effective"]  # counts > 1 cost more than one AC


def test_network_without_neurons_is_a_clear_error():
    with pytest.raises(ValueError, match="no spiking neuron"):
        neurobench_metrics(nn.Sequential(ms.SeqToANNContainer(nn.Flatten(), nn.Linear(128, 5)), ms.MeanOverTime()),
                           _loader())
