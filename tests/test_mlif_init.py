"""Hybrid initialisation of an M-LIF SNN from a trained ANN (algorithms.md §5.6)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from multispike.convert.converter import MergedTimeNeuron
from multispike.convert.mlif_init import mlif_hybrid_init, threshold_from_percentile
from multispike.layers import SeqToANNContainer
from multispike.neurons.mlif import OneHotMLIF, mlif_multistep


def _rule(values: torch.Tensor, q: float) -> float:
    """The percentile rule k = 1 + round(0.01·q·(n−1)), by sorting (independent of kthvalue)."""
    flat = sorted(values.reshape(-1).tolist())
    return flat[1 + round(0.01 * q * (len(flat) - 1)) - 1]


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    lin1 = nn.Linear(4, 4)
    lin2 = nn.Linear(4, 3)
    with torch.no_grad():
        lin1.weight.copy_(torch.eye(4))
        lin1.bias.zero_()
        lin2.weight.copy_(torch.tensor([[1.0, 0.5, -1.0, 2.0], [0.25, 1.0, 1.0, -0.5], [2.0, -1.0, 0.5, 1.0]]))
        lin2.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return nn.Sequential(SeqToANNContainer(lin1), nn.ReLU(), SeqToANNContainer(lin2), nn.ReLU(),
                         SeqToANNContainer(nn.Linear(3, 2)))


def test_thresholds_are_set_layer_by_layer_with_earlier_layers_spiking():
    ann = _mlp()
    x = torch.randn(2, 50, 4, generator=torch.Generator().manual_seed(1)) * 2      # [T, B, 4]
    snn, report = mlif_hybrid_init(ann, [x, x * 100], lanes=3)                      # only the first batch is used
    assert isinstance(snn[1], OneHotMLIF) and isinstance(snn[3], OneHotMLIF)
    assert isinstance(ann[1], nn.ReLU)                                             # the ANN is untouched
    theta1 = _rule(x, 90)                                                          # layer 1 input = x exactly
    assert report.thresholds["1"] == theta1 == float(snn[1].v_threshold.detach())
    o1, _, _ = mlif_multistep(x, lanes=3, v_threshold=torch.tensor(theta1), leak=torch.tensor(1.0))
    theta2 = _rule(ann[2](o1), 90)
    assert report.thresholds["3"] == theta2 == float(snn[3].v_threshold.detach())
    # the ANN-based statistic differs: the second threshold really saw the spiking first layer
    assert abs(_rule(ann[2](torch.relu(x)), 90) - theta2) > 1e-3
    assert list(report.thresholds) == ["1", "3"] and report.num_batches == 1
    entry = report.layers[1]
    assert entry["numel"] == 2 * 50 * 3 and entry["percentile"] == theta2 and not entry["fallback"]
    assert snn.training and snn[1].dropout == 0.2 and snn[1].lanes == 3
    assert "P90" in str(report) and report.to_dict()["layers"][0]["theta"] == theta1


def test_top_edge_variant_and_scaled_lanes():
    x = torch.randn(1, 64, 4, generator=torch.Generator().manual_seed(2)) * 3
    _, report = mlif_hybrid_init(_mlp(), [x], lanes=3, threshold_init="percentile_topedge", scale=0.4)
    p = _rule(x, 99.7)
    assert report.q == 99.7
    assert_close(report.thresholds["1"], 0.4 * p / 4, atol=1e-7, rtol=1e-6)
    _, report = mlif_hybrid_init(_mlp(), [x], lanes=3, q=80, neuron_kwargs=dict(scaled=True))
    assert_close(report.thresholds["1"], _rule(x, 80) * 4, atol=1e-7, rtol=1e-6)   # lowest edge θ/4 at P80
    assert threshold_from_percentile(8.0, "percentile_topedge", lanes=3, scale=0.5) == 1.0
    assert threshold_from_percentile(8.0, "percentile_topedge", lanes=3, scaled=True) == 8.0
    assert threshold_from_percentile(8.0, "percentile", lanes=4, scale=0.5) == 4.0


def test_pooled_batches_and_neuron_options():
    xs = [torch.randn(1, 20, 4, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    snn, report = mlif_hybrid_init(_mlp(), iter(xs), num_batches=3, dropout=0.0,
                                   neuron_kwargs=dict(reset="hard", leak=0.5, learnable_leak=False))
    assert report.thresholds["1"] == _rule(torch.cat(xs, 1), 90)
    assert snn[1].reset_mode == "hard" and float(snn[1].leak) == 0.5 and snn[1].dropout == 0.0


def test_batchnorm_is_folded_before_calibration():
    torch.manual_seed(3)
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -0.5, 1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 2.0]))
        bn.weight.copy_(torch.tensor([1.5, 0.5, 2.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.0]))
    ann = nn.Sequential(SeqToANNContainer(nn.Linear(4, 4), bn), nn.ReLU(), SeqToANNContainer(nn.Linear(4, 2)))
    x = torch.randn(2, 32, 4, generator=torch.Generator().manual_seed(4))
    snn, report = mlif_hybrid_init(ann, [(x, torch.zeros(32))], lanes=2)
    assert report.folded and not report.unfolded_bn
    assert not any(isinstance(m, nn.BatchNorm1d) for m in snn.modules())
    ann.eval()
    assert_close(report.thresholds["1"], _rule(ann[0](x), 90), atol=1e-6, rtol=1e-5)


def test_relu_inside_a_time_merged_container_needs_T():
    ann = nn.Sequential(SeqToANNContainer(nn.Linear(4, 6), nn.ReLU()), SeqToANNContainer(nn.Linear(6, 2)))
    x = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="T="):
        mlif_hybrid_init(ann, [x])
    snn, report = mlif_hybrid_init(ann, [x], T=3)
    assert isinstance(snn[0][1], MergedTimeNeuron) and snn[0][1].T == 3
    assert report.thresholds["0.1"] == _rule(ann[0][0](x.flatten(0, 1)), 90)
    snn.eval()
    assert snn(x).shape == (3, 8, 2)


def test_the_snn_trains_after_init():
    x = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(6)) * 2
    snn, _ = mlif_hybrid_init(_mlp(), [x], lanes=3)
    from multispike.neurons.base import reset_net
    reset_net(snn)
    snn(x).sum().backward()
    assert snn[1].v_threshold.grad is not None and snn[1].leak.grad is not None


def test_dead_layer_falls_back_with_a_warning():
    ann = _mlp()
    x = -torch.rand(1, 40, 4, generator=torch.Generator().manual_seed(7)) - 0.1     # never positive
    x[0, 0, 0] = 0.05
    with pytest.warns(UserWarning, match="P90"):
        _, report = mlif_hybrid_init(ann, [x])
    assert report.layers[0]["theta"] == pytest.approx(0.05) and report.layers[0]["fallback"]


def test_bad_input():
    x = torch.randn(1, 4, 4)
    with pytest.raises(ValueError, match="threshold_init"):
        mlif_hybrid_init(_mlp(), [x], threshold_init="p90")
    with pytest.raises(ValueError, match="q"):
        mlif_hybrid_init(_mlp(), [x], q=0)
    with pytest.raises(ValueError, match="scale"):
        mlif_hybrid_init(_mlp(), [x], scale=-1)
    with pytest.raises(ValueError, match="lanes"):
        mlif_hybrid_init(_mlp(), [x], lanes=0)
    with pytest.raises(ValueError, match="v_threshold"):
        mlif_hybrid_init(_mlp(), [x], neuron_kwargs=dict(v_threshold=2.0))
    with pytest.raises(ValueError, match="no batch"):
        mlif_hybrid_init(_mlp(), [])
    with pytest.raises(ValueError, match="no nn.ReLU"):
        mlif_hybrid_init(nn.Sequential(SeqToANNContainer(nn.Linear(4, 2))), [x])
    shared = nn.ReLU()
    model = nn.Sequential(SeqToANNContainer(nn.Linear(4, 4)), shared, SeqToANNContainer(nn.Linear(4, 4)), shared)
    with pytest.raises(ValueError, match="several times"):
        mlif_hybrid_init(model, [x])
