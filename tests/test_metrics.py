"""Spike monitors and value-weighted operation counting (algorithms.md §6.2, §6.3, §6.6; ecosystem.md §4)."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

import multispike as ms
from multispike.layers import MultiStepContainer, ResidualAdd, SeqToANNContainer, TemporalAlign
from multispike.metrics import (OpCounter, OpCountResult, SpikeMonitor, avgpool_fanout, conv_fanout, count_ops,
                                spiking_layers)

exact = dict(atol=0, rtol=0)


class CountNeuron(nn.Module):
    """A stateless multi-level neuron for hand-computed tests: ``y = θ·clip(⌊x/θ⌋, 0, L)``.

    Statistics protocol: ``spike_events(y) = y/θ`` (the count), ``active_lanes(y) = 1{y != 0}``.
    """

    def __init__(self, levels: int = 3, theta: float = 1.0) -> None:
        super().__init__()
        self.levels, self.lanes, self.theta, self.step_mode = levels, 1, theta, "m"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta * torch.clamp(torch.floor(x / self.theta), 0, self.levels)

    def spike_events(self, y: torch.Tensor) -> torch.Tensor:
        return torch.round(y / self.theta)

    def active_lanes(self, y: torch.Tensor) -> torch.Tensor:
        return (y != 0).to(y.dtype)


# Counts of the hand-computed example, [T=2, 3, 3].
COUNTS = torch.tensor([[[3., 0., 1.], [0., 2., 0.], [0., 0., 0.]],
                       [[0., 0., 0.], [1., 0., 0.], [0., 0., 3.]]])


def hand_net(theta: float = 1.0) -> nn.Sequential:
    conv1 = nn.Conv2d(1, 1, 1, bias=False)
    conv2 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv1.weight.fill_(1.0)
        conv2.weight.copy_(torch.arange(1, 19, dtype=torch.float32).view(2, 1, 3, 3) / 10)  # no zero weight
    return nn.Sequential(SeqToANNContainer(conv1), CountNeuron(3, theta), SeqToANNContainer(conv2))


def hand_input(theta: float = 1.0) -> torch.Tensor:
    # counts + 0.5 where a neuron fires; 0.2 (< θ, not zero) elsewhere so the analog input has no zeros.
    x = torch.where(COUNTS > 0, COUNTS + 0.5, torch.full_like(COUNTS, 0.2)) * theta
    return x.view(2, 1, 1, 3, 3)


# --------------------------------------------------------------------------------------------- hand example
def test_hand_computed_multilevel_counts_value_weighted_and_neurobench():
    net = hand_net()
    with torch.no_grad(), OpCounter(net) as oc:
        net(hand_input())
    res = oc.result()
    first, second = res.layers
    # Layer 2 fan-out of a 3x3 map, 3x3 kernel, padding 1, 2 output channels: [[8,12,8],[12,18,12],[8,12,8]].
    # Value-weighted: t0: 3·8 + 1·8 + 2·18 = 68; t1: 1·12 + 3·8 = 36.
    assert second.acs == 104.0
    # NeuroBench: counts {0..3} are not in {-1,0,1} -> MACs, non-zeros binarised: t0 8+8+18, t1 12+8.
    assert second.nb_spiking is False and second.nb_effective == 54.0
    assert second.acs != second.nb_effective                      # the multi-level blind spot
    assert second.input_spiking and second.input_source == "1"
    assert second.dense_per_step == 9 * 2 * 1 * 9                 # H_out·W_out·C_out·C_in·k²
    assert second.dense == 2 * 162 and second.analog == 0.0
    assert second.connections_per_step == 2 * (4 * 4 + 6 * 4 + 9) and second.nb_dense == 2 * 98
    assert second.input_nonzero == 5 and second.input_events == 10 and second.r == pytest.approx(5 / 9)
    # Layer 1 is fed by the analog input: dense MACs at each of its T = 2 steps.
    assert not first.input_spiking and first.T == 2
    assert first.analog == 2 * 9 and first.acs == 0.0 and first.nb_spiking is False and first.nb_effective == 18
    tot = res.totals()
    assert tot["acs"] == 104 and tot["analog_macs"] == 18 and tot["neurobench_effective_macs"] == 72
    assert res.unsupported == []


def test_payload_scale_does_not_change_event_count():
    """θ-payload spikes (y = θ·count) cost the count, not θ·count (§6.3 fix of LMHT-C)."""
    net = hand_net(theta=0.5)
    res = count_ops(net, hand_input(theta=0.5))
    assert res.layers[1].acs == 104.0 and res.layers[1].nb_effective == 54.0


def test_binary_spikes_are_neurobench_acs_and_agree():
    net = nn.Sequential(SeqToANNContainer(nn.Linear(6, 5)), ms.IFNeuron(step_mode="m"),
                        SeqToANNContainer(nn.Linear(5, 4)))
    torch.manual_seed(0)
    x = torch.randn(3, 2, 6) * 3
    res = count_ops(net, x)
    second = res.layers[1]
    assert second.nb_spiking is True
    assert second.acs == second.nb_effective == second.acs_lanes  # binary spikes: all conventions agree
    ms.reset_net(net)
    spikes = (net[1](net[0](x)) != 0).sum().item()  # (recomputed without hooks)
    assert second.acs == spikes * 4 / 2                             # per sample (B = 2)


def test_acs_equal_ones_convolution_lmht_monitor_style():
    """LMHT-C's SOP monitor computes sum(conv(x, ones)); with counts as x it equals our value-weighted ACs."""
    torch.manual_seed(1)
    counts = torch.randint(0, 4, (3, 2, 4, 7, 6)).float()
    conv = nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False)
    net = nn.Sequential(CountNeuron(3), SeqToANNContainer(conv))
    res = count_ops(net, counts + 0.5)
    ones = torch.ones_like(conv.weight)
    expect = F.conv2d(counts.flatten(0, 1), ones, stride=2, padding=1).sum().item() / 2
    assert res.layers[0].acs == expect


def test_zero_input_gives_zero_accumulates():
    net = nn.Sequential(SeqToANNContainer(nn.Conv2d(3, 4, 3, padding=1, bias=False)), ms.IFNeuron(step_mode="m"),
                        SeqToANNContainer(nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, padding=1, bias=False)),
                        ms.IFNeuron(step_mode="m"), SeqToANNContainer(nn.Flatten(), nn.Linear(64, 10, bias=False)))
    res = count_ops(net, torch.zeros(4, 2, 3, 8, 8))
    tot = res.totals()
    assert tot["acs"] == 0 and tot["additions"] == 0 and tot["neurobench_effective_acs"] == 0
    assert all(l.acs == 0 for l in res.layers)
    assert tot["analog_macs"] == 4 * res.layers[0].dense_per_step  # the analog layer still runs every step


@pytest.mark.parametrize("T", [1, 3])
def test_first_layer_direct_encoding_costs_macs_times_T(T):
    conv = nn.Conv2d(3, 8, 3, padding=1)
    net = nn.Sequential(ms.DirectEncoder(T), SeqToANNContainer(conv), ms.IFNeuron(step_mode="m"))
    res = count_ops(net, torch.rand(2, 3, 6, 6))
    first = res.layers[0]
    assert first.dense_per_step == 6 * 6 * 8 * 3 * 9
    assert first.T == T and first.samples == 2
    assert first.analog == first.dense_per_step * T
    assert first.r == pytest.approx(T)  # r_1 = T · (fraction of non-zero pixels) = T


def test_converter_merged_batch_first_layer_T_from_neurons():
    """TimeMergedSNN runs convs on [T·B] batches outside any container: T comes from the neurons' batch."""
    from multispike.convert.converter import convert_to_snn
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3))
    snn, _ = convert_to_snn(ann, T=3, threshold="max", calibration_data=[torch.rand(4, 1, 5, 5)])
    res = count_ops(snn.eval(), torch.rand(2, 1, 5, 5))
    assert [l.T for l in res.layers] == [3, 3]
    assert res.layers[0].analog == 3 * 25 * 4 * 9 and res.layers[0].samples == 2
    assert res.layers[1].input_spiking and res.layers[1].samples == 2


# --------------------------------------------------------------------------------------------- fan-out
def brute_fanout(conv: nn.Conv1d | nn.Conv2d, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Count, for every input element, the (output element, tap) pairs that read it, by explicit loops."""
    nd = len(in_shape) - 1
    C_in, sizes = in_shape[0], in_shape[1:]
    k, s, d = conv.kernel_size, conv.stride, conv.dilation
    g = conv.groups
    out = conv(torch.zeros(1, *in_shape))
    out_sizes = out.shape[2:]
    if isinstance(conv.padding, str):  # 'same': PyTorch pads total d(k-1), the smaller half on the left
        pads = [d[i] * (k[i] - 1) // 2 for i in range(nd)]
    else:
        pads = list(conv.padding)
    fan = torch.zeros(in_shape, dtype=torch.float64)

    def source(i: int, n: int) -> int | None:
        if 0 <= i < n:
            return i
        if conv.padding_mode == "circular":
            return i % n
        if conv.padding_mode == "reflect":
            return -i if i < 0 else 2 * (n - 1) - i
        if conv.padding_mode == "replicate":
            return min(max(i, 0), n - 1)
        return None

    c_out_per_g, c_in_per_g = conv.out_channels // g, C_in // g
    for co in range(conv.out_channels):
        grp = co // c_out_per_g
        for opos in itertools.product(*[range(o) for o in out_sizes]):
            for tap in itertools.product(*[range(kk) for kk in k]):
                idx = [source(opos[a] * s[a] - pads[a] + tap[a] * d[a], sizes[a]) for a in range(nd)]
                if any(i is None for i in idx):
                    continue
                for ci in range(grp * c_in_per_g, (grp + 1) * c_in_per_g):
                    fan[(ci, *idx)] += 1
    return fan


CONV_CASES = [
    (nn.Conv2d(2, 3, 3, padding=1), (2, 5, 4)),
    (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 6)),
    (nn.Conv2d(4, 4, (3, 1), stride=(2, 1), padding=(1, 0), groups=2), (4, 6, 5)),
    (nn.Conv2d(2, 2, 3, padding=2, dilation=2), (2, 6, 7)),
    (nn.Conv2d(1, 2, 2, stride=3), (1, 8, 7)),                     # stride > kernel: some inputs unread
    (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (2, 5, 5)),
    (nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), (2, 4, 5)),
    (nn.Conv2d(1, 2, 4, padding="same"), (1, 6, 5)),
    (nn.Conv1d(3, 2, 5, stride=2, padding=2), (3, 9)),
    (nn.Conv1d(2, 4, 3, padding=1, groups=2, padding_mode="replicate"), (2, 6)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("conv,in_shape", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
def test_fanout_at_borders_equals_brute_force(conv, in_shape):
    torch.testing.assert_close(conv_fanout(conv, in_shape), brute_fanout(conv, in_shape), **exact)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2), d=st.integers(1, 2), g=st.sampled_from([1, 2]),
       H=st.integers(1, 7), W=st.integers(1, 7), mode=st.sampled_from(["zeros", "reflect", "circular", "replicate"]))
def test_fanout_property_random_geometry(k, s, p, d, g, H, W, mode):
    assume(min(H, W) + 2 * p - d * (k - 1) - 1 >= 0)
    assume(mode != "reflect" or p < min(H, W))
    assume(mode != "circular" or p <= min(H, W))
    conv = nn.Conv2d(2, 4, k, stride=s, padding=p, dilation=d, groups=g, padding_mode=mode)
    torch.testing.assert_close(conv_fanout(conv, (2, H, W)), brute_fanout(conv, (2, H, W)), **exact)


def test_fanout_sum_is_real_connections():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    fan = conv_fanout(conv, (3, 4, 4))
    out = F.conv2d(torch.ones(1, 3, 4, 4), torch.ones(5, 3, 3, 3), padding=1)
    assert fan.sum().item() == out.sum().item() < 4 * 4 * 5 * 3 * 9


def test_avgpool_fanout_and_ceil_mode():
    pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)
    fan = avgpool_fanout(pool, (1, 5, 6))
    windows = F.avg_pool2d(torch.ones(1, 1, 5, 6), 3, 2, 1, ceil_mode=True, divisor_override=1)
    assert fan.sum().item() == windows.sum().item()
    assert fan[0, 1, 1].item() == 4 and fan[0, 2, 2].item() == 1 and fan[0, 0, 0].item() == 1


# --------------------------------------------------------------------------------------------- tracking
def test_views_flatten_per_step_and_transpose_are_tracked():
    torch.manual_seed(0)
    counts = torch.randint(0, 4, (3, 2, 5)).float()
    lin = nn.Linear(5, 4)
    per_step = nn.Sequential(CountNeuron(3), MultiStepContainer(lin))        # x[t] views of the spike tensor
    merged = nn.Sequential(CountNeuron(3), SeqToANNContainer(lin))           # flatten(0, 1) view
    r1, r2 = count_ops(per_step, counts + 0.5), count_ops(merged, counts + 0.5)
    expect = counts.sum().item() * 4 / 2
    assert r1.layers[0].acs == r2.layers[0].acs == expect
    assert r1.layers[0].T == r2.layers[0].T == 3 and r1.layers[0].calls == 3

    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.n, self.lin = CountNeuron(3), nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(self.n(x).transpose(0, 2))   # [T,B,C] -> [C,B,T]: a strided view, T used as features

    res = count_ops(Transposed(), counts[:, :, :3] + 0.5)
    assert res.layers[0].input_spiking and res.layers[0].input_events == counts[:, :, :3].sum().item() / 2


def test_inplace_change_invalidates_tracking():
    class InPlace(nn.Module):
        def forward(self, x):
            return x.mul_(2.0)

    net = nn.Sequential(CountNeuron(3), InPlace(), SeqToANNContainer(nn.Linear(4, 2)))
    res = count_ops(net, torch.full((2, 1, 4), 1.5))
    assert not res.layers[0].input_spiking and res.layers[0].acs == 0
    assert [u["name"] for u in res.unsupported] == ["1"]  # an unknown parameter-free layer is listed


def test_avgpool_carries_events_and_counts_additions():
    counts = torch.zeros(1, 1, 1, 4, 4)
    counts[0, 0, 0, 0, 0], counts[0, 0, 0, 1, 1], counts[0, 0, 0, 3, 3] = 2, 1, 3
    net = nn.Sequential(CountNeuron(3), SeqToANNContainer(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 5)))
    res = count_ops(net, counts + 0.5 * (counts > 0))
    pool, lin = res.layers
    assert pool.kind == "pool" and pool.acs == 6 and pool.dense_per_step == 16
    # Events pass through the average pool as window sums (pre-scaled weights): 3 + 3 events, fan-out 5.
    assert lin.input_spiking and lin.acs == 6 * 5 and lin.input_events == 6
    assert lin.nb_spiking is False  # averaged spikes (0.75) are not binary for NeuroBench


def test_residual_spike_plus_spike_is_multilevel():
    class SEW(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = CountNeuron(1), CountNeuron(1)
            self.add = ResidualAdd()
            self.fc = SeqToANNContainer(nn.Linear(3, 2))

        def forward(self, x):
            return self.fc(self.add(self.a(x), self.b(x + 0.5)))

    x = torch.tensor([[[1.2, 0.6, 0.1]], [[0.1, 1.5, 0.7]]])  # a: [1,0,0],[0,1,0]; b: [1,1,0],[0,1,1]
    res = count_ops(SEW(), x)
    add, fc = res.layers
    assert add.kind == "residual" and add.acs == 6 and add.dense == 6 and add.input_spiking
    assert fc.input_spiking and fc.acs == 6 * 2 and fc.input_nonzero == 4


def test_temporal_alignment_mixed_T():
    net = nn.Sequential(CountNeuron(2), TemporalAlign(4, "repl+trunc"), SeqToANNContainer(nn.Linear(3, 2)),
                        ms.IFNeuron(step_mode="m"))
    x = torch.tensor([[[2.5, 0.0, 1.2]], [[0.0, 0.0, 1.1]]])  # counts [2,0,1], [0,0,1]
    with torch.no_grad(), OpCounter(net) as oc, SpikeMonitor(net) as mon:
        net(x)
    lin = oc.result().layers[0]
    assert lin.T == 4 and lin.acs == 2 * 4 * 2  # replication doubles the 4 events; fan-out 2
    assert mon.layer_timesteps() == {"0": 2, "3": 4}


def test_aligned_neuron_wrapper_counted_once_with_declared_T():
    from multispike.convert.mixed_timestep import AlignedNeuron
    net = nn.Sequential(SeqToANNContainer(nn.Linear(3, 4)), AlignedNeuron(ms.IFNeuron(v_threshold=0.5), T=3),
                        SeqToANNContainer(nn.Linear(4, 2)), AlignedNeuron(ms.IFNeuron(v_threshold=0.5), T=5))
    assert [n for n, _ in spiking_layers(net)] == ["1.neuron", "3.neuron"]
    torch.manual_seed(0)
    with torch.no_grad(), SpikeMonitor(net) as mon, OpCounter(net) as oc:
        net(torch.rand(2, 2, 3))
    stats = mon.results()
    assert [(s.T, s.declared_T) for s in stats.values()] == [(3, 3), (5, 5)]
    assert oc.result().layers[1].T == 3 and oc.result().layers[1].input_spiking


# --------------------------------------------------------------------------------------------- monitors
def _mixed_net() -> nn.Module:
    from multispike.neurons.lmht import LMHTNeuron
    from multispike.neurons.mlif import OneHotMLIF
    return nn.Sequential(
        SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1)), ms.IFNeuron(step_mode="m", store_v_seq=False),
        SeqToANNContainer(nn.Conv2d(4, 4, 3, padding=1)), LMHTNeuron(T=3, levels=3, v_threshold=0.3),
        SeqToANNContainer(nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, padding=1)), OneHotMLIF(lanes=3, step_mode="m"),
        SeqToANNContainer(nn.Flatten(), nn.Linear(16, 5)), ms.MeanOverTime())


def test_monitor_and_counter_leave_outputs_bit_identical_and_detach_cleanly():
    torch.manual_seed(0)
    net = _mixed_net().eval()
    x = torch.randn(3, 2, 2, 4, 4) * 2
    with torch.no_grad():
        ms.reset_net(net)
        ref = net(x)
        with SpikeMonitor(net, membrane=True) as mon, OpCounter(net) as oc:
            ms.reset_net(net)
            out = net(x)
        ms.reset_net(net)
        after = net(x)
    torch.testing.assert_close(out, ref, **exact)
    torch.testing.assert_close(after, ref, **exact)
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert net[1].store_v_seq is False and net[1].v_seq is None
    assert mon.results() and oc.result().layers
    json.dumps(mon.summary(), allow_nan=False)
    json.dumps(oc.result().to_dict(), allow_nan=False)


def test_monitor_rates_multilevel_and_per_step():
    net = nn.Sequential(CountNeuron(3))
    with torch.no_grad(), SpikeMonitor(net) as mon:
        net(hand_input().view(2, 1, 9))
    st = mon.results()["0"]
    N, T = 9, 2
    assert st.neurons == N and st.T == T and st.samples == 1
    assert st.spike_rate == 5 / (N * T)                  # active lanes
    assert st.count_rate == 10 / (N * T * 3)             # Σ counts / (N·T·L)
    assert st.event_rate == 10 / (N * T)
    assert st.firing_rate_per_step == [3 / 9, 2 / 9]
    assert st.events_rate_per_step == [6 / 9, 4 / 9]
    assert st.payload_rate == pytest.approx((10 + 0.0) / (N * T))


def test_monitor_mlif_counts_lanes_not_payload():
    from multispike.neurons.mlif import OneHotMLIF
    nrn = OneHotMLIF(lanes=3, v_threshold=1.0, step_mode="m")
    x = torch.tensor([[[0.5, 1.5, 3.0, 9.0]]])  # lanes: none, s0 (1), s1 (2), s2 (4)
    net = nn.Sequential(nrn, SeqToANNContainer(nn.Linear(4, 3)))
    with torch.no_grad(), SpikeMonitor(net) as mon, OpCounter(net) as oc:
        y = net[0](x)
        net[1](y)
    assert y.flatten().tolist() == [0.0, 1.0, 2.0, 4.0]
    st = mon.results()["0"]
    assert st.spike_rate == 3 / 4                        # three fired lanes; the payload sum (7) would overcount
    assert st.count_rate == 7 / (4 * st.levels)
    assert oc.result().layers[0].acs == 3 * 3            # one accumulate per fired lane (pre-scaled weights)


def test_monitor_single_step_mode_and_membrane():
    nrn = ms.IFNeuron(v_threshold=1.0, step_mode="s")
    x = torch.tensor([[0.6, 0.2], [0.6, 0.2], [0.6, 1.5]])
    with torch.no_grad(), SpikeMonitor(nn.Sequential(nrn), membrane=True) as mon:
        for _ in range(2):  # two sequences of 3 steps
            nrn.reset()
            for t in range(3):
                nrn(x[t].unsqueeze(0))
    st = mon.results()["0"]
    assert st.T == 3 and st.samples == 2 and st.neurons == 2
    assert st.firing_rate_per_step == [0.0, 0.5, 0.5]
    assert st.membrane is not None and st.membrane["max"] < 1.0


def test_monitor_membrane_statistics_multistep():
    nrn = ms.IFNeuron(v_threshold=1.0, step_mode="m")
    with torch.no_grad(), SpikeMonitor(nn.Sequential(nrn), membrane=True) as mon:
        nrn(torch.tensor([[[0.4]], [[0.4]], [[0.4]]]))
    m = mon.results()["0"].membrane
    assert m["mean_per_step"] == pytest.approx([0.4, 0.8, 0.2])
    assert m["min"] == pytest.approx(0.2) and m["max"] == pytest.approx(0.8)


# --------------------------------------------------------------------------------------------- unsupported
def test_unsupported_layers_are_listed_not_skipped():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(6)
            self.act = nn.Tanh()
            self.attn = nn.MultiheadAttention(6, 2)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            h = self.act(self.norm(x))
            h, _ = self.attn(h, h, h)
            return self.fc(h)

    res = count_ops(Block(), torch.randn(4, 2, 6))
    names = {u["name"]: u for u in res.unsupported}
    assert set(names) == {"norm", "act", "attn"}
    assert "attention" in names["attn"]["reason"]
    assert [l.name for l in res.layers] == ["fc"]
    assert "Unsupported" in res.table()


def test_not_counted_layers_are_named_with_reasons():
    net = nn.Sequential(SeqToANNContainer(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)), ms.IFNeuron(step_mode="m"),
                        SeqToANNContainer(nn.MaxPool2d(2), nn.Dropout(0.5), nn.Flatten(), nn.Linear(8, 2)))
    res = count_ops(net, torch.rand(2, 1, 1, 4, 4) * 4)
    assert set(res.not_counted) == {"BatchNorm2d", "MaxPool2d", "Dropout", "Flatten"}
    assert res.unsupported == []
    assert res.layers[-1].input_spiking  # max pool and dropout carry the spike train through


# --------------------------------------------------------------------------------------------- attention
class SpikeDrivenSelfAttention(nn.Module):
    """A minimal SDSA (structure of SDT-C): Q ⊙ N(Σ_tokens K ⊙ V), with heads, on [T, B, C, H, W]."""

    def __init__(self, dim: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.q_conv = SeqToANNContainer(nn.Conv2d(dim, dim, 1, bias=False))
        self.k_conv = SeqToANNContainer(nn.Conv2d(dim, dim, 1, bias=False))
        self.v_conv = SeqToANNContainer(nn.Conv2d(dim, dim, 1, bias=False))
        self.q_lif, self.k_lif, self.v_lif = (ms.IFNeuron(v_threshold=0.2, step_mode="m") for _ in range(3))
        self.kv_lif = ms.IFNeuron(v_threshold=0.5, step_mode="m")
        self.proj_conv = SeqToANNContainer(nn.Conv2d(dim, dim, 1))
        for c in (self.q_conv, self.k_conv, self.v_conv):
            nn.init.uniform_(c[0].weight, 0.0, 0.5)  # positive currents: q, k, v and kv all fire

    def heads(self, x):
        T, B, C, H, W = x.shape
        return x.flatten(3).transpose(-1, -2).reshape(T, B, H * W, self.num_heads, C // self.num_heads) \
            .permute(0, 1, 3, 2, 4)

    def forward(self, x):
        T, B, C, H, W = x.shape
        q = self.heads(self.q_lif(self.q_conv(x)))
        k = self.heads(self.k_lif(self.k_conv(x)))
        v = self.heads(self.v_lif(self.v_conv(x)))
        kv = self.kv_lif((k * v).sum(dim=-2, keepdim=True))
        return self.proj_conv((q * kv).transpose(3, 4).reshape(T, B, C, H, W))


def test_spike_driven_attention_counted_by_hooking_the_module():
    torch.manual_seed(3)
    attn = SpikeDrivenSelfAttention()
    x = torch.rand(2, 1, 4, 3, 3)
    seen = {}
    for n in ("q_lif", "k_lif", "v_lif", "kv_lif"):
        getattr(attn, n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o.detach()))
    with torch.no_grad(), OpCounter(attn) as oc:
        attn(x)
    res = oc.result()
    row = next(l for l in res.layers if l.kind == "attention")
    q, k, v, kv = seen["q_lif"], seen["k_lif"], seen["v_lif"], seen["kv_lif"]
    kvb = kv.reshape(2, 1, 4, 1, 1)
    assert k.sum() > 0 and kv.sum() > 0  # the example exercises both masks
    assert row.acs == (k * v).sum().item() and row.dense_per_step == 4 * 9
    assert row.extra["mask_ops"] == ((k != 0) & (v != 0)).sum().item() + ((q != 0) & (kvb != 0)).sum().item()
    assert row.extra["mask_ops_dense"] == 2 * k.numel()
    proj = next(l for l in res.layers if l.name == "proj_conv.0")
    assert proj.input_spiking and proj.input_events == ((q != 0) & (kvb != 0)).sum().item()
    assert res.unsupported == []


def test_zoo_transformer_attention_recognised():
    from multispike import models

    net = models.create_model("spike_driven_transformer_tiny", num_classes=10, T=2,
                              neuron_kwargs={"v_threshold": 0.05}).eval()
    torch.manual_seed(0)
    res = count_ops(net, torch.rand(2, 3, 32, 32) * 3)
    assert res.unsupported == []
    assert any(l.kind == "attention" for l in res.layers)
    proj = [l for l in res.layers if l.name.endswith("proj_conv.0")]
    assert proj and all(l.input_spiking for l in proj)


# --------------------------------------------------------------------------------------------- results
def test_result_round_trip_and_bad_arguments():
    res = count_ops(hand_net(), hand_input())
    back = OpCountResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.totals() == res.totals() and [l.name for l in back.layers] == [l.name for l in res.layers]
    with pytest.raises(ValueError, match="T must be an integer"):
        OpCounter(hand_net(), T=0)
    with pytest.raises(ValueError, match="input_events"):
        OpCounter(hand_net(), input_events="poisson")
    with pytest.raises(TypeError, match="nn.Module"):
        SpikeMonitor("not a model")
    with pytest.raises(ValueError, match="no input batches"):
        count_ops(hand_net(), [])


def test_input_events_for_event_frames():
    frames = torch.zeros(2, 1, 1, 3, 3)
    frames[0, 0, 0, 1, 1], frames[1, 0, 0, 0, 0] = 2.0, 1.0
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    res = count_ops(nn.Sequential(SeqToANNContainer(conv)), frames, input_events="count")
    assert res.layers[0].input_spiking and res.layers[0].acs == 2 * 18 + 1 * 8
    res_b = count_ops(nn.Sequential(SeqToANNContainer(conv)), frames, input_events="binary")
    assert res_b.layers[0].acs == 18 + 8
    assert math.isclose(res.layers[0].r, 2 / 9)
