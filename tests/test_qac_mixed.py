"""Mixed-timestep execution (algorithms.md §4.3-§4.4): temporal alignment, the exact ANN ≡ SNN invariant with
averaging, the QCFS baseline with and without averaging (Table 8), residual alignment, reports, bad input."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from multispike import layers
from multispike.convert.converter import ConversionError
from multispike.convert.mixed_timestep import (AlignedNeuron, AlignedResidualAdd, fold_bn, profile_timesteps,
                                               to_mixed_timestep_snn, to_uniform_snn)
from multispike.layers import (MeanOverTime, ResidualAdd, SeqToANNContainer, TemporalAlign, align_time,
                               parse_align)
from multispike.neurons.if_lif import IFNeuron
from multispike.quant.qac import PARAMETERISATIONS, QACQuantizer, average_timestep, quantizer_summary
from multispike.quant.qcfs import QCFS

F64 = torch.float64


# ------------------------------------------------------------------------------------------- alignment
def _seq(T: int) -> torch.Tensor:
    """[T, 1, 2] with distinct, recognisable steps: step i is (i, 10·i)."""
    i = torch.arange(T, dtype=F64)
    return torch.stack([i, 10 * i], -1).unsqueeze(1)


@pytest.fixture
def fresh_uneven_warnings(monkeypatch):
    monkeypatch.setattr(layers, "_warned_uneven", set())


def test_replication_4_to_8_repeats_every_step_twice():
    out = align_time(_seq(4), 8, "repl+trunc")
    assert out[:, 0, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert_close(out[:, 0, 1], 10 * out[:, 0, 0], atol=0, rtol=0)


def test_replication_4_to_5_is_uneven_and_warns(fresh_uneven_warnings):
    with pytest.warns(UserWarning, match="uneven"):
        out = align_time(_seq(4), 5, "repl+aver")
    assert out[:, 0, 0].tolist() == [0, 0, 1, 2, 3]  # X̂[t] = X[⌊t·4/5⌋]: step 0 twice


def test_truncation_8_to_3_keeps_the_first_steps():
    assert align_time(_seq(8), 3, "repl+trunc")[:, 0, 0].tolist() == [0, 1, 2]
    assert align_time(_seq(8), 3, "aver+trunc")[:, 0, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("T_in, T_out", [(4, 8), (4, 5), (8, 3), (3, 3), (1, 4)])
def test_averaging_broadcasts_the_mean(T_in, T_out):
    x = _seq(T_in)
    out = align_time(x, T_out, "aver+aver")
    assert out.shape == (T_out, 1, 2)
    assert_close(out, x.mean(0, keepdim=True).expand(T_out, 1, 2), atol=0, rtol=0)
    assert out[:, 0, 0].tolist() == [(T_in - 1) / 2] * T_out


def test_equal_T_alignment_and_module_form(fresh_uneven_warnings):
    x = _seq(3)
    assert align_time(x, 3, "repl+trunc") is x  # replication and truncation are the identity at equal T
    assert_close(align_time(x, 3, "aver+trunc"), x.mean(0, keepdim=True).expand(3, 1, 2))  # "QCFS + aver"
    mod = TemporalAlign(5, "repl+trunc")
    with pytest.warns(UserWarning, match="uneven"):
        assert_close(mod(_seq(4)), align_time(_seq(4), 5, "repl+trunc"), atol=0, rtol=0)
    assert parse_align(" Aver + Trunc ") == ("aver", "trunc")


def test_residual_add_aligns_shortcut_and_aligned_residual_add_aligns_both():
    x, sc = _seq(2), _seq(4)
    assert_close(ResidualAdd("repl+trunc")(x, sc), x + sc[:2], atol=0, rtol=0)
    add = AlignedResidualAdd("repl+trunc", T=8)
    assert_close(add(x, sc), align_time(x, 8, "repl+trunc") + align_time(sc, 8, "repl+trunc"), atol=0, rtol=0)
    assert add(x, sc).shape[0] == 8


@pytest.mark.parametrize("mode", ["aver", "repl+", "+aver", "repl+repl", "trunc+aver", "avg+avg", 3])
def test_unknown_alignment_modes_are_rejected(mode):
    with pytest.raises(ValueError, match="alignment mode"):
        parse_align(mode)
    with pytest.raises(ValueError, match="alignment mode"):
        AlignedNeuron(IFNeuron(), 2, align=mode)


# ------------------------------------------------------------------------------------------- AlignedNeuron
def test_aligned_neuron_runs_its_own_T_and_resets_each_call():
    layer = AlignedNeuron(IFNeuron(v_threshold=1.0, v_init=0.5, payload="threshold"), T=4)
    assert layer.neuron.step_mode == "m" and layer.timesteps == 4 and layer.bit_width == 2.0
    x = torch.full((1, 3, 1), 0.5)
    y1 = layer(x)
    y2 = layer(x)  # no state carried over between calls
    assert y1.shape == (4, 3, 1) and y1[:, 0, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert_close(y1, y2, atol=0, rtol=0)
    # 3 steps averaged to a constant current of 0.5, then 4 steps
    assert_close(layer(torch.tensor([[[0.0]], [[0.5]], [[1.0]]])), y1[:, :1], atol=0, rtol=0)


def test_aligned_neuron_without_alignment():
    layer = AlignedNeuron(IFNeuron(v_threshold=1.0, v_init=0.5, payload="threshold"), T=3, align=None)
    assert layer(torch.full((1, 2), 0.7)).shape == (3, 2)  # the analog image is repeated
    seq = torch.tensor([[1.0], [0.0], [0.0]])
    assert layer(seq)[:, 0].tolist() == [1.0, 0.0, 0.0]  # consumed as is (no averaging)
    with pytest.raises(ValueError, match="T=2 steps"):
        layer(torch.zeros(2, 1))


@pytest.mark.parametrize("T", [0, -1, 1.5, "2"])
def test_timesteps_below_one_are_rejected(T):
    with pytest.raises(ValueError, match="T"):
        AlignedNeuron(IFNeuron(), T)


# ------------------------------------------------------------------------------------------- the strong invariant
class ResNetTiny(nn.Module):
    """Time-major CNN with a residual block: stem -Q1- conv1 -Q2- conv2 (+ shortcut) -Q3- pool, FC, time mean."""

    def __init__(self, Ts=(2, 5, 3), alphas=(1.0, 2.0, 1.5), param="t_alpha", inner=False, act=None):
        super().__init__()

        def q(i):
            return act(i) if act is not None else QACQuantizer(param, alpha=alphas[i], t=float(Ts[i]))
        self.stem = SeqToANNContainer(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.q1 = q(0)
        self.inner = inner
        if inner:  # the quantizer inside the container, as zoo models may place it
            self.conv1 = SeqToANNContainer(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), q(1))
        else:
            self.conv1 = SeqToANNContainer(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
            self.q2 = q(1)
        self.conv2 = SeqToANNContainer(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.shortcut = nn.Sequential()  # the usual identity shortcut: an empty container
        self.add = ResidualAdd()
        self.q3 = q(2)
        self.head = SeqToANNContainer(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
        self.readout = MeanOverTime()

    def forward(self, x):
        x = self.q1(self.stem(x))
        y = self.conv1(x) if self.inner else self.q2(self.conv1(x))
        x = self.q3(self.add(self.conv2(y), self.shortcut(x)))
        return self.readout(self.head(x))


def _make_net(seed: int = 0, **kw) -> ResNetTiny:
    torch.manual_seed(seed)
    net = ResNetTiny(**kw).to(F64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.5, generator=gen)
    return net.eval()


def _input(seed: int = 1, batch: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, batch, 3, 8, 8, generator=gen, dtype=F64) * 2  # the analog image, T = 1


def _record(net: nn.Module, kinds) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, m in net.named_modules():
        if isinstance(m, kinds):
            m.register_forward_hook(lambda mod, i, o, name=name: out.__setitem__(name, o.detach()))
    return out


@pytest.mark.parametrize("param", PARAMETERISATIONS)
@pytest.mark.parametrize("inner", [False, True])
def test_mixed_timestep_snn_equals_quantized_ann_exactly(param, inner):
    """§4.4: aver+aver, integer T_l (2, 5, 3), v(0) = θ/2, round-half-up Q -> layer by layer equality: every
    neuron's spike count equals the quantizer's integer level, and its time-mean payload equals Q."""
    ann = _make_net(param=param, inner=inner)
    x = _input()
    snn, report = to_mixed_timestep_snn(ann, align="aver+aver", example_input=x)
    assert [l.T for l in report.layers] == [2, 5, 3]
    ann_acts = _record(ann, QACQuantizer)
    snn_acts = _record(snn, AlignedNeuron)
    y_ann, y_snn = ann(x), snn(x)
    quantizers = dict(ann.named_modules())
    for layer in report.layers:
        q = quantizers[layer.source]
        spikes = snn_acts[layer.name]                     # [T_l, B, C, H, W] payloads θ·s
        assert spikes.shape[0] == layer.T and layer.theta == q.alpha and layer.v_init == q.alpha / 2
        q_out = ann_acts[layer.source].reshape(spikes.shape[1:])
        levels = torch.floor(q_out * q.timesteps / q.alpha_tensor() + 0.5)
        counts = (spikes != 0).to(F64).sum(0)
        assert_close(counts, levels, atol=0, rtol=0)
        assert_close(spikes.mean(0), q_out, atol=0, rtol=0)
        assert 0 < float(counts.mean()) < layer.T  # the layer is neither silent nor saturated
    assert_close(y_snn, y_ann, atol=1e-12, rtol=0)
    assert report.average_T == pytest.approx(10 / 3)


def test_conversion_replaces_modules_and_reports():
    ann = _make_net(inner=True)
    x = _input(batch=2)
    snn, report = to_mixed_timestep_snn(ann, example_input=x)
    assert ann.q1.__class__ is QACQuantizer  # the QAT model is not modified
    assert isinstance(snn.q1, AlignedNeuron) and isinstance(snn.q1.neuron, IFNeuron)
    nrn = snn.q1.neuron
    assert (nrn.v_reset, nrn.fire_ge, nrn.payload, nrn.v_threshold.dtype) == (None, True, "threshold", F64)
    # the container holding a quantizer was split around the new spiking layer
    assert [type(m).__name__ for m in snn.conv1] == ["SeqToANNContainer", "AlignedNeuron"]
    assert [l.name for l in report.layers] == ["q1", "conv1.1", "q3"]
    assert [l.source for l in report.layers] == ["q1", "conv1.2", "q3"]
    assert len(report.folded_bn) == 3 and report.unfolded_bn == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    # ops: stem conv 3->8 (8·8·8·3·9), conv1 8->8, conv2 8->8 charged to q3; the FC is the readout
    stem, conv = 8 * 8 * 8 * 3 * 9, 8 * 8 * 8 * 8 * 9
    assert [l.ops for l in report.layers] == [stem, conv, conv]
    assert report.readout_ops == 8 * 4 * 4 * 10
    assert [l.T_in for l in report.layers] == [1, 2, 3]  # q3's input is the sum, aligned to T=3 by the add
    assert report.average_T_op_weighted == pytest.approx((2 * stem + 5 * conv + 3 * conv) / (stem + 2 * conv))
    assert average_timestep(snn).plain == pytest.approx(report.average_T)
    assert [r["T"] for r in quantizer_summary(snn)] == [2, 5, 3]
    assert report.residual_adds == [{"name": "add", "align": "aver+aver", "T": 3}]
    json.dumps(report.to_dict())
    assert "average T = 3.333" in str(report)


def test_fold_bn_does_not_change_the_snn():
    ann = _make_net()
    x = _input()
    folded, r1 = to_mixed_timestep_snn(ann, fold_bn=True)
    kept, r2 = to_mixed_timestep_snn(ann, fold_bn=False)
    assert len(r1.folded_bn) == 3 and len(r2.unfolded_bn) == 3
    assert_close(folded(x), kept(x), atol=1e-12, rtol=0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(F64).eval()
    net[1].running_mean.fill_(0.3)
    z = torch.randn(5, 3, dtype=F64)
    before = net(z)
    assert fold_bn(net) == [{"synapse": "0", "bn": "1"}]
    assert_close(net(z), before, atol=1e-14, rtol=1e-14)


def test_residual_shortcut_is_aligned_to_the_consuming_neuron():
    """Without averaging the placement matters: before the addition the branch (T=5) is truncated and the
    shortcut (T=2) replicated to the T=3 of the neuron that consumes the sum (§4.4)."""
    ann = _make_net()
    x = _input(batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snn, report = to_mixed_timestep_snn(ann, align="repl+trunc", example_input=x)
    assert isinstance(snn.add, AlignedResidualAdd) and snn.add.T == 3 and snn.add.align == "repl+trunc"
    branch = snn.conv2(snn.q2(snn.conv1(snn.q1(snn.stem(x)))))
    shortcut = snn.q1(snn.stem(x))
    expected = align_time(branch, 3, "repl+trunc") + align_time(shortcut, 3, "repl+trunc")
    assert_close(snn.add(branch, shortcut), expected, atol=0, rtol=0)
    # without an example input the add keeps aligning the shortcut to the branch (same for averaging)
    snn2, report2 = to_mixed_timestep_snn(ann, align="repl+trunc")
    assert type(snn2.add) is ResidualAdd and snn2.add.align == "repl+trunc"
    assert report2.average_T_op_weighted is None and report2.layers[0].ops is None


def test_uneven_replication_is_reported(fresh_uneven_warnings):
    ann = _make_net()
    with pytest.warns(UserWarning, match="uneven"):
        _, report = to_mixed_timestep_snn(ann, align="repl+aver", example_input=_input(batch=1))
    assert [l.uneven_replication for l in report.layers] == [False, True, False]  # 2 -> 5
    assert any("uneven" in n for n in report.notes)


# ------------------------------------------------------------------------------------------- QCFS baseline
def _qcfs_mlp(levels: int = 4, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        SeqToANNContainer(nn.Linear(6, 32)), QCFS(levels, 1.0),
        SeqToANNContainer(nn.Linear(32, 32)), QCFS(levels, 1.5),
        SeqToANNContainer(nn.Linear(32, 32)), QCFS(levels, 1.0),
        SeqToANNContainer(nn.Linear(32, 5)), MeanOverTime()).to(F64).eval()


def test_qcfs_with_averaging_is_exact_and_plain_is_not():
    """Table 8 setting, T = L = 4: averaging removes the multi-layer conversion error; plain QCFS conversion is
    exact only in the first layer (constant input) and not in general."""
    ann = _qcfs_mlp(4)
    x = torch.randn(1, 64, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    ann_acts = _record(ann, QCFS)
    y_ann = ann(x)
    aver, rep_a = to_uniform_snn(ann, 4, align="aver+aver")
    plain, rep_p = to_uniform_snn(ann, 4, align=None)
    assert [l.T for l in rep_a.layers] == [4, 4, 4] and rep_p.align is None
    aver_acts = _record(aver, AlignedNeuron)
    plain_acts = _record(plain, AlignedNeuron)
    y_aver, y_plain = aver(x), plain(x)
    assert sorted(ann_acts) == sorted(aver_acts) == sorted(plain_acts) == ["1", "3", "5"]
    for name, q_out in ann_acts.items():
        spikes = aver_acts[name]
        assert spikes.shape[0] == 4
        assert_close(spikes.mean(0), q_out.reshape(spikes.shape[1:]), atol=0, rtol=0)
    assert_close(y_aver, y_ann, atol=1e-12, rtol=0)
    first = plain_acts["1"].mean(0)
    assert_close(first, ann_acts["1"].reshape(first.shape), atol=0, rtol=0)
    assert not torch.equal(plain_acts["3"].mean(0), ann_acts["3"].reshape(first.shape))
    assert (y_plain - y_ann).abs().max() > 1e-3


def test_uniform_snn_at_other_T_and_from_qac():
    ann = _qcfs_mlp(8)
    x = torch.randn(1, 16, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    snn, report = to_uniform_snn(ann, 2, align="aver+aver", example_input=x)
    assert snn(x).shape == (16, 5) and report.average_T == 2 and report.average_T_op_weighted == 2
    qat = _make_net()
    snn, report = to_uniform_snn(qat, 4, align="aver+aver")
    assert [l.T for l in report.layers] == [4, 4, 4]
    with pytest.raises(ValueError, match="T must be >= 1"):
        to_uniform_snn(ann, 0)


# ------------------------------------------------------------------------------------------- bad input
class _FunctionalReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = SeqToANNContainer(nn.Linear(4, 4))
        self.q = QACQuantizer(t=2.0)

    def forward(self, x):
        return self.q(F.relu(self.fc(x)))


@pytest.mark.parametrize("model, match", [
    (nn.Sequential(SeqToANNContainer(nn.Linear(2, 2))), "no QACQuantizer or QCFS"),
    (nn.Sequential(SeqToANNContainer(nn.Linear(2, 2)), QACQuantizer(), nn.ReLU()), r"2 \(ReLU\)"),
    (nn.Sequential(QACQuantizer(), SeqToANNContainer(nn.MaxPool2d(2))), r"1\.0 \(MaxPool2d\)"),
    (nn.Sequential(QACQuantizer(), nn.Tanh()), r"1 \(Tanh\)"),
    (nn.Sequential(QACQuantizer(), SeqToANNContainer(nn.LayerNorm(2))), r"1\.0 \(LayerNorm\)"),
    (nn.Sequential(QACQuantizer(), IFNeuron(step_mode="m")), "already contains spiking"),
    (_FunctionalReLUNet(), "functional ReLU"),
])
def test_models_the_converter_cannot_handle(model, match):
    with pytest.raises(ConversionError, match=match):
        to_mixed_timestep_snn(model)


@pytest.mark.parametrize("kwargs, match", [(dict(align="aver"), "alignment mode"),
                                           (dict(align="repl+repl"), "alignment mode"),
                                           (dict(v_init="third"), "v_init"), (dict(v_init=float("nan")), "v_init")])
def test_bad_conversion_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        to_mixed_timestep_snn(_make_net(), **kwargs)


def test_v_init_options_and_profile():
    ann = _make_net()
    snn, report = to_mixed_timestep_snn(ann, v_init="zero")
    assert [l.v_init for l in report.layers] == [0.0, 0.0, 0.0]
    snn, report = to_mixed_timestep_snn(ann, v_init=0.25)
    assert report.layers[1].v_init == pytest.approx(0.5)
    prof = profile_timesteps(snn, _input(batch=1))
    assert set(prof["ops"]) == {"q1", "q2", "q3"} and prof["consumer"] == {"add": "q3"}
    assert math.isclose(prof["readout_ops"], 1280.0)


# ------------------------------------------------------------------------------------------- zoo integration
def test_zoo_resnet_trained_with_qac_converts_exactly():
    """A zoo model built with neuron='qac' (TimeMajorModel: stem once, DirectEncoder, ResidualAdd blocks):
    prepare/convert work on it, the converter sets its encoder to one step, and the SNN equals the QAT model."""
    from multispike.models.registry import create_model
    from multispike.quant.qat import find_functional_activations

    torch.manual_seed(0)
    model = create_model("resnet8_cifar", num_classes=10, neuron="qac", T=1, input_size=(3, 16, 16)).to(F64).eval()
    assert find_functional_activations(model) == []  # traced through forward_body
    gen = torch.Generator().manual_seed(0)
    for i, q in enumerate(m for m in model.modules() if isinstance(m, QACQuantizer)):
        with torch.no_grad():
            q.t.fill_((2.0, 5.0, 3.0, 4.0, 1.0, 6.0)[i % 6])
            q.clip.fill_(1.0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
    x = torch.rand(2, 3, 16, 16, generator=gen, dtype=F64)
    snn, report = to_mixed_timestep_snn(model, example_input=x)
    assert len(report.layers) == sum(isinstance(m, QACQuantizer) for m in model.modules())
    assert report.layers[0].T_in == 1 and len({l.T for l in report.layers}) > 3
    assert all(r["T"] is not None for r in report.residual_adds)
    assert_close(snn(x), model(x), atol=1e-12, rtol=0)
