"""LM-HT conversions: hybrid init == QCFS with L·T levels (§2.9 item 3), IF == QCFS (§3.2), reparameterisation
to an L·T-step IF network (§2.9 item 4), SOP equality (item 7) and the refusals."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from multispike.convert.lmht import (ExpandTime, ReparameterizationError, convert_qcfs_to_if, convert_qcfs_to_lmht,
                                     expand_time, lmht_from_qcfs, reparameterization_report, reparameterize_lmht)
from multispike.layers import DirectEncoder, MeanOverTime, SeqToANNContainer
from multispike.neurons import IFNeuron, reset_net
from multispike.neurons.lmht import LMHTNeuron, MHTNeuron, ReparameterizedIF, expand_tgim
from multispike.quant.qcfs import QCFS


def exact(a, b):
    assert_close(a, b, atol=0.0, rtol=0.0)


def capture(model, types):
    """Forward hooks recording the outputs of every module of ``types`` (in registration order)."""
    outs, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, types):
            handles.append(m.register_forward_hook(lambda _m, _i, o, name=name: outs.__setitem__(name, o)))
    return outs, handles


# ================================================================ QCFS -> IF (§3.2)
@pytest.mark.parametrize("T", [1, 2, 4, 8, 16])
def test_if_with_half_threshold_start_equals_qcfs_with_T_levels(T):
    theta = 2.0
    z = torch.arange(-256, 2 * 256 + 256, dtype=torch.float64) / 256 * theta / 2   # includes the rounding ties
    ann = nn.Sequential(QCFS(levels=T, threshold=theta)).double()
    snn = convert_qcfs_to_if(ann, T=T)
    assert isinstance(snn[0], IFNeuron) and snn[0].v_threshold.dtype == torch.float64
    exact(snn(z.expand(T, -1).clone()).mean(0), ann(z).detach())


def test_if_identity_counts_for_non_dyadic_T():
    T, theta = 3, 1.0
    z = torch.arange(-64, 192, dtype=torch.float64) / 128
    snn = convert_qcfs_to_if(nn.Sequential(QCFS(levels=T, threshold=theta)), T=T)
    counts = snn(z.expand(T, -1).clone()).sum(0) / theta
    exact(counts, torch.clamp(torch.floor(z * T / theta + 0.5), 0, T))


def test_if_conversion_sets_direct_encoder_and_keeps_ann():
    ann = nn.Sequential(DirectEncoder(1), SeqToANNContainer(nn.Linear(3, 4)), QCFS(levels=4, threshold=1.5),
                        SeqToANNContainer(nn.Linear(4, 2)), MeanOverTime())
    snn, rep = convert_qcfs_to_if(ann, T=16, return_report=True)
    assert snn[0].T == 16 and ann[0].T == 1 and isinstance(ann[2], QCFS)
    assert float(snn[2].v_threshold) == 1.5 and float(snn[2].v_init) == 0.75 and snn[2].payload == "threshold"
    assert rep.replaced[0]["name"] == "2" and "QCFS -> if" in str(rep)
    assert snn(torch.rand(5, 3)).shape == (5, 2)


# ================================================================ hybrid initialisation (§2.6, §2.9 item 3)
def dyadic_qcfs_net(Q, seed, final_act=False):
    """A 3-synapse conv net whose every value is dyadic, so float64 arithmetic below is exact."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4, eps=0.0)),
        QCFS(levels=Q, threshold=2.0),
        SeqToANNContainer(nn.AvgPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6, eps=0.0)),
        QCFS(levels=Q, threshold=1.0),
        SeqToANNContainer(nn.Flatten(), nn.Linear(6 * 2 * 2, 5)),
        MeanOverTime()).double()

    def dy(t, lo, hi, denom):
        t.copy_(torch.randint(lo, hi + 1, t.shape, generator=g).double() / denom)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                dy(m.weight, -4, 4, 8)
                dy(m.bias, -4, 4, 16)
            elif isinstance(m, nn.BatchNorm2d):
                dy(m.weight, 2, 8, 4)
                dy(m.bias, -4, 4, 8)
                dy(m.running_mean, -4, 4, 8)
                m.running_var.copy_(4.0 ** torch.randint(0, 3, m.running_var.shape, generator=g).double())
    return net.eval()


@pytest.mark.parametrize("L,T", [(1, 1), (2, 2), (4, 2), (2, 4), (1, 4), (8, 1)])
def test_hybrid_init_equals_qcfs_with_LT_levels_exactly(L, T):
    ann = dyadic_qcfs_net(L * T, seed=L + 10 * T)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 17, (64, 2, 4, 4), generator=g).double() / 16
    snn, rep = convert_qcfs_to_lmht(ann, levels=L, T=T, hybrid_bias_scale=L, return_report=True)
    ann_outs, h1 = capture(ann, QCFS)
    snn_outs, h2 = capture(snn, LMHTNeuron)
    with torch.no_grad():
        logits_ann = ann(x.unsqueeze(0))
        logits_snn = snn(x.expand(T, *x.shape))
    for name in ("1", "3"):                                  # every layer: (1/(LT))·Σ_t y(t) = QCFS_{LT}(z)
        exact(snn_outs[name].sum(0) / (L * T), ann_outs[name][0])
    exact(logits_snn, L * logits_ann)                        # time-mean logits are L × the ANN's
    assert rep.first_layer == "1" and snn[1].in_scale == L and snn[3].in_scale == 1.0
    expected = [] if L == 1 else ["2.1.bias", "2.2.bias", "2.2.running_mean", "4.1.bias"]
    assert rep.scaled_parameters == expected
    for h in h1 + h2:
        h.remove()


def test_hybrid_init_neuron_parameters_and_code_scale_is_inexact():
    L, T = 2, 2
    ann = dyadic_qcfs_net(L * T, seed=3)
    snn = convert_qcfs_to_lmht(ann, levels=L, T=T, hybrid_bias_scale="code")   # ×1, as LMHT-C
    n1, n3 = snn[1], snn[3]
    assert float(n1.v_threshold) == 2.0 and float(n1.v_init) == 1.0 and float(n3.v_threshold) == 1.0
    exact(n1.omega.detach(), torch.full((T, T), 1 / T, dtype=torch.float64))
    assert float(n1.leak.detach()) == 1.0 and n1.tgim == "learnable" and n1.T == T and n1.levels == L
    assert n1.v_threshold.dtype == torch.float64 and n1.tgim_mu.dtype == torch.float64
    exact(snn[2][1].bias, ann[2][1].bias)                    # nothing scaled
    x = torch.randint(0, 17, (64, 2, 4, 4), generator=torch.Generator().manual_seed(0)).double() / 16
    with torch.no_grad():
        assert not torch.equal(snn(x.expand(T, *x.shape)), L * ann(x.unsqueeze(0)))   # the §2.6 bias caveat


def test_lmht_from_qcfs_first_layer_and_shift():
    q = QCFS(levels=8, threshold=3.0, shift=0.25)
    first = lmht_from_qcfs(q, levels=4, T=3, first_layer=True, tgim="fixed", learnable_leak=False)
    hidden = lmht_from_qcfs(q, levels=4, T=3, first_layer=False)
    assert first.in_scale == 4.0 and hidden.in_scale == 1.0 and float(first.v_init) == 0.75
    assert first.tgim == "fixed" and not any(p.requires_grad for p in first.parameters())
    with pytest.raises(TypeError, match="QCFS"):
        lmht_from_qcfs(nn.ReLU(), 2, 2, True)


class ReversedRegistration(nn.Module):
    """Modules registered in the opposite order to their execution."""

    def __init__(self, Q):
        super().__init__()
        self.head = SeqToANNContainer(nn.Linear(6, 3))
        self.act2 = QCFS(levels=Q, threshold=1.0)
        self.mid = SeqToANNContainer(nn.Linear(6, 6))
        self.act1 = QCFS(levels=Q, threshold=2.0)
        self.stem = SeqToANNContainer(nn.Linear(4, 6))

    def forward(self, x):
        return self.head(self.act2(self.mid(self.act1(self.stem(x))))).mean(0)


def test_hybrid_order_from_example_input():
    L, T = 2, 2
    g = torch.Generator().manual_seed(1)
    ann = ReversedRegistration(L * T).double().eval()
    with torch.no_grad():
        for p in ann.parameters():
            if p.dim() > 0:
                p.copy_(torch.randint(-4, 5, p.shape, generator=g).double() / 8)
    x = torch.randint(0, 17, (32, 4), generator=g).double() / 16
    snn, rep = convert_qcfs_to_lmht(ann, L, T, hybrid_bias_scale="exact", example_input=x.unsqueeze(0),
                                    return_report=True)
    assert rep.order == "execution" and rep.first_layer == "act1"
    assert rep.scaled_parameters == ["mid.0.bias", "head.0.bias"]
    with torch.no_grad():
        exact(snn(x.expand(T, *x.shape)), L * ann(x.unsqueeze(0)))
    _, rep_reg = convert_qcfs_to_lmht(ann, L, T, hybrid_bias_scale=L, return_report=True)
    assert rep_reg.order == "registration" and rep_reg.first_layer == "act2"   # why example_input exists


def test_hybrid_conversion_errors():
    with pytest.raises(ValueError, match="no QCFS"):
        convert_qcfs_to_lmht(nn.Sequential(nn.ReLU()), 2, 2)
    inside = nn.Sequential(SeqToANNContainer(nn.Linear(3, 3), QCFS(4, 1.0)))
    with pytest.raises(ValueError, match="SeqToANNContainer"):
        convert_qcfs_to_lmht(inside, 2, 2)
    ln = nn.Sequential(SeqToANNContainer(nn.Linear(3, 3)), QCFS(4, 1.0), SeqToANNContainer(nn.Linear(3, 3)),
                       nn.LayerNorm(3), QCFS(4, 1.0))
    with pytest.raises(ValueError, match="LayerNorm"):
        convert_qcfs_to_lmht(ln, 2, 2, hybrid_bias_scale=2)
    with pytest.raises(ValueError, match="LayerNorm"):
        convert_qcfs_to_lmht(ln, 2, 2)                                     # the default is the exact ×L
    assert isinstance(convert_qcfs_to_lmht(ln, 2, 2, hybrid_bias_scale=1)[4], LMHTNeuron)   # code's scale 1
    bn_no_stats = nn.Sequential(QCFS(4, 1.0), SeqToANNContainer(nn.BatchNorm1d(3, track_running_stats=False)))
    with pytest.raises(ValueError, match="running statistics"):
        convert_qcfs_to_lmht(bn_no_stats, 2, 2, hybrid_bias_scale=2)
    for bad in (0, -2.0, "half"):
        with pytest.raises(ValueError, match="hybrid_bias_scale"):
            convert_qcfs_to_lmht(nn.Sequential(QCFS(4, 1.0)), 2, 2, hybrid_bias_scale=bad)
    with pytest.raises(ValueError, match="levels"):
        convert_qcfs_to_lmht(nn.Sequential(QCFS(4, 1.0)), 0, 2)
    with pytest.raises(ValueError, match="T"):
        convert_qcfs_to_lmht(nn.Sequential(QCFS(4, 1.0)), 2, 0)
    q = QCFS(4, 1.0)
    with torch.no_grad():
        q.threshold.fill_(-1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        convert_qcfs_to_lmht(nn.Sequential(q), 2, 2)


# ================================================================ reparameterisation (§2.7, §2.9 item 4)
def lmht_net(T, L, positive, seed, readout=False, encoder=False, neuron="lmht"):
    """3 synaptic layers with eval-mode BN, random Ω (μ ~ N(0,1)) and λ, hybrid-style first layer."""
    g = torch.Generator().manual_seed(seed)

    def nrn(theta, v0, first):
        if neuron == "mht":
            return MHTNeuron(L, v_threshold=theta, v_init=v0, leak=0.875, in_scale=float(L) if first else 1.0)
        return LMHTNeuron(T, L, v_threshold=theta, v_init=v0, in_scale=float(L) if first else 1.0)
    layers = [DirectEncoder(T)] if encoder else []
    layers += [SeqToANNContainer(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)), nrn(1.0, 0.5, True),
               SeqToANNContainer(nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8)), nrn(0.8, 0.1, False),
               SeqToANNContainer(nn.Flatten(), nn.Linear(8 * 16, 10))]
    if readout:
        layers.append(MeanOverTime())
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, LMHTNeuron):
                m.tgim_mu.normal_(generator=g)
                m.leak_a.normal_(generator=g)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and positive:
                m.weight.uniform_(0, 0.3, generator=g)
                m.bias.uniform_(0, 0.1, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                if positive:                                   # γ(b − μ)/σ + β >= 0: ReLU-positive currents
                    m.bias.uniform_(0, 0.2, generator=g)
                    m.running_mean.uniform_(-0.2, 0, generator=g)
                else:
                    m.bias.normal_(0, 0.3, generator=g)
                    m.running_mean.normal_(0, 0.3, generator=g)
    return net.eval()


@pytest.mark.parametrize("T,L", [(2, 2), (3, 4), (2, 3), (4, 1), (1, 5)])
def test_reparameterised_net_equals_lmht_on_positive_currents(T, L):
    net = lmht_net(T, L, positive=True, seed=T + 7 * L)
    x = torch.rand(T, 64, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if_net, rep = reparameterize_lmht(net)
    assert rep.levels == L and rep.T == T and rep.steps == L * T and rep.input_expansion == "repeat_interleave"
    with torch.no_grad():
        out = net(x)
        out_if = if_net(expand_time(x, L))
    assert out_if.shape[0] == L * T
    assert_close(out_if.view(T, L, *out.shape[1:]).sum(1), out, atol=1e-10, rtol=0)   # window sums
    agree = reparameterization_report(net, if_net, x)
    assert agree.readout == "sequence" and agree.argmax_agreement == 1.0 and agree.min_count_agreement == 1.0
    assert all(a.lmht_spikes == a.if_spikes > 0 for a in agree.layers)
    assert agree.output_max_abs_diff < 1e-10


def test_reparameterised_net_agrees_on_99_percent_of_argmaxes_with_signed_weights():
    agree = total = 0
    counts = []
    for T, L in [(2, 2), (2, 4), (4, 2)]:
        for seed in range(3):
            net = lmht_net(T, L, positive=False, seed=seed)
            x = torch.randn(T, 256, 2, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            rep = reparameterization_report(net, reparameterize_lmht(net)[0], x)
            agree += rep.argmax_agreement * rep.samples
            total += rep.samples
            counts.append(rep.min_count_agreement)
    assert agree / total >= 0.99
    assert min(counts) > 0.99


def test_reparameterisation_structure():
    T, L = 3, 2
    net = lmht_net(T, L, positive=True, seed=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    if_net, rep = reparameterize_lmht(net)
    exact(net.state_dict()["2.0.bias"], before["2.0.bias"])             # the original is untouched
    n1, n3 = if_net[1], if_net[3]
    assert isinstance(n1, ReparameterizedIF) and n1.window == L and n1.steps == L * T and n1.levels == 1
    assert n1.in_scale == 1.0 and n3.in_scale == 1.0                    # in_scale L / L on the first layer
    exact(n1.omega_hat, expand_tgim(net[1].omega.detach(), L))
    lam = float(net[3].leak.detach())
    exact(n3.leak_schedule, torch.tensor([lam, 1.0, lam, 1.0, lam, 1.0], dtype=torch.float64))
    exact(n3.v_init, net[3].v_init)
    exact(n3.v_threshold, net[3].v_threshold)
    assert rep.first_neuron == "1" and rep.neurons == ["1", "3"] and rep.order == "registration"
    assert rep.scaled_parameters == ["2.0.bias", "2.1.bias", "2.1.running_mean", "4.1.bias"]
    x = torch.rand(T, 2, 2, 8, 8, dtype=torch.float64)
    _, rep_exec = reparameterize_lmht(net, example_input=x)
    assert rep_exec.order == "execution" and rep_exec.scaled_parameters == rep.scaled_parameters
    sd = if_net.state_dict()
    for key in rep.scaled_parameters:
        assert_close(sd[key], before[key] / L)
    for key in ("0.0.bias", "0.1.bias", "0.1.running_mean", "2.1.weight", "2.1.running_var"):
        exact(sd[key], before[key])                                   # stem offsets, γ and σ² stay
    assert "L=2, T=3 -> 6 IF steps" in str(rep)


def test_reparameterisation_with_direct_encoder_and_mean_readout():
    T, L = 2, 3
    net = lmht_net(T, L, positive=True, seed=4, readout=True, encoder=True)
    if_net, rep = reparameterize_lmht(net)
    assert rep.input_expansion == "direct_encoder" and if_net[0].T == L * T
    x = torch.rand(32, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(L * if_net(x), net(x), atol=1e-10, rtol=0)        # time-mean logits: LM-HT = L × IF
    agree = reparameterization_report(net, if_net, [(x, None), (x[:8], None)])
    assert agree.readout == "mean" and agree.samples == 40 and agree.min_count_agreement == 1.0
    assert "argmax agreement 1.0000" in str(agree) and agree.to_dict()["min_count_agreement"] == 1.0


def test_reparameterisation_wrap_input():
    T, L = 2, 2
    net = lmht_net(T, L, positive=True, seed=5)
    if_net, rep = reparameterize_lmht(net, wrap_input=True)
    assert rep.input_expansion == "wrapped" and isinstance(if_net[0], ExpandTime)
    x = torch.rand(T, 8, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert if_net(x).shape == (L * T, 8, 10)
    assert reparameterization_report(net, if_net, x).min_count_agreement == 1.0


def test_mht_network_reparameterisation_needs_T_and_is_exact():
    T, L = 3, 2
    net = lmht_net(T, L, positive=True, seed=6, neuron="mht")
    with pytest.raises(ReparameterizationError, match="T="):
        reparameterize_lmht(net)
    if_net, rep = reparameterize_lmht(net, T=T)
    x = torch.rand(T, 16, 2, 8, 8, dtype=torch.float64)
    agree = reparameterization_report(net, if_net, x)
    assert agree.min_count_agreement == 1.0 and agree.output_max_abs_diff < 1e-10
    exact(if_net[3].omega_hat, expand_tgim(torch.eye(T, dtype=torch.float64), L))


# ================================================================ §2.9 item 7: equal SOPs at equal L·T
def _sops(model, x, neuron_types):
    """SOPs (§6.3) of the two spiking-fed synapses: Σ conv/linear(spike counts, ones)."""
    outs, handles = capture(model, neuron_types)
    with torch.no_grad():
        reset_net(model)
        model(x)
    for h in handles:
        h.remove()
    conv, fc = model[2][0], model[4][1]
    ev1 = model[1].spike_events(outs["1"]).flatten(0, 1)
    ev3 = model[3].spike_events(outs["3"]).flatten(0, 1)
    s1 = F.conv2d(ev1, torch.ones_like(conv.weight), None, conv.stride, conv.padding).sum()
    s3 = F.linear(ev3.flatten(1), torch.ones_like(fc.weight)).sum()
    return float(s1), float(s3)


@pytest.mark.parametrize("neuron", ["mht", "lmht"])
def test_sops_of_multilevel_net_equal_those_of_its_reparameterised_if_net(neuron):
    T, L = 2, 4
    net = lmht_net(T, L, positive=True, seed=8, neuron=neuron)
    if_net, _ = reparameterize_lmht(net, T=T)
    x = torch.rand(T, 16, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s_lm = _sops(net, x, (LMHTNeuron, MHTNeuron))
    s_if = _sops(if_net, expand_time(x, L), ReparameterizedIF)
    assert s_lm[0] > 0 and s_lm[1] > 0
    assert s_lm == s_if


# ================================================================ refusals
def test_reparameterisation_refusals():
    net = lmht_net(2, 2, positive=True, seed=0)
    train = lmht_net(2, 2, positive=True, seed=0).train()
    with pytest.raises(ReparameterizationError, match="train mode"):
        reparameterize_lmht(train)
    maxpool = nn.Sequential(*list(lmht_net(2, 2, True, 0)[:2]), nn.MaxPool2d(2), *list(lmht_net(2, 2, True, 0)[2:]))
    with pytest.raises(ReparameterizationError, match="MaxPool.*AvgPool"):
        reparameterize_lmht(maxpool)
    relu = nn.Sequential(*list(net[:2]), nn.ReLU(), *list(net[2:]))
    with pytest.raises(ReparameterizationError, match="cannot be folded"):
        reparameterize_lmht(relu)
    # a stateless non-linear layer upstream of the first neuron is fine (it runs per sub-step)
    stem_pool = nn.Sequential(SeqToANNContainer(nn.MaxPool2d(1)), *list(lmht_net(2, 2, True, 0)))
    assert isinstance(reparameterize_lmht(stem_pool)[0][2], ReparameterizedIF)
    with pytest.raises(ReparameterizationError, match="QCFS"):
        reparameterize_lmht(nn.Sequential(*list(lmht_net(2, 2, True, 0)), QCFS(4, 1.0)))
    with pytest.raises(ReparameterizationError, match="only LMHTNeuron"):
        reparameterize_lmht(nn.Sequential(*list(lmht_net(2, 2, True, 0)), IFNeuron(step_mode="m")))
    mixed_L = nn.Sequential(LMHTNeuron(2, 2), LMHTNeuron(2, 3))
    with pytest.raises(ReparameterizationError, match="different level counts"):
        reparameterize_lmht(mixed_L)
    mixed_T = nn.Sequential(LMHTNeuron(2, 2), LMHTNeuron(3, 2))
    with pytest.raises(ReparameterizationError, match="share T"):
        reparameterize_lmht(mixed_T)
    with pytest.raises(ReparameterizationError, match="share T"):
        reparameterize_lmht(nn.Sequential(LMHTNeuron(2, 2)), T=3)
    with pytest.raises(ReparameterizationError, match="no LMHTNeuron"):
        reparameterize_lmht(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ReparameterizationError, match="bare neuron"):
        reparameterize_lmht(LMHTNeuron(2, 2))
    with pytest.raises(ValueError, match="ReparameterizedIF"):
        reparameterization_report(net, net, torch.zeros(2, 1, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="readout"):
        reparameterization_report(net, reparameterize_lmht(net)[0], torch.zeros(2, 1, 2, 8, 8), readout="max")
    with pytest.raises(TypeError, match="MHTNeuron"):
        ReparameterizedIF.from_lmht(MHTNeuron(2), first_layer=True)


def test_default_conversion_of_a_trained_qcfs_ann_equals_it_on_digits():
    """The default hybrid init (``hybrid_bias_scale='exact'``) of a QCFS ANN with L·T levels is that ANN: same
    argmax on every real test image and time-mean logits = L × the ANN's; the hybrid hook and the
    ``--init-from`` conversion start from exactly this network."""
    from multispike.demo import DemoConfig, DigitsCNN, _loaders, predictions, train_classifier
    from multispike.train import resolve_config
    from multispike.train.hybrid import convert_init_model, lmht_hybrid
    from multispike.cli.workflows import parse_bias_scale

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        L, T = 2, 2
        torch.manual_seed(0)
        train, test, _ = _loaders(DemoConfig())
        ann = DigitsCNN("qcfs", neuron_kwargs=dict(levels=L * T, threshold=4.0))
        train_classifier(ann, train, 3, 3e-3, "qcfs", progress=False)
        snn = convert_qcfs_to_lmht(ann, levels=L, T=T)
        snn.set_timesteps(T)
        p_ann, p_snn = predictions(ann, test), predictions(snn, test)
        assert len(p_ann) == 359 and float((p_ann == p_snn).double().mean()) == 1.0
        x = next(iter(test))[0]
        with torch.no_grad():
            reset_net(snn)
            assert_close(snn(x), L * ann(x), rtol=1e-5, atol=1e-4)
        code = convert_qcfs_to_lmht(ann, levels=L, T=T, hybrid_bias_scale="code")
        code.set_timesteps(T)
        assert float((predictions(code, test) == p_ann).double().mean()) < 1.0    # ×1 is not the ANN
        cfg = resolve_config(overrides=dict(mode="snn", model="digits_cnn", neuron="lmht", levels=L, timesteps=T))
        for start in (lmht_hybrid(ann, cfg), convert_init_model(ann, cfg)[0]):
            start.set_timesteps(T)
            sd, ref = start.state_dict(), snn.state_dict()
            assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
        assert parse_bias_scale(None, L) == "exact" and parse_bias_scale("1", L) == 1.0
    finally:
        torch.set_num_threads(threads)
