"""Hybrid initialisation of an M-LIF SNN from a trained ANN (algorithms.md §5.6)."""
from __future__ import annotations

import warnings

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
    snn, report = mlif_hybrid_init(ann, [x, x * 100], lanes=3, threshold_init="percentile",
                                   payload_scale="unit")                           # only the first batch is used
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
    # no dropout modules in this MLP: dropout only where the architecture has it, none inside the neurons
    assert snn.training and snn[1].dropout == 0.0 and snn[1].lanes == 3 and not report.dropout_modules
    assert snn[1].payload_scale is None
    assert "P90" in str(report) and report.to_dict()["layers"][0]["theta"] == theta1


def test_top_edge_variant_and_scaled_lanes():
    x = torch.randn(1, 64, 4, generator=torch.Generator().manual_seed(2)) * 3
    _, report = mlif_hybrid_init(_mlp(), [x], lanes=3, threshold_init="percentile_topedge", scale=0.4)
    assert report.layers[0]["payload_scale"] == report.thresholds["1"]      # auto: a spike worth θ·2^s
    p = _rule(x, 99.7)
    assert report.q == 99.7
    assert_close(report.thresholds["1"], 0.4 * p / 4, atol=1e-7, rtol=1e-6)
    _, report = mlif_hybrid_init(_mlp(), [x], lanes=3, q=80, threshold_init="percentile",
                                 neuron_kwargs=dict(scaled=True))
    assert_close(report.thresholds["1"], _rule(x, 80) * 4, atol=1e-7, rtol=1e-6)   # lowest edge θ/4 at P80
    assert threshold_from_percentile(8.0, "percentile_topedge", lanes=3, scale=0.5) == 1.0
    assert threshold_from_percentile(8.0, "percentile_topedge", lanes=3, scaled=True) == 8.0
    assert threshold_from_percentile(8.0, "percentile", lanes=4, scale=0.5) == 4.0


def test_pooled_batches_and_neuron_options():
    xs = [torch.randn(1, 20, 4, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    snn, report = mlif_hybrid_init(_mlp(), iter(xs), num_batches=3, dropout=0.0, threshold_init="percentile",
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
    snn, report = mlif_hybrid_init(ann, [(x, torch.zeros(32))], lanes=2, threshold_init="percentile")
    assert report.folded and not report.unfolded_bn
    assert not any(isinstance(m, nn.BatchNorm1d) for m in snn.modules())
    ann.eval()
    assert_close(report.thresholds["1"], _rule(ann[0](x), 90), atol=1e-6, rtol=1e-5)


def test_relu_inside_a_time_merged_container_needs_T():
    ann = nn.Sequential(SeqToANNContainer(nn.Linear(4, 6), nn.ReLU()), SeqToANNContainer(nn.Linear(6, 2)))
    x = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="T="):
        mlif_hybrid_init(ann, [x])
    snn, report = mlif_hybrid_init(ann, [x], T=3, threshold_init="percentile")
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
        _, report = mlif_hybrid_init(ann, [x], threshold_init="percentile")
    assert report.layers[0]["theta"] == pytest.approx(0.05) and report.layers[0]["fallback"]


@pytest.mark.parametrize("mode", ["logquant", "percentile"])
def test_structure_only_build_loads_a_calibrated_state_without_warnings(mode):
    """``calibrate=False`` (a checkpoint rebuild, placeholder zeros): no capture, no fallback warning, and the same
    module tree and state keys as the calibrated init, so loading its state reproduces it exactly."""
    x = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(8)) * 2
    ann = _mlp()
    snn, _ = mlif_hybrid_init(ann, [x], lanes=3, threshold_init=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a zero batch would otherwise warn "layer input never positive"
        bare, report = mlif_hybrid_init(ann, [torch.zeros_like(x)], lanes=3, threshold_init=mode, calibrate=False)
    assert len(report.layers) == 2 and all(e["fallback"] == "not calibrated" for e in report.layers)
    assert all(e["numel"] is None and e["percentile"] is None for e in report.layers)
    sd, bare_sd = snn.state_dict(), bare.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in bare_sd.items()}
    thr = [k for k in sd if k.endswith("v_threshold")]
    assert len(thr) == 2 and any(not torch.equal(sd[k], bare_sd[k]) for k in thr)   # values differ, tree agrees
    bare.load_state_dict(sd)
    from multispike.neurons.base import reset_net
    snn.eval(), bare.eval(), reset_net(snn), reset_net(bare)
    assert torch.equal(snn(x), bare(x))
    with pytest.raises(TypeError, match="calibrate"):
        mlif_hybrid_init(ann, [x], calibrate="no")


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
    with pytest.raises(ValueError, match="payload_scale"):
        mlif_hybrid_init(_mlp(), [x], payload_scale="half")
    with pytest.raises(ValueError, match="payload_scale"):
        mlif_hybrid_init(_mlp(), [x], payload_scale=0.0)
    with pytest.raises(ValueError, match="neuron_dropout"):
        mlif_hybrid_init(_mlp(), [x], neuron_dropout=1.0)
    with pytest.raises(ValueError, match="no nn.ReLU"):
        mlif_hybrid_init(nn.Sequential(SeqToANNContainer(nn.Linear(4, 2))), [x])
    shared = nn.ReLU()
    model = nn.Sequential(SeqToANNContainer(nn.Linear(4, 4)), shared, SeqToANNContainer(nn.Linear(4, 4)), shared)
    with pytest.raises(ValueError, match="several times"):
        mlif_hybrid_init(model, [x])


# ----------------------------------------------------------------------------------------------- exact LQ mapping
def _lq_copy(ann: nn.Module, bits: int, names=("act1", "act2", "act3")) -> nn.Module:
    import copy

    from multispike.quant.logquant import LogQuant
    lq = copy.deepcopy(ann)
    for n in names:
        setattr(lq, n, nn.Sequential(nn.ReLU(), LogQuant(bits=bits)))   # MLIF-C's order: ReLU, then LogQuant
    return lq


@pytest.fixture(scope="module")
def digits():
    """A small digits CNN (the demo's) trained for a few epochs on the embedded sklearn digits, plus loaders."""
    from multispike.demo import DemoConfig, DigitsCNN, _loaders, train_classifier
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test, calib = _loaders(DemoConfig(batch_size=64))
        ann = DigitsCNN("relu")
        train_classifier(ann, train, 3, 3e-3, "ann", progress=False)
    finally:
        torch.set_num_threads(threads)
    return ann, test, calib


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_calibrated_lq_ann_maps_exactly_to_mlif_with_2b_minus_1_lanes_on_digits(digits, bits):
    from multispike.demo import evaluate_prefixes, predictions
    from multispike.quant.logquant import calibrate_log_quant

    ann, test, calib = digits
    lq = _lq_copy(ann, bits)
    calibrate_log_quant(lq, [calib[i:i + 128] for i in range(0, 512, 128)], num_batches=4)
    snn, report = mlif_hybrid_init(lq, [calib], T=1)                        # lanes=None: S = 2^b − 1 per layer
    assert report.exact and report.source == "LogQuant" and report.threshold_init == "logquant"
    for name in ("act1", "act2", "act3"):
        neuron, quant = getattr(snn, name)[1], getattr(lq, name)[1]
        assert isinstance(getattr(snn, name)[0], nn.Identity)               # the ReLU before it is redundant
        assert neuron.lanes == 2 ** bits - 1 and neuron.lane_bounds == "floor" and neuron.fire_ge
        assert_close(neuron.v_threshold.detach(), quant.alpha * 2.0 ** (1.5 - 2 ** bits), atol=0, rtol=1e-6)
        assert_close(neuron.payload_scale, 2 ** 0.5 * neuron.v_threshold.detach(), atol=0, rtol=1e-6)
    snn.set_timesteps(1)
    acc_lq, acc_snn = evaluate_prefixes(lq, test)[0], evaluate_prefixes(snn, test)[0]
    agree = (predictions(snn, test) == predictions(lq, test)).double().mean().item()
    assert acc_snn == acc_lq and agree == 1.0
    if bits >= 2:                                    # a trained net, not a chance-level one (1 bit, uncalibrated: ~20 %)
        assert acc_lq > 80.0
    # layer by layer: every M-LIF output equals the LQ output (BN folded: equal up to the fold's rounding)
    outs = {}
    hooks = [getattr(m, name).register_forward_hook(lambda mod, i, o, key=(tag, name): outs.__setitem__(key, o))
             for tag, m in (("lq", lq), ("snn", snn)) for name in ("act1", "act2", "act3")]
    from multispike.neurons.base import reset_net
    x = next(iter(test))[0]
    lq.eval(), snn.eval(), reset_net(snn)
    with torch.no_grad():
        lq(x), snn(x)
    for h in hooks:
        h.remove()
    for name in ("act1", "act2", "act3"):
        a, b = outs[("lq", name)], outs[("snn", name)]
        assert (a != b).double().mean().item() < 1e-3, name                # only float ties of the BN fold flip


def test_exact_mapping_is_bitwise_without_bn_and_reaches_identity_shortcuts():
    from multispike.neurons.base import reset_net
    from multispike.quant.logquant import LogQuant, calibrate_log_quant

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = SeqToANNContainer(nn.Linear(6, 6))
            self.act1 = LogQuant(bits=2)
            self.lin2 = SeqToANNContainer(nn.Linear(6, 6))
            self.act2 = LogQuant(bits=2)
            self.head = SeqToANNContainer(nn.Linear(6, 3))

        def forward(self, x):
            h = self.act1(self.lin1(x))
            return self.head(self.act2(self.lin2(h) + h))                  # identity shortcut consumes the spikes

    torch.manual_seed(9)
    net = Res()
    x = torch.randn(1, 4000, 6, generator=torch.Generator().manual_seed(10))
    calibrate_log_quant(net, [x], num_batches=1)
    snn, report = mlif_hybrid_init(net, [x])
    assert report.exact and [e["lanes"] for e in report.layers] == [3, 3]
    reset_net(snn)
    with torch.no_grad():
        assert torch.equal(snn(x), net(x))


def test_logquant_init_of_a_relu_ann_calibrates_alpha_like_an_lq_ann():
    ann = _mlp()
    x = torch.randn(1, 200, 4, generator=torch.Generator().manual_seed(13)) * 2
    snn, report = mlif_hybrid_init(ann, [x], lanes=3)                       # the default rule
    alpha = _rule(torch.relu(x), 99.7)                                     # layer 1 input = x; LQ statistic
    e = report.layers[0]
    assert report.threshold_init == "logquant" and report.source == "ReLU" and not report.exact
    assert e["alpha"] == pytest.approx(alpha) and e["theta"] == pytest.approx(alpha * 2 ** -2.5)
    assert e["payload_scale"] == pytest.approx(alpha / 4)
    assert snn[1].lane_bounds == "floor" and snn[1].fire_ge


def test_dropout_goes_to_the_architectures_dropout_modules_only():
    from multispike.models import create_model
    ann = create_model("resnet20_diet", num_classes=10, dropout=0.0, input_size=(3, 16, 16))
    drops = [n for n, m in ann.named_modules() if isinstance(m, nn.Dropout) or type(m).__name__ == "TimeSharedDropout"]
    assert drops                                                            # the DIET D positions exist at p = 0
    x = torch.randn(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(14))
    snn, report = mlif_hybrid_init(ann, [x], lanes=3, T=1)
    assert sorted(report.dropout_modules) == sorted(drops) and report.dropout == 0.2
    assert all(snn.get_submodule(n).p == 0.2 for n in drops)
    neurons = [m for m in snn.modules() if isinstance(m, OneHotMLIF)]
    assert neurons and all(m.dropout == 0.0 for m in neurons)             # none after the residual add
    assert snn.stages[0][0].sn2.dropout == 0.0
    snn2, _ = mlif_hybrid_init(ann, [x], lanes=3, T=1, neuron_dropout=0.1, dropout=0.0)
    assert all(m.dropout == 0.1 for m in snn2.modules() if isinstance(m, OneHotMLIF))


def test_lq_ann_with_an_unquantized_relu_is_refused():
    from multispike.quant.logquant import LogQuant
    ann = nn.Sequential(SeqToANNContainer(nn.Linear(4, 4)), nn.ReLU(), LogQuant(bits=2),
                        SeqToANNContainer(nn.Linear(4, 4)), nn.ReLU(), SeqToANNContainer(nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="un-quantized ReLU"):
        mlif_hybrid_init(ann, [torch.randn(1, 4, 4)])
