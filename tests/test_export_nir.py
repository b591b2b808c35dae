"""NIR export/import (ecosystem.md §3.3, §8): exact round trips, literal NIR semantics, interop, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("nir", reason="NIR export needs the optional extra multispike[nir] (nir, nirtorch, h5py)")
import nir  # noqa: E402

from multispike.export import (FidelityReport, NIRExportError, NIRImportError, NIRNetwork, export_to_nir,  # noqa: E402
                               import_from_nir)
from multispike.layers import MeanOverTime, ResidualAdd, SeqToANNContainer  # noqa: E402
from multispike.neurons import IFNeuron, LIFNeuron, LMHTNeuron, MHTNeuron, OneHotMLIF, reset_net  # noqa: E402


def exact(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def dyadic_(module: nn.Module, step: float = 2.0 ** -6, bound: float = 0.5) -> nn.Module:
    """Round every parameter to a multiple of ``step``: with dyadic inputs all sums are exact in float32, so
    the literal NIR graph and the original network must agree bit for bit (ties at thresholds included)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 1 and p.numel() > 1:
                p.copy_(torch.round((torch.rand(p.shape, generator=g) * 2 - 1) * bound / step) * step)
    return module


def dyadic_input(*shape, step: float = 2.0 ** -4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.rand(*shape, generator=g) * 2 / step) * step


def conv_net(n1: nn.Module, n2: nn.Module, bn: bool = False, readout: bool = True) -> nn.Sequential:
    stem = [nn.Conv2d(2, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else [])
    layers = [SeqToANNContainer(*stem), n1,
              SeqToANNContainer(nn.AvgPool2d(2), nn.Conv2d(4, 6, 3, padding=1, bias=False)), n2,
              SeqToANNContainer(nn.Flatten(), nn.Linear(6 * 4 * 4, 5))]
    if readout:
        layers.append(MeanOverTime())
    return nn.Sequential(*layers).eval()


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    reset_net(model)
    with torch.no_grad():
        return model(x)


def node_types(graph) -> list[str]:
    return [type(n).__name__ for n in graph.nodes.values()]


# ----------------------------------------------------------------------------------------------------
# mode="exact": round trips
# ----------------------------------------------------------------------------------------------------
def test_if_soft_reset_ladder_round_trip_is_bit_identical():
    torch.manual_seed(0)
    theta = 0.37
    net = conv_net(IFNeuron(v_threshold=theta, v_init=theta / 2, payload="threshold", step_mode="m"),
                   IFNeuron(v_threshold=0.5, v_init=0.25, payload="threshold", step_mode="m"))
    x = torch.rand(4, 3, 2, 8, 8) * 2
    graph, report = export_to_nir(net, x, mode="exact")
    assert isinstance(report, FidelityReport) and report.exact
    assert {"I", "Threshold", "Scale", "Conv2d", "AvgPool2d", "Flatten", "Affine"} <= set(node_types(graph))
    assert "IF" not in node_types(graph)
    # ladder of one rung: threshold θ − u0 lowered by one float32 ulp (NIR '>' == our '>=').
    th = graph.nodes["1_level1"].threshold
    c = np.float32(theta) - np.float32(theta / 2)
    assert np.all(th == np.nextafter(c, np.float32(-np.inf)))
    np.testing.assert_array_equal(graph.nodes["1_reset"].scale, np.full((4, 8, 8), -np.float32(theta)))
    # θ of the first layer is folded into the second conv's weights: W' = θ·W.
    w2 = net[2][1].weight.detach()
    np.testing.assert_array_equal(graph.nodes["2_1"].weight, (w2 * net[1].v_threshold).numpy())
    imported = import_from_nir(graph)
    assert isinstance(imported, NIRNetwork) and "1_mem" in imported.restored
    exact(imported(x), run(net, x))
    out = report.output("multispike")
    assert out.bitwise and out.max_abs_diff == 0.0 and out.argmax_agreement == 1.0
    assert all(layer.agreement["multispike"] == 1.0 for layer in report.layers)


def test_literal_nir_semantics_equal_the_network_in_exact_arithmetic():
    """With dyadic weights and inputs no rounding happens anywhere, so NIR's literal semantics (I + Threshold +
    Scale, strict '>', u0 folded into thresholds, θ folded into weights) must reproduce IF, M-HT and M-LIF
    layers exactly - including inputs that land exactly on a threshold."""
    for n1, n2 in [
        (IFNeuron(v_threshold=0.5, v_init=0.25, payload="threshold", step_mode="m"),
         IFNeuron(v_threshold=0.25, v_init=0.125, payload="threshold", step_mode="m")),
        (MHTNeuron(levels=3, v_threshold=0.25, v_init=0.125), MHTNeuron(levels=2, v_threshold=0.5)),
        (OneHotMLIF(lanes=3, v_threshold=0.25, learnable_threshold=False),
         OneHotMLIF(lanes=2, v_threshold=0.5, v_init=0.125, reset_leak=True, lane_bounds="floor", fire_ge=True)),
    ]:
        net = dyadic_(conv_net(n1, n2))
        x = dyadic_input(4, 3, 2, 8, 8)
        graph, report = export_to_nir(net, x, mode="exact")
        literal = import_from_nir(graph, restore=False)
        assert literal.restored == []
        exact(literal(x), run(net, x))
        assert report.output("nir").bitwise
        assert all(layer.agreement["nir"] == 1.0 for layer in report.layers)


def test_mht_and_lmht_with_batchnorm_and_leak_round_trip():
    torch.manual_seed(1)
    net = conv_net(MHTNeuron(levels=3, v_threshold=0.37, v_init=0.1), MHTNeuron(levels=4, v_threshold=0.23),
                   bn=True)
    with torch.no_grad():
        net[0][1].running_mean.uniform_(-0.2, 0.2)
        net[0][1].running_var.uniform_(0.5, 2.0)
    x = torch.rand(4, 2, 2, 8, 8) * 2
    graph, report = export_to_nir(net, x)
    assert len([t for t in node_types(graph) if t == "Threshold"]) == 3 + 4
    exact(import_from_nir(graph)(x), run(net, x))
    assert any("BatchNorm folded" in n for n in report.notes)
    # LM-HT with an identity T-GIM and a learned leak λ ≠ 1 (then u0 must be 0): LI membrane.
    lm1 = LMHTNeuron(T=4, levels=2, tgim="identity", v_threshold=0.5)
    lm2 = LMHTNeuron(T=4, levels=2, tgim="identity", v_threshold=0.4)
    with torch.no_grad():
        lm1.leak_a.fill_(0.7)
    net = conv_net(lm1, lm2)
    graph, report = export_to_nir(net, x)
    mem = graph.nodes["1_mem"]
    assert isinstance(mem, nir.LI)
    lam = float(torch.sigmoid(torch.tensor(0.7)) + 0.5)
    np.testing.assert_allclose(mem.tau, report.dt / (1 - lam), rtol=1e-5)
    exact(import_from_nir(graph)(x), run(net, x))
    assert report.exact and report.output("multispike").bitwise
    assert report.output("nir").argmax_agreement == 1.0


def test_lmht_scalar_tgim_is_folded_and_mixing_tgim_is_refused():
    x = torch.rand(1, 2, 6)
    lm = LMHTNeuron(T=1, levels=2, tgim="learnable", v_threshold=0.5)
    with torch.no_grad():
        lm.tgim_mu.fill_(0.3)  # Ω = 2σ(0.3) (1×1): a pure input gain
    net = nn.Sequential(SeqToANNContainer(nn.Linear(6, 4)), lm).eval()
    graph, report = export_to_nir(net, x)
    gain = 2 * float(torch.sigmoid(torch.tensor(0.3)))
    np.testing.assert_allclose(graph.nodes["1_mem"].r * report.dt, gain, rtol=1e-6)
    exact(import_from_nir(graph)(x), run(net, x))
    net = nn.Sequential(SeqToANNContainer(nn.Linear(6, 4)), LMHTNeuron(T=3, levels=2)).eval()
    with pytest.raises(NIRExportError) as err:
        export_to_nir(net, torch.rand(3, 2, 6))
    msg = str(err.value)
    assert "1 (LMHTNeuron)" in msg and "T-GIM" in msg and "tgim='identity'" in msg


def test_one_hot_mlif_lanes_round_trip_with_per_channel_threshold():
    torch.manual_seed(2)
    n1 = OneHotMLIF(lanes=3, v_threshold=torch.tensor([0.2, 0.3, 0.25, 0.4]).view(4, 1, 1), leak=0.9)
    n2 = OneHotMLIF(lanes=3, v_threshold=0.2, leak=1.0, reset_leak=True, v_init=0.05, scaled=True)
    net = conv_net(n1, n2)
    x = torch.rand(5, 3, 2, 8, 8) * 2
    graph, report = export_to_nir(net, x)
    # one-hot lanes: S edges, S-1 negations, S lanes, S payload scales, one reset
    roles = [graph.nodes[n].metadata.get("multispike.role") for n in report.layers[0].nodes]
    assert roles.count("reset") == 1 and sum(r.startswith("edge") for r in roles) == 3
    pays = [graph.nodes[f"1_payload{s}"].scale for s in range(3)]
    assert [float(p.flat[0]) for p in pays] == [1.0, 2.0, 4.0]
    edge1 = graph.nodes["1_edge1"].threshold  # paper bounds: strict '>' at 2θ, no adjustment
    np.testing.assert_array_equal(edge1[:, 0, 0], (2 * n1.v_threshold.detach().flatten()).numpy())
    exact(import_from_nir(graph)(x), run(net, x))
    assert report.exact and report.output("multispike").bitwise
    with pytest.raises(NIRExportError, match="hard reset of a multi-lane membrane"):
        export_to_nir(conv_net(OneHotMLIF(lanes=2, reset="hard"), OneHotMLIF(lanes=2)), x)


def test_hard_reset_neurons_export_as_nir_if_and_lif_nodes():
    torch.manual_seed(3)
    net = conv_net(IFNeuron(v_threshold=0.6, v_reset=0.0, step_mode="m"),
                   LIFNeuron(decay=0.5, leak_mode="post_reset", v_reset=0.0, v_threshold=0.4, fire_ge=False,
                             step_mode="m"))
    x = torch.rand(4, 2, 2, 8, 8) * 2
    graph, report = export_to_nir(net, x, dt=1e-3)
    if_node, lif_node = graph.nodes["1"], graph.nodes["3"]
    assert isinstance(if_node, nir.IF) and isinstance(lif_node, nir.LIF)
    np.testing.assert_allclose(if_node.r, 1e3)                 # r = 1/dt: Euler v += x
    np.testing.assert_allclose(lif_node.tau, 2e-3, rtol=1e-6)  # τ = dt/(1−λ)
    np.testing.assert_allclose(lif_node.r, 2.0, rtol=1e-6)     # r = 1/(1−λ)
    np.testing.assert_array_equal(lif_node.v_threshold, np.full((6, 4, 4), np.float32(0.4)))  # '>' needs no ulp
    assert report.exact
    exact(import_from_nir(graph)(x), run(net, x))
    with pytest.raises(NIRExportError, match="v_init"):
        export_to_nir(conv_net(IFNeuron(v_reset=0.0, v_init=0.3, step_mode="m"), IFNeuron(step_mode="m")), x)


def test_residual_network_round_trip():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1))
            self.n0 = IFNeuron(v_threshold=0.4, v_init=0.2, payload="threshold", step_mode="m")
            self.conv = SeqToANNContainer(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
            self.add = ResidualAdd()
            self.n1 = MHTNeuron(levels=2, v_threshold=0.3)
            self.head = SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

        def forward(self, x):
            h = self.n0(self.stem(x))
            return self.head(self.n1(self.add(self.conv(h), h)))

    torch.manual_seed(4)
    net = Block().eval()
    x = torch.rand(3, 2, 2, 6, 6) * 2
    graph, report = export_to_nir(net, x)
    # the identity shortcut carries θ·s: a payload Scale node feeds the sum into the next membrane
    pay = [n for n, v in graph.nodes.items() if v.metadata.get("multispike.role") == "payload"]
    assert pay and ("n1_mem" in [b for a, b in graph.edges if a == pay[0]])
    exact(import_from_nir(graph)(x), run(net, x))
    assert report.output("multispike").bitwise


def test_demo_converted_if_network_round_trip_and_metadata():
    from multispike.convert.converter import convert_to_snn
    from multispike.demo import DigitsCNN

    torch.manual_seed(5)
    ann = DigitsCNN("relu").eval()
    calib = torch.randn(32, 1, 8, 8)
    snn, _ = convert_to_snn(ann, T=3, threshold="99.9%", calibration_data=[calib])
    graph, report = export_to_nir(snn, calib[:4], sample_inputs=[calib[:16], calib[16:]])
    assert report.readout == "mean" and report.input_layout == "static" and report.T == 3
    assert graph.metadata["T"] == 3 and graph.metadata["readout"] == "mean"
    assert json.loads(graph.metadata["multispike.timesteps"]) == {"act1": 3, "act2": 3, "act3": 3}
    imported = import_from_nir(graph)
    exact(imported(calib), run(snn, calib))          # static input, repeated T times by the importer
    assert report.output("multispike").samples == 32 and report.output("multispike").bitwise
    assert report.output("nir").argmax_agreement == 1.0


# ----------------------------------------------------------------------------------------------------
# Files and an independent interpreter
# ----------------------------------------------------------------------------------------------------
def test_file_round_trip_through_nir_write_and_read(tmp_path):
    torch.manual_seed(6)
    net = conv_net(MHTNeuron(levels=2, v_threshold=0.3, v_init=0.1), OneHotMLIF(lanes=2, v_threshold=0.25), bn=True)
    x = torch.rand(4, 2, 2, 8, 8) * 2
    path = tmp_path / "net.nir"
    graph, report = export_to_nir(net, x, path=path)
    assert report.path == str(path) and path.stat().st_size > 0
    read = nir.read(str(path))
    assert set(read.nodes) == set(graph.nodes) and sorted(read.edges) == sorted(graph.edges)
    assert float(read.metadata["dt"]) == 1e-4
    imported = import_from_nir(path)
    assert imported.notes == [] and "1_mem" in imported.restored and "3_mem" in imported.restored
    exact(imported(x), run(net, x))
    literal = import_from_nir(str(path), restore=False)
    exact(literal(x), import_from_nir(graph, restore=False)(x))


def test_literal_importer_agrees_with_nirtorch_executor():
    pytest.importorskip("nirtorch", reason="the cross-check runs the graph with nirtorch")
    from multispike.export.nirtorch_ref import run_with_nirtorch

    net = dyadic_(conv_net(MHTNeuron(levels=3, v_threshold=0.25, v_init=0.125),
                           OneHotMLIF(lanes=3, v_threshold=0.25, leak=0.75), readout=False))
    x = dyadic_input(4, 2, 2, 8, 8, seed=3)
    graph, report = export_to_nir(net, x, nirtorch_check=True)
    ours = import_from_nir(graph, restore=False).forward_sequence(x)
    theirs = run_with_nirtorch(graph, x)
    exact(ours, theirs)
    assert report.output("nirtorch").bitwise


@settings(max_examples=20, deadline=None)
@given(levels=st.integers(1, 4), theta_q=st.integers(2, 12), u0_q=st.integers(0, 11), leak_q=st.sampled_from([16, 12]),
       seed=st.integers(0, 1000))
def test_ladder_literal_semantics_property(levels, theta_q, u0_q, leak_q, seed):
    """Single M-HT layer, dyadic parameters and inputs: the literal ladder equals the neuron exactly."""
    theta = theta_q / 16
    u0 = (u0_q % theta_q) / 16 if leak_q == 16 else 0.0  # u0 folds only without a leak
    neuron = MHTNeuron(levels=levels, v_threshold=theta, v_init=u0, leak=leak_q / 16)
    net = nn.Sequential(SeqToANNContainer(nn.Linear(5, 6)), neuron).eval()
    dyadic_(net, bound=1.0)
    x = dyadic_input(6, 2, 5, seed=seed) - 1.0
    graph, _ = export_to_nir(net, x, measure=False)
    exact(import_from_nir(graph, restore=False)(x), run(net, x))
    exact(import_from_nir(graph)(x), run(net, x))


# ----------------------------------------------------------------------------------------------------
# mode="if" and mode="unrolled"
# ----------------------------------------------------------------------------------------------------
def test_if_mode_labels_and_measures_the_multispike_route():
    torch.manual_seed(7)
    net = conv_net(MHTNeuron(levels=2, v_threshold=0.3), IFNeuron(v_threshold=0.5, v_reset=0.0, step_mode="m"))
    x = torch.rand(4, 3, 2, 8, 8) * 2
    graph, report = export_to_nir(net, x, mode="if")
    assert [type(graph.nodes[n]).__name__ for n in ("1", "3")] == ["IF", "IF"]
    assert "Threshold" not in node_types(graph)
    l1, l2 = report.layers
    assert l1.fidelity == "sinabs-multispike" and not l1.exact
    assert set(l1.conditions) == {"count_above_L", "v_below_minus_theta"}
    assert 0.0 <= l1.conditions["count_above_L"] <= 1.0
    assert l2.fidelity == "exact" and l2.exact
    assert [o.semantics for o in report.outputs] == ["nir", "sinabs"]
    assert not report.exact
    text = str(report)
    assert "sinabs-multispike" in text and "r = g/dt" in text


def test_if_mode_soft_reset_is_labelled_approximate():
    net = conv_net(IFNeuron(v_threshold=0.4, v_init=0.2, payload="threshold", step_mode="m"),
                   IFNeuron(v_threshold=0.4, payload="threshold", step_mode="m"))
    _, report = export_to_nir(net, torch.rand(3, 2, 2, 8, 8) * 2, mode="if")
    assert report.layers[0].fidelity == "approximate" and "reset to 0" in report.layers[0].reason
    assert "v_init is dropped" in report.layers[0].reason


def test_unrolled_mode_writes_substeps_of_plain_if():
    torch.manual_seed(8)
    L, T = 2, 3
    net = conv_net(LMHTNeuron(T=T, levels=L, tgim="identity", v_threshold=0.5, learnable_leak=False),
                   LMHTNeuron(T=T, levels=L, tgim="identity", v_threshold=0.5, learnable_leak=False))
    x = torch.rand(T, 2, 2, 8, 8) * 2
    graph, report = export_to_nir(net, x, mode="unrolled")
    assert set(node_types(graph)) >= {"IF"} and "Threshold" not in node_types(graph)
    assert graph.metadata["substeps"] == L and graph.metadata["T"] == L * T
    assert math.isclose(float(graph.metadata["dt"]), report.dt / L)
    np.testing.assert_allclose(graph.nodes["1"].r, 0.5 * L / report.dt, rtol=1e-6)  # first layer: in_scale 1/L
    assert report.substeps == L and all(layer.fidelity == "approximate" for layer in report.layers)
    assert [o.semantics for o in report.outputs] == ["nir", "subtract"]
    for o in report.outputs:
        assert 0.0 <= o.argmax_agreement <= 1.0 and o.samples == 2
    imported = import_from_nir(graph, restore=False)
    assert imported.forward_sequence(x).shape[0] == L * T  # a logical-rate input is expanded L-fold
    leaky = LMHTNeuron(T=T, levels=L, tgim="identity", v_threshold=0.5)
    with torch.no_grad():
        leaky.leak_a.fill_(1.0)
    with pytest.raises(NIRExportError, match="window starts"):
        export_to_nir(conv_net(leaky, LMHTNeuron(T=T, levels=L, tgim="identity")), x, mode="unrolled")


# ----------------------------------------------------------------------------------------------------
# Interoperability
# ----------------------------------------------------------------------------------------------------
def test_snntorch_reads_our_if_mode_lif_export_exactly():
    sim = pytest.importorskip("snntorch.import_nir", reason="snnTorch is not installed (pip install --no-deps "
                                                             "snntorch); its NIR importer is the interop peer")
    torch.manual_seed(9)
    net = nn.Sequential(
        SeqToANNContainer(nn.Linear(6, 8)),
        LIFNeuron(decay=0.5, leak_mode="post_reset", v_reset=0.0, v_threshold=0.6, fire_ge=False, step_mode="m"),
        SeqToANNContainer(nn.Linear(8, 4)),
        LIFNeuron(decay=0.75, leak_mode="post_reset", v_reset=0.0, v_threshold=0.3, step_mode="m")).eval()
    x = torch.rand(8, 5, 6) * 1.5
    graph, report = export_to_nir(net, x, mode="if")  # dt = 1e-4: the step snnTorch assumes for nir.LIF
    assert report.exact
    peer = sim.import_from_nir(graph)
    outs, state = [], None
    with torch.no_grad():
        for t in range(x.shape[0]):
            out, state = peer(x[t], state)
            outs.append(out)
    ours = run(net, x)
    assert float(ours.sum()) > 0  # the comparison is not vacuous
    exact(torch.stack(outs), ours)


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------
def test_unsupported_constructs_are_listed_with_fixes():
    net = nn.Sequential(SeqToANNContainer(nn.Conv2d(2, 4, 3), nn.MaxPool2d(2), nn.ReLU()),
                        IFNeuron(step_mode="m"), SeqToANNContainer(nn.Flatten(), nn.Linear(36, 3)))
    with pytest.raises(NIRExportError) as err:
        export_to_nir(net, torch.rand(2, 2, 2, 8, 8))
    msg = str(err.value)
    assert "2 unsupported construct(s)" in msg
    assert "0.1 (MaxPool2d)" in msg and "AvgPool2d" in msg
    assert "0.2 (ReLU)" in msg and "convert_to_snn" in msg

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = SeqToANNContainer(nn.Linear(4, 4))
            self.n = IFNeuron(step_mode="m")

        def forward(self, x):
            return self.n(self.fc(x) * 2)

    with pytest.raises(NIRExportError, match=r"n \(IFNeuron\): its input was computed outside any module"):
        export_to_nir(Functional(), torch.rand(3, 2, 4))
    with pytest.raises(NIRExportError, match="no spiking neuron"):
        export_to_nir(nn.Sequential(SeqToANNContainer(nn.Linear(4, 2))), torch.rand(2, 2, 4))


def test_mixed_timesteps_are_refused_and_uniform_aligned_layers_export():
    from multispike.convert.mixed_timestep import AlignedNeuron

    def make(T2: int, align):
        return nn.Sequential(
            SeqToANNContainer(nn.Linear(4, 6)),
            AlignedNeuron(IFNeuron(v_threshold=0.5, v_init=0.25, payload="threshold"), T=4, align=align),
            SeqToANNContainer(nn.Linear(6, 3)),
            AlignedNeuron(IFNeuron(v_threshold=0.5, v_init=0.25, payload="threshold"), T=T2, align=align)).eval()

    x = torch.rand(1, 2, 4)
    with pytest.raises(NIRExportError) as err:
        export_to_nir(make(2, "aver+aver"), x)
    assert "mixed timesteps" in str(err.value) and "1: T=4" in str(err.value) and "3: T=2" in str(err.value)
    with pytest.raises(NIRExportError, match="temporal averaging"):
        export_to_nir(make(4, "aver+aver"), x)
    graph, report = export_to_nir(make(4, None), x)
    assert json.loads(graph.metadata["multispike.timesteps"]) == {"1": 4, "3": 4}
    assert report.output("multispike").bitwise


def test_bad_arguments():
    net = conv_net(IFNeuron(step_mode="m"), IFNeuron(step_mode="m"))
    x = torch.rand(2, 1, 2, 8, 8)
    with pytest.raises(ValueError, match="mode must be one of"):
        export_to_nir(net, x, mode="chip")
    with pytest.raises(ValueError, match="dt must be a finite number > 0"):
        export_to_nir(net, x, dt=0.0)
    with pytest.raises(NIRExportError, match="single-step mode"):
        export_to_nir(nn.Sequential(SeqToANNContainer(nn.Linear(4, 2)), IFNeuron()), torch.rand(2, 2, 4))
    graph, _ = export_to_nir(net, x, measure=False)
    with pytest.raises(ValueError, match="if_semantics"):
        import_from_nir(graph, if_semantics="loihi")
    with pytest.raises(ValueError, match="fits neither"):
        import_from_nir(graph)(torch.rand(2, 3, 8, 8))


def test_malformed_files_are_rejected_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_from_nir(tmp_path / "missing.nir")
    junk = tmp_path / "junk.nir"
    junk.write_bytes(b"this is not hdf5")
    with pytest.raises(NIRImportError, match="not a NIR file"):
        import_from_nir(junk)
    import h5py
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(NIRImportError, match="no 'node' group"):
        import_from_nir(other)
    # a NIR file whose node lacks a required field
    net = conv_net(IFNeuron(step_mode="m"), IFNeuron(step_mode="m"))
    path = tmp_path / "ok.nir"
    export_to_nir(net, torch.rand(2, 1, 2, 8, 8), path=path, measure=False)
    with h5py.File(path, "a") as f:
        del f["node"]["nodes"]["1_level1"]["threshold"]
    with pytest.raises(NIRImportError, match="malformed NIR file"):
        import_from_nir(path)


def test_unsupported_graph_structure_is_rejected():
    n = 3
    delay = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "d": nir.Delay(delay=np.ones(n)),
                                "output": nir.Output(np.array([n]))},
                         edges=[("input", "d"), ("d", "output")], type_check=False)
    with pytest.raises(NIRImportError, match=r"d \(Delay\)"):
        import_from_nir(delay)
    w = np.eye(n, dtype=np.float32)
    rnn = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "fc": nir.Affine(weight=w, bias=np.zeros(n)),
                              "lif": nir.IF(r=np.ones(n), v_threshold=np.ones(n)),
                              "rec": nir.Linear(weight=w), "output": nir.Output(np.array([n]))},
                       edges=[("input", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")],
                       type_check=False)
    with pytest.raises(NIRImportError, match="recurrent structure"):
        import_from_nir(rnn)
    two_out = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "a": nir.Scale(scale=np.ones(n)),
                                  "o1": nir.Output(np.array([n])), "o2": nir.Output(np.array([n]))},
                           edges=[("input", "a"), ("a", "o1"), ("a", "o2")], type_check=False)
    with pytest.raises(NIRImportError, match="exactly one Input and one Output"):
        import_from_nir(two_out)


def test_foreign_if_graph_runs_with_literal_semantics():
    """A plain feed-forward graph another tool could write (no multispike metadata, no dt), read with dt = 1:
    r then acts per step."""
    n = 4
    w = np.full((n, 3), 0.5, dtype=np.float32)
    graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])), "fc": nir.Affine(weight=w, bias=np.zeros(n)),
                                "if": nir.IF(r=np.ones(n), v_threshold=np.ones(n)),
                                "output": nir.Output(np.array([n]))},
                         edges=[("input", "fc"), ("fc", "if"), ("if", "output")], metadata={})
    with pytest.warns(UserWarning, match=r"records no dt.*dt = 0.0001 s, snnTorch's"):
        default = import_from_nir(graph)  # no dt in the graph: snnTorch's 1e-4, named in a warning
    assert any("no dt" in note and "snnTorch" in note for note in default.notes)
    x = torch.full((4, 1, 3), 0.5)  # 0.75 per step: v = 0.75, 1.5 -> spike, reset to 0, 0.75, 1.5 -> spike
    exact(default(x), torch.zeros(4, 1, n))  # r·dt = 1e-4 per step: far from threshold in 4 steps
    net = import_from_nir(graph, dt=1.0)
    y = net(x)
    exact(y[:, 0, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    sub = import_from_nir(graph, if_semantics="subtract", dt=1.0)(x)  # keeps the residual 0.5: 0.75, 1.5, 1.25, 1.0
    exact(sub[:, 0, 0], torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_exact_roundtrip_false_writes_no_restoration_metadata():
    net = conv_net(MHTNeuron(levels=2, v_threshold=0.3), MHTNeuron(levels=2, v_threshold=0.3))
    x = torch.rand(3, 2, 2, 8, 8) * 2
    graph, report = export_to_nir(net, x, exact_roundtrip=False)
    assert not any(k.startswith("multispike.state") for v in graph.nodes.values() for k in v.metadata)
    imported = import_from_nir(graph)
    assert imported.restored == []
    assert report.output("multispike").argmax_agreement == 1.0
    assert any("exact_roundtrip=False" in n for n in report.notes)


def test_inconsistent_metadata_is_ignored():
    net = conv_net(IFNeuron(v_threshold=0.5, v_init=0.25, payload="threshold", step_mode="m"),
                   IFNeuron(v_threshold=0.5, payload="threshold", step_mode="m"))
    x = torch.rand(3, 2, 2, 8, 8) * 2
    graph, _ = export_to_nir(net, x, measure=False)
    graph.nodes["1_mem"].metadata["multispike.state.v_threshold"] = np.array([0.75], np.float32)
    imported = import_from_nir(graph)
    assert "1_mem" not in imported.restored and any(n.startswith("1:") for n in imported.notes)
    # the weights that absorbed layer 1's θ are not restored either (else θ would be applied twice)
    assert "2_1" not in imported.restored
    literal = import_from_nir(graph, restore=False)
    exact(imported(x), literal(x))
