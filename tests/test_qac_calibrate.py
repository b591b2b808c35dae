"""Calibration of v(0) and θ (algorithms.md §4.5): it lowers the output MSE where the SNN and its target differ,
leaves the weights alone, restores the network's structure, and rejects bad input."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from multispike.convert.calibrate import calibrate, float_reference, spiking_neurons
from multispike.convert.mixed_timestep import to_mixed_timestep_snn
from multispike.layers import MeanOverTime, SeqToANNContainer
from multispike.quant.qac import QACQuantizer

F64 = torch.float64


def _qat_cnn(t=(2.6, 2.6), alpha=0.5, seed: int = 0) -> nn.Sequential:
    """A small trained-looking QAC CNN: t = 2.6 rounds to T = 3, and α = 0.5 clips a good part of the
    pre-activations, so the SNN (exactly the quantized ANN) is far from the float ANN."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        SeqToANNContainer(nn.Conv2d(3, 8, 3, padding=1)), QACQuantizer(alpha=alpha, t=t[0]),
        SeqToANNContainer(nn.Conv2d(8, 8, 3, padding=1)), QACQuantizer(alpha=alpha, t=t[1]),
        SeqToANNContainer(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)), MeanOverTime()).to(F64)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(3.0)
    return net.eval()


def _data(batches: int = 2, batch: int = 32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(1, batch, 3, 8, 8, generator=gen, dtype=F64) for _ in range(batches)]


def test_calibration_lowers_the_mse_where_rounding_leaves_a_gap():
    ann = _qat_cnn()
    snn, conv_report = to_mixed_timestep_snn(ann)
    assert [l.T for l in conv_report.layers] == [3, 3]
    weights = {k: v.clone() for k, v in snn.state_dict().items() if "neuron" not in k}
    ann_state = {k: v.clone() for k, v in ann.state_dict().items()}
    n_params = len(list(snn.parameters()))
    report = calibrate(snn, ann, _data(), epochs=15, lr=1e-2, target="float")
    assert report.loss_after < 0.6 * report.loss_before, report
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    # weights of both networks untouched, requires_grad restored
    for k, v in snn.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k
    for k, v in ann.state_dict().items():
        assert torch.equal(v, ann_state[k]), k
    assert all(p.requires_grad for p in snn.parameters()) and all(p.requires_grad for p in ann.parameters())
    # θ and v(0) were learned (v(0) per channel, also in the first layer: BPTT through the averaging alignment)
    # and are buffers again
    assert len(list(snn.parameters())) == n_params
    for (name, nrn), row in zip(spiking_neurons(snn), report.layers):
        assert "v_init" in nrn._buffers and "v_threshold" in nrn._buffers
        assert nrn.v_init.shape == (8, 1, 1) and row["v_init_shape"] == [8, 1, 1]
        assert row["theta_after"] != row["theta_before"]
        assert not torch.equal(nrn.v_init, torch.full_like(nrn.v_init, row["v_init_before"]))
        assert nrn.detach_reset is False and nrn.surrogate_form == "difference"  # settings restored
    json.dumps(report.to_dict())
    assert "loss" in str(report)
    # the re-evaluated loss is the reported one
    with torch.no_grad():
        ref = float_reference(ann)
        x = torch.cat(_data(), 1)
        mse = 0.5 * float(((snn(x) - ref(x)) ** 2).mean())
    assert mse == pytest.approx(report.loss_after, rel=1e-9)


def test_calibration_per_layer_and_labels_and_one_shot_iterator():
    ann = _qat_cnn()
    snn, _ = to_mixed_timestep_snn(ann)
    ref = float_reference(ann)
    data = [(x, ref(x).argmax(-1)) for x in _data()]
    report = calibrate(snn, ann, iter(data), epochs=3, lr=1e-2, target="float", v_init_shape="layer")
    assert report.reference_accuracy == 1.0 and report.samples == 64 and report.batches == 2
    assert 0.0 <= report.accuracy_before <= 1.0 and 0.0 <= report.accuracy_after <= 1.0
    assert len(report.epoch_losses) == 3 and report.loss_after < report.loss_before
    assert all(m.v_init.shape == () for _, m in spiking_neurons(snn))


def test_quantized_target_with_averaging_starts_exact():
    """With aver+aver the SNN equals the quantized ANN (§4.4), so against that target there is nothing to fix."""
    ann = _qat_cnn(t=(2.0, 5.0), alpha=1.0)
    exact, _ = to_mixed_timestep_snn(ann, align="aver+aver")
    report = calibrate(exact, ann, _data(1), epochs=0, target="quantized")
    assert report.loss_before == report.loss_after and report.loss_before < 1e-24
    assert report.accuracy_before is None and report.epoch_losses == []


def test_a_learnable_threshold_keeps_its_parameter_object():
    ann = _qat_cnn()
    snn, _ = to_mixed_timestep_snn(ann)
    nrn = spiking_neurons(snn)[0][1]
    theta = nn.Parameter(nrn.v_threshold.clone())
    nrn.v_threshold = theta
    report = calibrate(snn, ann, _data(1), epochs=2, lr=1e-2, target="float")
    assert nrn.v_threshold is theta and theta.item() == pytest.approx(report.layers[0]["theta_after"])
    assert theta.item() != report.layers[0]["theta_before"] and theta.requires_grad


def test_static_images_with_add_time_dim():
    ann = _qat_cnn()
    snn, _ = to_mixed_timestep_snn(ann)
    data = [x[0] for x in _data()]  # [B, C, H, W]
    report = calibrate(snn, ann, data, epochs=1, lr=1e-3, target="float", add_time_dim=True, eval_iter=data[:1])
    assert report.samples == 32 and report.loss_after < report.loss_before


def test_calibrating_a_network_without_spiking_layers_is_an_error():
    ann = _qat_cnn()
    with pytest.raises(ValueError, match="Sequential has no spiking layers"):
        calibrate(ann, ann, _data(1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(target="fp32"), "target"), (dict(v_init_shape="neuron"), "v_init_shape"), (dict(epochs=-1), "epochs"),
    (dict(epochs=1.5), "epochs"), (dict(lr=0.0), "lr"), (dict(surrogate_form="x"), "surrogate_form"),
    (dict(learn_threshold=False, learn_v_init=False), "nothing to learn")])
def test_bad_calibration_arguments(kwargs, match):
    ann = _qat_cnn()
    snn, _ = to_mixed_timestep_snn(ann)
    with pytest.raises(ValueError, match=match):
        calibrate(snn, ann, _data(1), **kwargs)


def test_quantized_target_needs_a_quantized_ann():
    ann = _qat_cnn()
    snn, _ = to_mixed_timestep_snn(ann)
    with pytest.raises(ValueError, match="target='quantized' needs the quantized ANN"):
        calibrate(snn, float_reference(ann), _data(1))
    with pytest.raises(TypeError, match="batch"):
        calibrate(snn, ann, [{"x": 1}])


def test_calibration_never_leaves_the_snn_worse_than_converted():
    """An aver+aver SNN already equals its quantized ANN; calibrating against it must not raise the loss:
    if training ends worse, the converted v(0) and θ are restored (and the report says so)."""
    ann = _qat_cnn()
    snn, _ = to_mixed_timestep_snn(ann)
    data = _data()
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    report = calibrate(snn, ann, data, epochs=3, lr=5e-2, target="quantized")
    assert report.loss_after <= report.loss_before
    if report.reverted:
        for k, v in snn.state_dict().items():
            assert torch.equal(v, before[k]), k
    again = calibrate(snn, ann, data, epochs=0, target="quantized")
    assert again.loss_before == pytest.approx(report.loss_after, abs=1e-20)
