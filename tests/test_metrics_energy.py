"""Energy models (algorithms.md §6.1-§6.5) and the §6.2 reference MAC counts of the model zoo."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import multispike as ms
from multispike.layers import SeqToANNContainer
from multispike.metrics import (ENERGY_PRESETS, LayerOps, MemoryModel, NeuronOps, OpCountResult, count_ops,
                                diet_energy, energy_report, get_constants, memory_energy, neurobench_energy,
                                sdt_energy, sop_energy, value_weighted_energy)


def _layer(name, order, dense, T, nonzero, in_elements, acs=0.0, analog=0.0, spiking=True, **kw):
    return LayerOps(name=name, type="Conv2d", kind="conv", op="MAC", order=order, T=T, network_T=T, samples=1,
                    input_spiking=spiking, in_elements=in_elements, dense_per_step=dense, dense=dense * T,
                    input_nonzero=nonzero, acs=acs, analog=analog, **kw)


def _table() -> OpCountResult:
    """Three synaptic layers (first analog), a pool and an attention block, with round numbers."""
    layers = [
        _layer("conv1", 0, dense=1000.0, T=4, nonzero=400.0, in_elements=100, analog=4000.0, spiking=False,
               acs_nonzero=3000.0),
        _layer("conv2", 1, dense=2000.0, T=4, nonzero=50.0, in_elements=200, acs=600.0, acs_nonzero=500.0),
        _layer("fc", 3, dense=500.0, T=4, nonzero=10.0, in_elements=50, acs=120.0, acs_nonzero=100.0,
               nb_spiking=True, nb_effective=100.0, nb_dense=2000.0),
        LayerOps(name="pool", type="AvgPool2d", kind="pool", op="ADD", order=2, T=4, samples=1, dense_per_step=64,
                 dense=256, acs=30.0),
        LayerOps(name="attn", type="SDSA", kind="attention", op="ADD", order=4, T=4, samples=1, dense_per_step=8,
                 dense=32, acs=5.0, extra={"mask_ops": 7.0, "mask_ops_dense": 64.0}),
    ]
    layers[0].nb_spiking, layers[0].nb_effective, layers[0].nb_dense = False, 3000.0, 3600.0
    neurons = [NeuronOps("n1", "IFNeuron", neurons=200, T=4, samples=1),
               NeuronOps("n2", "LMHTNeuron", neurons=50, T=4, samples=1, levels=3)]
    return OpCountResult(layers, neurons, [], {}, 1)


def test_presets_and_constants():
    assert (ENERGY_PRESETS["45nm"].e_mac, ENERGY_PRESETS["45nm"].e_ac) == (4.6, 0.9)
    assert (get_constants("fp16").e_mac, get_constants("fp16").e_ac) == (1.5, 0.4)
    assert (get_constants("INT8").e_mac, get_constants("INT8").e_ac) == (0.23, 0.03)
    assert get_constants((2.0, 0.5)).e_ac == 0.5 and get_constants({"e_mac": 1, "e_ac": 0.1}).e_mac == 1
    with pytest.raises(ValueError, match="unknown energy preset 'tpu'"):
        get_constants("tpu")
    with pytest.raises(ValueError, match="e_ac"):
        get_constants((1.0, -0.1))


def test_diet_energy_formula_static_and_dvs():
    t = _table()
    e = diet_energy(t, "45nm", "static")
    # r = nonzero / in_elements: 4, 0.25, 0.2
    e_ann = 4.6 * (1000 + 2000 + 500)
    e_snn = 4.6 * 4 * 1000 + 0.9 * (0.25 * 2000 + 0.2 * 500)
    assert math.isclose(e["e_ann_uj"], e_ann * 1e-6) and math.isclose(e["e_snn_uj"], e_snn * 1e-6)
    assert math.isclose(e["delta"], e_ann / e_snn)
    assert [r["cost"] for r in e["layers"]] == ["MAC", "AC", "AC"]
    d = diet_energy(t, "45nm", "dvs")
    assert math.isclose(d["e_snn_uj"], 0.9 * (4 * 1000 + 0.25 * 2000 + 0.2 * 500) * 1e-6)
    with pytest.raises(ValueError, match="encoding"):
        diet_energy(t, "45nm", "poisson")


def test_diet_first_layer_run_once_is_costed_every_step():
    t = _table()
    t.layers[0].T, t.layers[0].analog, t.layers[0].input_nonzero = 1, 1000.0, 100.0  # stem run once, repeated
    e = diet_energy(t)
    assert e["layers"][0]["repeated_encoding"] and math.isclose(e["layers"][0]["r"], 4.0)
    assert math.isclose(value_weighted_energy(t)["e_mac_uj"], 4.6 * 1000 * 1e-6)  # what actually ran


def test_sop_energy_excludes_first_layer_and_uses_counts():
    e = sop_energy(_table())
    assert e["sops"] == 600 + 120 and math.isclose(e["e_uj"], 0.9 * 720 * 1e-6)
    assert e["first_layer"] == "conv1" and e["analog_layers"] == []


def test_sdt_and_value_weighted_and_neurobench():
    t = _table()
    s = sdt_energy(t)
    assert math.isclose(s["e_first_uj"], 4.6 * 1000 * 1e-6)
    assert math.isclose(s["e_synaptic_uj"], 0.9 * (0.25 * 2000 + 0.2 * 500) * 1e-6)
    assert s["sdsa_ops"] == 5 + 7 and "verify" in s["status"]
    v = value_weighted_energy(t)
    assert math.isclose(v["e_mac_uj"], 4.6 * 4000e-6) and math.isclose(v["e_ac_uj"], 0.9 * 720e-6)
    assert math.isclose(v["e_add_uj"], 0.9 * 35e-6)
    assert math.isclose(value_weighted_energy(t, include_additions=False)["e_uj"], (4.6 * 4000 + 0.9 * 720) * 1e-6)
    nb = neurobench_energy(t)
    assert nb["effective_macs"] == 3000 and nb["effective_acs"] == 100
    assert math.isclose(nb["e_uj"], (4.6 * 3000 + 0.9 * 100) * 1e-6)


def test_memory_model_is_labelled_ours_and_counts_accesses():
    t = _table()
    m = memory_energy(t, MemoryModel(e_access_pj=10.0, word_bits=64, weight_bits=32, state_bits=32))
    assert "ours, not the paper's" in m["label"]
    words = lambda bits: bits / 64  # noqa: E731
    snn_weights = words((4000 + 500 + 100) * 32)  # analog layer per MAC, spiking layers per active input
    membrane = words(2 * (200 * 4 + 50 * 4) * 32)
    outputs = words(200 * 4 * 1 + 50 * 4 * 2)  # IF: 1 bit, L = 3 levels: 2 bits
    assert math.isclose(m["snn"]["weights_uj"], snn_weights * 10e-6)
    assert math.isclose(m["snn"]["membrane_uj"], membrane * 10e-6)
    assert math.isclose(m["snn"]["outputs_uj"], outputs * 10e-6)
    assert math.isclose(m["ann"]["weights_uj"], words(3500 * 32) * 10e-6)
    with pytest.raises(ValueError, match="word_bits"):
        MemoryModel(word_bits=0)


def test_energy_report_round_trips_through_json():
    rep = energy_report(_table(), "int8")
    assert set(rep) >= {"diet", "multispike", "lmht_sop", "neurobench", "sdt", "memory"}
    back = energy_report(json.loads(json.dumps(_table().to_dict())), "int8")
    assert back["diet"] == rep["diet"]
    with pytest.raises(ValueError, match="no conv/linear"):
        diet_energy(OpCountResult([], [], [], {}, 0))
    with pytest.raises(TypeError, match="OpCountResult"):
        diet_energy([1, 2, 3])


def test_delta_of_a_real_network_matches_hand_formula():
    torch.manual_seed(0)
    net = nn.Sequential(ms.DirectEncoder(2), SeqToANNContainer(nn.Conv2d(3, 4, 3, padding=1)),
                        ms.IFNeuron(step_mode="m"),
                        SeqToANNContainer(nn.Flatten(), nn.Linear(64, 5)))
    res = count_ops(net, torch.rand(3, 3, 4, 4) * 2)
    e = diet_energy(res)
    conv, fc = res.layers
    expect = 4.6 * 2 * conv.dense_per_step + 0.9 * fc.input_nonzero / 64 * fc.dense_per_step
    assert math.isclose(e["e_snn_uj"], expect * 1e-6)


# --------------------------------------------------------------------------------------------- §6.2 zoo
REFERENCE = [  # name, input size, MACs per step, first-layer MACs (None: not checked)
    ("vgg16_diet", (3, 32, 32), 338.4e6, 1.77e6),
    ("resnet20_diet", (3, 32, 32), 215.7e6, None),
    ("resnet20_cifar", (3, 32, 32), 40.8e6, None),
    ("vggsnn", (2, 48, 48), 1361.7e6, None),
]


def _zoo():
    from multispike.models import create_model, list_models

    return create_model, list_models()


@pytest.mark.parametrize("name,size,macs,first", REFERENCE, ids=[r[0] for r in REFERENCE])
def test_reference_mac_counts(name, size, macs, first):
    create_model, names = _zoo()
    assert name in names, f"{name} is not registered in the zoo (renamed or removed?)"
    model = create_model(name, num_classes=10, neuron="if", T=1)
    res = count_ops(model.eval(), torch.rand(1, *size))
    tot = res.totals()
    assert round(tot["dense_macs_per_step"] / 1e6, 1) == round(macs / 1e6, 1)
    if first is not None:
        assert round(tot["first_layer_macs_per_step"] / 1e6, 2) == round(first / 1e6, 2)
    assert res.unsupported == []
    if name == "vgg16_diet":  # MLIF-P Table 1: 1.56e3 µJ for the ANN
        e = diet_energy(res)["e_ann_uj"]
        assert f"{e:.2e}" == "1.56e+03"


def test_lmht_sops_equal_reparameterised_if_sops():
    """algorithms.md §2.9 item 7: at equal L·T, the SOPs (spike counts × fan-out) of an M-HT/LM-HT network equal
    those of its reparameterised single-threshold IF network (non-negative currents: Lemma 4.1 is exact)."""
    from multispike.convert.lmht import reparameterize_lmht
    from multispike.neurons.lmht import LMHTNeuron
    torch.manual_seed(0)
    T, L = 2, 3
    convs = [nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.Conv2d(4, 4, 3, padding=1, bias=False)]
    for c in convs:
        nn.init.uniform_(c.weight, 0.0, 0.15)  # non-negative currents
    lmht = nn.Sequential(ms.DirectEncoder(T), SeqToANNContainer(convs[0]), LMHTNeuron(T=T, levels=L, v_threshold=0.5),
                         SeqToANNContainer(convs[1]), LMHTNeuron(T=T, levels=L, v_threshold=0.5),
                         SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 16, 3, bias=False))).eval()
    if_net, _ = reparameterize_lmht(lmht)
    x = torch.rand(3, 2, 4, 4) * 2
    s_lmht, s_if = sop_energy(count_ops(lmht, x)), sop_energy(count_ops(if_net, x))
    assert s_lmht["sops"] > 0
    assert s_lmht["sops"] == s_if["sops"]
